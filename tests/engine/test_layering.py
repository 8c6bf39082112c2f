"""The engine never imports UI code; engine modules never print."""

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"
FORBIDDEN = {"streamlit", "plotly", "gui"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_engine_never_imports_ui_code():
    offenders = {str(p.relative_to(ENGINE)): sorted(_imports(p) & FORBIDDEN) for p in ENGINE.rglob("*.py")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_engine_code_outside_the_cli_never_prints():
    printing = []
    for path in ENGINE.rglob("*.py"):
        if "cli" in path.relative_to(ENGINE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                printing.append(f"{path.relative_to(ENGINE)}:{node.lineno}")
    assert printing == []


def test_the_check_itself_catches_a_ui_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import streamlit as st\nfrom plotly import graph_objects\n")
    assert _imports(bad) & FORBIDDEN == {"streamlit", "plotly"}
