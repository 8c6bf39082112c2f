"""CandidateReport's dict views: never copy the pruned model, keep the plan independent, same keys as before."""

import time

import pytest
from torch import nn

from engine.evaluate import CandidateReport
from engine.zoo import build_model


class _CountingModel(nn.Module):
    copies = 0

    def __deepcopy__(self, memo):
        type(self).copies += 1
        return _CountingModel()


def _report(model: nn.Module) -> CandidateReport:
    return CandidateReport(
        plan={"keep": {"g0": 0.5}},
        val_acc=80.0,
        test_acc=79.0,
        test_acc_before_finetune=70.0,
        baseline_test_acc=90.0,
        macs_before=200,
        macs_after=100,
        params_before=10,
        params_after=5,
        pruned_model=model,
    )


def test_to_dict_and_item_access_never_copy_the_pruned_model():
    report = _report(_CountingModel())
    first, second = report.to_dict(), report.to_dict()
    assert report["test_acc"] == 79.0 and report["macs_ratio"] == 0.5
    assert _CountingModel.copies == 0
    assert first == second and "pruned_model" not in first and first["macs_ratio"] == 0.5
    first["plan"]["keep"]["g0"] = 1.0  # a caller editing its dict does not change the report
    assert report.plan["keep"]["g0"] == 0.5 and report["plan"] == {"keep": {"g0": 0.5}}
    with pytest.raises(KeyError):
        report["pruned_model"]
    with pytest.raises(KeyError):
        report["no_such_key"]


def test_to_dict_is_cheap_with_a_real_model():
    report = _report(build_model("cifar_resnet56"))
    started = time.perf_counter()
    for _ in range(200):
        report.to_dict()
        report["val_acc"]
    assert time.perf_counter() - started < 0.5  # deep-copying resnet56 200 times took seconds
