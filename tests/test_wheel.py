"""The wheel a plain `pip install` builds: shipped profiles load by name from it."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_shipped_profiles_load_by_name_from_an_installed_wheel(tmp_path: Path) -> None:
    py = sys.executable
    build = subprocess.run(
        [py, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path, ROOT],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = tmp_path.glob("llmtop-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "llmtop/shipped_profiles/llama3-8b-2048-128.toml" in names
    site = tmp_path / "site"
    inst = subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "-q", "--target", site, wheel],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    # From outside the checkout, with the installed copy first on the path.
    probe = (
        "import llmtop.profiles as p; "
        f"assert p.__file__.startswith({str(site)!r}), p.__file__; "
        "print(p.load_profile('llama3-8b-2048-128').name)"
    )
    run = subprocess.run(
        [py, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"},
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "llama3-8b-2048-128"
