"""Tracing a model must not disturb forward passes that other threads run at the same time (issue 16, B1).

torch.fx patches nn.Module.__call__ / __getattr__ process-wide while it traces; a GUI worker thread running a
forward pass meanwhile used to die with "NameError: module is not installed as a submodule".
"""

from __future__ import annotations

import sys
import threading

import pytest
import torch
from torch import nn

from engine.graph.trace import meta_copy, meta_inputs, symbolic_trace_isolated, trace_model


@pytest.fixture(autouse=True)
def _fast_thread_switching():
    """Switch threads every 10 us (default 5 ms) so the two threads interleave inside every trace."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(before)


def _small_net(width: int) -> nn.Module:
    torch.manual_seed(width)
    block = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
    return nn.Sequential(
        block,
        nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU()),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(width, 4),
    ).eval()


def _forward_loop(
    model: nn.Module,
    x: torch.Tensor,
    expected: torch.Tensor,
    stop: threading.Event,
    errors: list,
    counts: list,
) -> None:
    try:
        with torch.no_grad():
            while not stop.is_set():
                out = model(x)
                if not torch.equal(out, expected):
                    errors.append(AssertionError("a forward pass gave a different output while tracing"))
                    return
                counts[0] += 1
    except Exception as exc:  # the test fails on any exception in the worker
        errors.append(exc)


def test_tracing_leaves_forwards_in_other_threads_alone():
    model_a, model_b = _small_net(8), _small_net(6)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model_a(x)
    reference = trace_model(meta_copy(model_b), meta_inputs(x))
    stop, errors, counts = threading.Event(), [], [0]
    worker = threading.Thread(
        target=_forward_loop, args=(model_a, x, expected, stop, errors, counts), daemon=True
    )
    worker.start()
    try:
        for _ in range(10):
            traced = trace_model(meta_copy(model_b), meta_inputs(x))
            assert traced.method == "fx", traced.fx_error
            assert list(traced.graph.nodes) == list(reference.graph.nodes)
            if errors:
                break
    finally:
        stop.set()
        worker.join(timeout=10)
    assert not errors, f"the worker's forward failed while another thread traced: {errors[0]!r}"
    assert counts[0] > 0


def test_two_threads_tracing_at_once_both_get_their_own_graph():
    models = [_small_net(5), _small_net(7)]
    x = torch.randn(1, 3, 8, 8)
    expected = [len(symbolic_trace_isolated(m).graph.nodes) for m in models]
    errors: list = []

    def trace_many(model: nn.Module, n_nodes: int) -> None:
        try:
            for _ in range(20):
                gm = symbolic_trace_isolated(model)
                assert len(gm.graph.nodes) == n_nodes
                torch.testing.assert_close(gm(x), model(x))
        except Exception as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=trace_many, args=(m, n)) for m, n in zip(models, expected, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, repr(errors[0])


def test_patches_are_gone_after_tracing():
    call, getattr_ = nn.Module.__call__, nn.Module.__getattr__
    symbolic_trace_isolated(_small_net(4))
    assert nn.Module.__call__ is call and nn.Module.__getattr__ is getattr_
