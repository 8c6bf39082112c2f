"""AppTest of the Model & data page's state rules: the latency card (median + spread over repeats, a warning when
noisy, Re-measure), the input-size control of torchvision models, and weights that change only once a file loads
(a bad upload's error stays on this page and names no server path)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gui import cache

APP = str(Path(__file__).resolve().parents[2] / "app.py")


def app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def text(at: AppTest) -> str:
    parts = [c.value for c in at.caption] + [w.value for w in at.warning] + [e.value for e in at.error]
    return "\n".join(str(p) for p in parts)


def test_latency_card_shows_spread_warns_when_noisy_and_remeasures(monkeypatch):
    real = cache.measure_latency_stats
    calls = []

    def spy(models, size, **kwargs):
        calls.append((size, kwargs))
        stats = real(models, size, **{**kwargs, "min_run_time_s": 0.05})
        base = stats[
            "baseline"
        ]  # a real measurement; its spread is set so the test does not hang on the load
        spread = base.median_ms if len(calls) == 2 else 0.0  # the re-measurement comes back noisy
        stats["baseline"] = type(base)(
            **{**vars(base), "p25_ms": base.median_ms, "p75_ms": base.median_ms + spread}
        )
        return stats

    monkeypatch.setattr(cache, "measure_latency_stats", spy)
    monkeypatch.setattr(cache, "test_accuracy", lambda ref: 87.5)
    at = app()
    at.button(key="measure").click().run()
    assert calls == [(32, {"repeats": 5})]
    assert "measure" not in [b.key for b in at.button]  # the Measure button has done its job
    card = {m.label: m.value for m in at.metric}["CPU latency"]
    assert card.endswith(" ms") and float(card.split()[0]) > 0
    assert "IQR" in text(at) and "5 repeats" in text(at)
    assert not any("spread by more than 10 %" in w.value for w in at.warning)
    at.button(key="remeasure_latency").click().run()
    assert len(calls) == 2  # measured again, not served from the cache
    assert any("spread by more than 10 %" in w.value for w in at.warning)
    assert "noisy, re-measure" in text(at)


def test_torchvision_models_cost_at_the_datasets_size():
    at = app()
    at.selectbox(key="arch").set_value("resnet18").run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.number_input(key="input_size_resnet18").value == 32  # shapes10 images are 32x32
    ref = at.session_state["model_ref"]
    assert ref.input_size == 32 and cache.input_size_for(ref) == 32
    macs_32 = cache.model_summary(ref)["macs"]
    assert macs_32 < 0.1e9  # resnet18 is 1.82 GMACs at 224 px, ~37 M at 32 px
    at.number_input(key="input_size_resnet18").set_value(64).run()
    assert at.session_state["model_ref"].input_size == 64
    assert cache.model_summary(at.session_state["model_ref"])["macs"] == pytest.approx(4 * macs_32, rel=0.05)


@pytest.mark.parametrize("source", ["upload", "train"])
def test_picking_upload_or_train_keeps_the_weights_in_use(source):
    at = app()
    before = at.session_state["model_ref"]
    at.radio(key="weights_source").set_value(source).run()
    assert not at.exception
    assert at.session_state["model_ref"] == before and before.weights == "shipped"
    assert "keeps the weights in use" in text(at) or "does not change the weights in use" in text(at)
