"""KD fine-tuning: settings and teacher checks are one clear line, the student moves towards its teacher, and
`prune --finetune-kd` passes the settings through."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from engine.kd import KDConfig, KDError, check_teacher, finetune_kd
from engine.zoo import build_model


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"temperature": 0.0}, r"temperature must be a number > 0, got 0.0"),
        ({"temperature": -2}, r"temperature must be a number > 0"),
        ({"weight": 1.5}, r"weight must be in \[0, 1\].*got 1.5"),
    ],
)
def test_bad_settings_are_one_clear_error(kwargs, pattern):
    with pytest.raises(KDError, match=pattern):
        KDConfig(**kwargs)


def test_a_teacher_of_another_architecture_or_class_count_is_refused(resnet20):
    student = resnet20[0]
    x = torch.zeros(2, 3, 32, 32)
    with pytest.raises(KDError, match=r"not the student's architecture \(first difference"):
        check_teacher(build_model("cifar_vgg16", width=0.25), student, x)
    with pytest.raises(KDError, match=r"teacher predicts 100 classes but the student 10"):
        check_teacher(build_model("cifar_resnet20", num_classes=100), student, x)
    with pytest.raises(KDError, match=r"dataset has 7"):
        check_teacher(student, student, x, num_classes=7)


def _kl(teacher, student, x, t=4.0):
    with torch.no_grad():
        return float(
            F.kl_div(
                F.log_softmax(student(x) / t, 1),
                F.log_softmax(teacher(x) / t, 1),
                log_target=True,
                reduction="batchmean",
            )
        )


def test_pure_distillation_moves_the_pruned_student_towards_its_teacher(resnet20, small_shapes10):
    from engine.pruning import apply_plan, plan_from_ratios

    teacher, topo = resnet20
    plan = plan_from_ratios(topo, {g.name: 0.5 for g in topo.groups if g.prunable})
    student = apply_plan(teacher, topo, plan).eval()
    frozen = copy.deepcopy(teacher.state_dict())
    x, _ = small_shapes10.tensors("val", limit=64)
    before = _kl(teacher, student, x)
    finetune_kd(
        student,
        teacher,
        small_shapes10,
        kd=KDConfig(temperature=4.0, weight=1.0),
        epochs=1,
        lr=0.05,
        max_batches_per_epoch=4,
        batch_size=32,
    )
    assert _kl(teacher.eval(), student.eval(), x) < before
    assert all(
        torch.equal(frozen[k], v) for k, v in teacher.state_dict().items()
    )  # the teacher never changes


def test_finetune_kd_refuses_a_mismatched_teacher_before_any_step(resnet20, small_shapes10):
    student = copy.deepcopy(resnet20[0])
    before = copy.deepcopy(student.state_dict())
    with pytest.raises(KDError):
        finetune_kd(
            student,
            build_model("cifar_resnet20", num_classes=100),
            small_shapes10,
            epochs=1,
            max_batches_per_epoch=1,
        )
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())  # nothing trained


def test_cli_bad_kd_weight_is_one_line(capsys):
    from engine.cli import main

    code = main(
        [
            "prune",
            "cifar_resnet20",
            "--method",
            "uniform",
            "--budget",
            "0.5",
            "--finetune-epochs",
            "1",
            "--finetune-kd",
            "--kd-weight",
            "2",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and "KD weight must be in [0, 1]" in err
