"""Run the ``volga`` command as a user would: a subprocess in a project directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


def wait_for_line(proc: subprocess.Popen[str], text: str, timeout: float = 60) -> list[str]:
    """stderr lines of ``proc`` up to the first containing ``text`` (fails if it exits first)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            raise AssertionError(f"process exited ({proc.wait()}) before printing {text!r}:\n" + "".join(seen))
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"no {text!r} within {timeout}s:\n" + "".join(seen))
