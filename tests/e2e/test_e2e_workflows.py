"""The two flagship workflows in headless Chromium (issue 16 items 1-2):

- Agent controls: Step three times (one episode each, paused after each), Resume, Stop; the run is
  "interrupted" on Runs and reopens on Agent with its episodes.
- Jobs survive other users: Sensitivity and a GNN-RL search run in one browser context while a second context
  opens other models (tracing them) and their Topology; both jobs finish, neither fails.

Screenshots go to /tmp/topoprune-e2e/ (and test-artifacts/).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

LOAD_MS = 120_000
JOB_MS = 420_000
SHOTS = Path("/tmp/topoprune-e2e")


def wait_idle(page, timeout_ms: int = LOAD_MS) -> None:
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
    assert page.get_by_text("Unexpected failure").count() == 0


def shot(page, artifacts: Path, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=label)
    box.fill(str(value))
    box.press("Enter")
    wait_idle(page)


def pick(page, label: str, option: str | re.Pattern, *, testid: str = "stSelectbox") -> None:
    """Choose `option` in the select box (or, with testid="stMultiSelect", the multiselect) labelled `label`."""
    box = page.locator(f'[data-testid="{testid}"]').filter(has_text=re.compile("^" + re.escape(label)))
    box.first.locator("input").first.click()
    page.get_by_role("option", name=option).first.click()
    wait_idle(page)


def small_search_settings(page, episodes: int) -> None:
    """gnnrl, scored on 128 val images and one BN batch, so episodes stay quick on a busy 2-core machine."""
    pick(page, "Method", re.compile(r"^gnnrl \("))
    page.get_by_role("button", name="Scoring protocol").click()
    set_number(page, "Val images per score", 128)
    set_number(page, "BN recalibration batches", 1)
    page.keyboard.press("Escape")
    set_number(page, "Episodes", episodes)


def episodes_shown(page) -> str:
    card = page.locator('[data-testid="stMetric"]').filter(has_text=re.compile(r"^Episodes"))
    return card.first.locator('[data-testid="stMetricValue"]').inner_text()


def test_agent_step_three_times_resume_stop_and_reopen(page, app_url, artifacts):
    from playwright.sync_api import expect

    page.goto(app_url, timeout=LOAD_MS)
    page.get_by_role("heading", name="Model & data").wait_for(timeout=LOAD_MS)
    open_page(page, "Agent")
    small_search_settings(page, episodes=20)
    for n in (1, 2, 3):
        page.get_by_role("button", name="Step").click()
        expect(page.get_by_text("Paused.")).to_be_visible(timeout=JOB_MS)
        wait_idle(page)
        expect(
            page.locator('[data-testid="stMetric"]').filter(has_text=re.compile(r"^Episodes")).first
        ).to_contain_text(str(n), timeout=LOAD_MS)
        assert episodes_shown(page) == str(n)
        # the buttons follow the state: Resume and Step enabled, Launch disabled
        expect(page.get_by_role("button", name="Resume")).to_be_enabled()
        expect(page.get_by_role("button", name="Step")).to_be_enabled()
        expect(page.get_by_role("button", name="Launch")).to_be_disabled()
        no_exception(page)
    shot(page, artifacts, "w1-agent-stepped-3")

    page.get_by_role("button", name="Resume").click()
    expect(page.get_by_role("button", name="Pause")).to_be_enabled(timeout=LOAD_MS)
    page.wait_for_timeout(1500)
    page.get_by_role("button", name="Stop").click()
    expect(page.get_by_text("Stopped by the user")).to_be_visible(timeout=JOB_MS)
    wait_idle(page)
    expect(page.get_by_role("button", name="Launch")).to_be_enabled()
    no_exception(page)
    shot(page, artifacts, "w2-agent-stopped")

    open_page(page, "Runs")
    expect(page.get_by_text(re.compile(r"Run #\d+: gnnrl on cifar_resnet20.*interrupted"))).to_be_visible()
    summary = page.locator('[data-testid="stMarkdownContainer"]').filter(
        has_text=re.compile(r"Run #\d+: gnnrl")
    )
    text = summary.last.inner_text()
    run_id, n_episodes = (
        re.search(r"Run #(\d+)", text).group(1),
        int(re.search(r"(\d+) episode", text).group(1)),
    )
    assert n_episodes >= 3
    shot(page, artifacts, "w3-runs-interrupted")
    page.get_by_role("button", name="Open on the Agent page").click()
    expect(page.get_by_role("heading", name=re.compile(rf"Run {run_id}: gnnrl .*interrupted"))).to_be_visible(
        timeout=LOAD_MS
    )
    wait_idle(page)
    assert episodes_shown(page) == str(n_episodes)
    expect(page.get_by_text("of every episode, for every method").first).to_be_visible()
    expect(page.get_by_role("button", name="Resume this run")).to_be_visible()
    no_exception(page)
    shot(page, artifacts, "w4-agent-reopened")


def test_jobs_finish_while_another_context_opens_other_models(browser, app_url, artifacts):
    from playwright.sync_api import expect

    ctx_a = browser.new_context(viewport={"width": 1400, "height": 2400})
    ctx_b = browser.new_context(viewport={"width": 1400, "height": 2400})
    try:
        a, b = ctx_a.new_page(), ctx_b.new_page()
        a.goto(app_url, timeout=LOAD_MS)
        a.get_by_role("heading", name="Model & data").wait_for(timeout=LOAD_MS)

        # A: a small sensitivity analysis (2 groups x 3 ratios on 128 val images), then a 2-episode search
        open_page(a, "Sensitivity")
        pick(a, "Val images", "128")
        set_number(a, "BN batches", 1)
        for group in ("layer1.0.conv1", "layer2.0.conv1"):
            pick(a, "Groups (empty = all", group, testid="stMultiSelect")
        a.keyboard.press("Escape")
        expect(a.get_by_text("7 plans to score")).to_be_visible()
        a.get_by_role("button", name="Run analysis").click()
        expect(a.get_by_text(re.compile(r"\d+/7 plans")).first).to_be_visible(timeout=LOAD_MS)
        shot(a, artifacts, "w5-sensitivity-running")
        open_page(a, "Agent")
        small_search_settings(a, episodes=2)
        a.get_by_role("button", name="Launch").click()

        # B: open other models (each is traced) and their Topology while A's jobs run
        b.goto(app_url, timeout=LOAD_MS)
        b.get_by_role("heading", name="Model & data").wait_for(timeout=LOAD_MS)
        wait_idle(b)
        for arch in ("cifar_resnet44", "cifar_mobilenet_v2"):
            pick(b, "Model", re.compile(rf"^{arch}"))
            expect(b.get_by_text("MACs").first).to_be_visible(timeout=LOAD_MS)
            open_page(b, "Topology")
            expect(b.locator('[data-testid="stPlotlyChart"]').first).to_be_visible(timeout=LOAD_MS)
            no_exception(b)
            open_page(b, "Model & data")
        expect(b.get_by_text("MACs").first).to_be_visible(timeout=LOAD_MS)
        wait_idle(b)
        shot(b, artifacts, "w6-other-context-models")

        # A: both jobs finish
        expect(a.get_by_text("Search finished")).to_be_visible(timeout=JOB_MS)
        wait_idle(a)
        no_exception(a)
        shot(a, artifacts, "w7-search-finished")
        open_page(a, "Sensitivity")
        expect(a.get_by_text(re.compile(r"Unpruned val top-1: [\d.]+%; 2 groups"))).to_be_visible(
            timeout=JOB_MS
        )
        expect(a.get_by_text("Accuracy drop when only this group is pruned").first).to_be_visible()
        assert a.get_by_text("Partial table").count() == 0
        no_exception(a)
        shot(a, artifacts, "w8-sensitivity-finished")
    finally:
        ctx_a.close()
        ctx_b.close()
