import torch
from torch import nn

from engine.data import DataSplits
from engine.train import TrainConfig, evaluate, evaluate_tensors, finetune, train_model
from engine.zoo import build_model


class _Fixed(nn.Module):
    """Predicts class = first pixel value, so its accuracy is known exactly."""

    def forward(self, x):
        return nn.functional.one_hot(x[:, 0, 0, 0].long(), 3).float()


def test_evaluate_gives_the_exact_accuracy():
    x = torch.zeros(8, 3, 2, 2)
    x[:, 0, 0, 0] = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]).float()
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 2])  # 6 of 8 right
    result = evaluate_tensors(_Fixed(), x, y, batch_size=3)
    assert result.top1 == 75.0 and result.n == 8
    assert result.top5 == 100.0  # top-5 of 3 classes covers everything


def test_short_training_lowers_the_loss(small_shapes10):
    model = build_model("cifar_resnet20", width=0.5)
    before = evaluate(model, small_shapes10, "val").loss
    result = train_model(
        model, small_shapes10, TrainConfig(epochs=2, lr=0.05, batch_size=64, augment=False), validate=False
    )
    after = evaluate(model, small_shapes10, "val").loss
    assert result.epoch_losses[1] < result.epoch_losses[0]
    assert after < before


def test_training_is_deterministic_and_reports_progress(small_shapes10):
    def run():
        torch.manual_seed(123)
        model = build_model("cifar_resnet20", width=0.25)
        events = []
        train_model(
            model,
            small_shapes10,
            TrainConfig(epochs=1, max_batches_per_epoch=3, batch_size=32),
            callback=events.append,
        )
        return model, events

    a, events = run()
    b, _ = run()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert [e.step for e in events if e.val is None] == [1, 2, 3]
    assert events[-1].val is not None and 0 <= events[-1].val.top1 <= 100
    assert events[-2].fraction == 1.0


def test_finetune_with_a_teacher_leaves_the_teacher_untouched(small_shapes10: DataSplits):
    teacher = build_model("cifar_resnet20", width=0.25).eval()
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_model("cifar_resnet20", width=0.25)
    result = finetune(student, small_shapes10, epochs=1, teacher=teacher, max_batches_per_epoch=2)
    assert result.config.distill_alpha == 0.5
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, snapshot[key])
