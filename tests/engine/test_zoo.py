import pytest
import torch

from engine.errors import ModelError
from engine.zoo import CIFAR_MODELS, build_model, default_input_size, list_models


@pytest.mark.parametrize("name", CIFAR_MODELS)
@pytest.mark.parametrize("num_classes", [10, 7])
def test_cifar_models_output_shape(name, num_classes):
    model = build_model(name, num_classes=num_classes).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, num_classes)


@pytest.mark.parametrize(
    "name",
    ["cifar_resnet20", "cifar_vgg16", "cifar_mobilenet_v2", "cifar_shufflenet_v2", "cifar_mobilenet_v1"],
)
def test_width_multiplier_shrinks_the_model(name):
    full = sum(p.numel() for p in build_model(name).parameters())
    half = sum(p.numel() for p in build_model(name, width=0.5).parameters())
    assert half < 0.5 * full
    with torch.no_grad():
        assert build_model(name, width=0.5).eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_resnet_depths_have_the_published_parameter_counts():
    params = {d: sum(p.numel() for p in build_model(f"cifar_resnet{d}").parameters()) for d in (20, 56, 110)}
    # He et al. 2016: 0.27M / 0.85M / 1.7M (option-B shortcuts add a few thousand 1x1 weights).
    assert 0.26e6 < params[20] < 0.29e6
    assert 0.84e6 < params[56] < 0.87e6
    assert 1.70e6 < params[110] < 1.76e6


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "shufflenet_v2_x1_0", "googlenet"])
def test_torchvision_models_by_name(name):
    model = build_model(name, num_classes=5).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    assert default_input_size(name) == 224


def test_list_models_holds_zoo_and_torchvision():
    names = list_models()
    assert names[: len(CIFAR_MODELS)] == list(CIFAR_MODELS)
    assert {"resnet50", "mobilenet_v2", "densenet121", "efficientnet_b0"} <= set(names)


def test_unknown_model_names_the_choices():
    with pytest.raises(ModelError, match="unknown model 'resnet9000'.*cifar_resnet20"):
        build_model("resnet9000")


def test_bad_width_and_pretrained_cifar_are_refused():
    with pytest.raises(ModelError, match="width multiplier must be > 0"):
        build_model("cifar_resnet20", width=0)
    with pytest.raises(ModelError, match="no published pretrained weights"):
        build_model("cifar_resnet20", pretrained=True)


def test_pretrained_offline_gives_a_clear_message(monkeypatch, tmp_path):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(ModelError, match="offline"):
        build_model("resnet18", pretrained=True)


def test_initialisation_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    a = build_model("cifar_resnet20", width=0.25)
    b = build_model("cifar_resnet20", width=0.25)
    assert torch.rand(1) == expected_next  # building did not consume the caller's random stream
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    c = build_model("cifar_resnet20", width=0.25, seed=1)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
