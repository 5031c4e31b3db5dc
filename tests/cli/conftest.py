"""Run the ``volga`` command as a user would: a subprocess in a project directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def volga_env() -> dict[str, str]:
    # this checkout's volga, whatever is installed; no colour, unbuffered logs
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "PYTHONUNBUFFERED": "1"}


def volga(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m volga ARGS`` in ``cwd``; returns the finished process (stdout, stderr, returncode)."""
    return subprocess.run([sys.executable, "-m", "volga", *args], cwd=cwd, env=volga_env(), capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A fresh ``volga init`` project."""
    done = volga("init", "demo", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return tmp_path / "demo"
