"""The app in a real headless Chromium: every page, a 2-episode GNN-RL search, one Step, the candidate on Compare.

A screenshot of each page is saved under test-artifacts/ (gitignored).
"""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.e2e

LOAD_MS = 120_000  # first script run imports torch and traces the model on a busy 2-core machine
SEARCH_MS = 300_000
METHOD = os.environ.get("TOPOPRUNE_E2E_METHOD", "gnnrl")  # another registered method, for debugging only


def wait_idle(page, timeout_ms: int = LOAD_MS) -> None:
    """Wait until Streamlit has finished the current script run (its status widget is gone)."""
    page.wait_for_selector('[data-testid="stApp"]', timeout=timeout_ms)
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout_ms
    )


def open_page(page, title: str) -> None:
    wait_idle(page)
    page.get_by_role("link", name=title, exact=True).first.click()
    page.get_by_role("heading", name=title, exact=True).first.wait_for(timeout=LOAD_MS)
    wait_idle(page)


def no_exception(page) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0, page.locator(
        '[data-testid="stException"]'
    ).first.inner_text()


def test_every_page_and_a_gnnrl_search(page, app_url, artifacts):
    from playwright.sync_api import expect

    page.goto(app_url, timeout=LOAD_MS)
    page.get_by_role("heading", name="Model & data").wait_for(timeout=LOAD_MS)
    wait_idle(page)
    expect(page.get_by_text("MACs").first).to_be_visible(timeout=LOAD_MS)
    no_exception(page)
    page.screenshot(path=str(artifacts / "01-model.png"), full_page=True)

    open_page(page, "Topology")
    expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible(timeout=LOAD_MS)
    # click a node: plotly's drag layer covers the SVG points, so force the click
    points = page.locator('[data-testid="stPlotlyChart"] .scatterlayer .trace').nth(1).locator(".point")
    points.nth(4).click(force=True)  # the first residual block, layer1.0
    expect(page.get_by_text(re.compile(r"Coupled group \S+: \d+ channels")).first).to_be_visible(
        timeout=LOAD_MS
    )
    wait_idle(page)
    no_exception(page)
    page.screenshot(path=str(artifacts / "02-topology.png"), full_page=True)

    open_page(page, "Sensitivity")
    expect(page.get_by_role("button", name="Run analysis")).to_be_visible()
    no_exception(page)
    page.screenshot(path=str(artifacts / "03-sensitivity.png"), full_page=True)

    open_page(page, "Agent")
    page.get_by_label("Method").first.click()
    page.get_by_role("option", name=re.compile(rf"^{re.escape(METHOD)} \(")).first.click()
    wait_idle(page)
    # score on fewer val images so two episodes stay quick on a busy 2-core machine
    page.get_by_role("button", name="Scoring protocol").click()
    val_images = page.get_by_role("spinbutton", name="Val images per score")
    val_images.fill("128")
    val_images.press("Enter")
    wait_idle(page)
    bn = page.get_by_role("spinbutton", name="BN recalibration batches")
    bn.fill("1")
    bn.press("Enter")
    wait_idle(page)
    page.keyboard.press("Escape")
    episodes = page.get_by_role("spinbutton", name="Episodes")
    episodes.fill("2")
    episodes.press("Enter")
    wait_idle(page)
    page.get_by_role("button", name="Launch").click()
    expect(page.get_by_text("Search finished")).to_be_visible(timeout=SEARCH_MS)
    wait_idle(page)
    no_exception(page)
    expect(page.get_by_text("of every episode, for every method").first).to_be_visible()
    page.screenshot(path=str(artifacts / "04-agent-search.png"), full_page=True)

    page.get_by_role("button", name="Step").click()
    expect(page.get_by_text("Paused.")).to_be_visible(timeout=SEARCH_MS)
    wait_idle(page)
    expect(page.get_by_text("Action of episode 1").first).to_be_visible()
    no_exception(page)
    page.screenshot(path=str(artifacts / "05-agent-step.png"), full_page=True)

    open_page(page, "Compare")
    expect(page.get_by_text("Accuracy vs MACs").first).to_be_visible(timeout=LOAD_MS)
    expect(page.get_by_text(re.compile(rf"#\d+ {re.escape(METHOD)}")).first).to_be_visible()
    no_exception(page)
    page.screenshot(path=str(artifacts / "06-compare.png"), full_page=True)

    open_page(page, "Runs")
    expect(
        page.get_by_text(re.compile(rf"Run #\d+: {re.escape(METHOD)} on cifar_resnet20")).first
    ).to_be_visible()
    no_exception(page)
    page.screenshot(path=str(artifacts / "07-runs.png"), full_page=True)
    page.get_by_role("button", name="Open on the Agent page").click()
    expect(page.get_by_role("heading", name=re.compile(rf"Run \d+: {re.escape(METHOD)}"))).to_be_visible(
        timeout=LOAD_MS
    )
    wait_idle(page)
    no_exception(page)
    page.screenshot(path=str(artifacts / "08-agent-reopened.png"), full_page=True)


def test_upload_weights_checked_and_used(page, app_url, artifacts, tmp_path):
    """A state_dict that fits is loaded; one that does not is refused with a clear message, no traceback."""
    import torch
    from playwright.sync_api import expect

    from engine.zoo import build_model

    good = tmp_path / "resnet20-weights.pt"
    torch.save(build_model("cifar_resnet20").state_dict(), good)
    bad = tmp_path / "vgg-weights.pt"
    torch.save({"features.0.weight": torch.zeros(4, 3, 3, 3)}, bad)

    page.goto(app_url, timeout=LOAD_MS)
    page.get_by_role("heading", name="Model & data").wait_for(timeout=LOAD_MS)
    wait_idle(page)
    page.get_by_text("Upload weights", exact=True).click()
    wait_idle(page)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(bad))
    expect(page.get_by_text(re.compile("vgg-weights|does not fit|missing", re.I)).first).to_be_visible(
        timeout=LOAD_MS
    )
    wait_idle(page)
    no_exception(page)
    assert (
        "vgg-weights.pt does not fit this architecture"
        in page.locator('[data-testid="stAlertContentError"]').first.inner_text()
    )
    page.screenshot(path=str(artifacts / "09-upload-refused.png"), full_page=True)
    assert (
        "/uploads/" not in page.locator('[data-testid="stAlertContentError"]').first.inner_text()
    )  # no server path

    # the refused file never reached the other pages: Topology draws the shipped baseline, with no error
    open_page(page, "Topology")
    expect(page.locator('[data-testid="stPlotlyChart"]').first).to_be_visible(timeout=LOAD_MS)
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    no_exception(page)
    open_page(page, "Model & data")
    assert page.get_by_text("vgg-weights").count() == 0  # no stale error back on Model & data
    page.get_by_text("Upload weights", exact=True).click()
    wait_idle(page)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(str(good))
    expect(page.get_by_text(re.compile(r"Baseline: weights from resnet20-weights\.pt"))).to_be_visible(
        timeout=LOAD_MS
    )
    wait_idle(page)
    no_exception(page)
    page.screenshot(path=str(artifacts / "10-upload-used.png"), full_page=True)
