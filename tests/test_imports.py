"""The shape of the package: layers (lint-imports), no module-level cycles, small modules,
the UI free of the load path, and every subpackage in the wheel."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

from tests.conftest import ROOT

PKG = ROOT / "llmtop"
MAX_TOP_LEVEL = 10
MAX_LINES = 700


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph("llmtop")


def test_layers_contract_holds() -> None:
    """pyproject's import-linter contract (the layers of docs/architecture.md)."""
    lint = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run(
        [str(lint) if lint.exists() else "lint-imports"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]


def test_no_module_level_import_cycle() -> None:
    """Depth-first search over every llmtop module's direct run-time imports.

    Imports under `if TYPE_CHECKING:` are annotations only (a widget naming its app's type)
    and are left out; the layers contract above checks them too.
    """
    graph = grimp.build_graph("llmtop", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for dep in sorted(graph.find_modules_directly_imported_by(m)):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[m] = 2

    for m in modules:
        if m not in state:
            visit(m)


def test_top_level_is_small_and_modules_are_short() -> None:
    top = [p.stem for p in PKG.glob("*.py") if p.stem not in ("__init__", "__main__")]
    assert len(top) <= MAX_TOP_LEVEL, sorted(top)
    long = {
        str(p.relative_to(ROOT)): n
        for p in PKG.rglob("*.py")
        if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, long


def test_ui_rendering_imports_neither_aiohttp_nor_the_load_path() -> None:
    """Widgets render immutable telemetry: nothing they import reaches HTTP or the load loop.

    (The worker thread owns the session and so the load process; that is its job.)
    """
    g = grimp.build_graph("llmtop", include_external_packages=True)
    rendering = g.find_descendants("llmtop.tui.widgets") | {
        "llmtop.tui.model",
        "llmtop.tui.messages",
        "llmtop.tui.canvas",
        "llmtop.tui.commands",
    }
    for m in rendering:
        bad = {
            d
            for d in g.find_upstream_modules(m)
            if d.startswith(("llmtop.backends", "llmtop.load", "llmtop.session", "aiohttp"))
        }
        assert not bad, (m, bad)


def test_every_subpackage_is_in_the_wheel() -> None:
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    assert found <= listed, found - listed
    assert "llmtop.shipped_profiles" in listed and (ROOT / "profiles").is_dir()
