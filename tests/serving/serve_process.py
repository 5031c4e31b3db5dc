"""Running ``volga serve`` as a subprocess, for the CLI and hardening tests (a helper module:
``from test_cli import ...`` would be ambiguous, tests/training has a test_cli too)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import volga

HERE = Path(__file__).parent
ROOT = Path(volga.__file__).resolve().parents[1]


def start(*args: str, env: dict | None = None) -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "volga.cli", "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=environment, cwd=HERE,
    )


def wait_url(process: subprocess.Popen, timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line:
            if process.poll() is not None:
                raise AssertionError(f"volga serve exited {process.returncode}: {process.stderr.read()}")
            continue
        found = re.search(r"on (http://\S+) ", line)
        if found:
            return found.group(1)
    raise AssertionError("volga serve did not announce its URL")


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()
