"""The landing page's "Start here" path (a link to each page in order, the five words defined) and the Streamlit
config that hides the Deploy button."""

from __future__ import annotations

import tomllib
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]


def test_landing_page_shows_the_guided_path_and_the_words():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    labels = [link.proto.label for link in at.get("page_link")]
    assert labels[:5] == ["1. Model & data", "2. Topology", "3. Sensitivity", "4. Agent", "5. Compare"]
    text = "\n".join(m.value for m in at.markdown)
    for word in ("Coupled group", "Keep ratio", "Budget", "Reward", "Val vs test"):
        assert f"**{word}**:" in text


def test_deploy_button_is_hidden():
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["client"]["toolbarMode"] == "minimal"
