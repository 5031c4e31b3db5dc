"""Smoke tests: every example runs as a user would run it (its own process), prints the
answers its docstring promises, and leaves nothing behind (no temp dirs, no files in the
working directory or in examples/)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def run_example(name: str, tmp_path: Path, **env: str) -> str:
    tmp, cwd = tmp_path / "tmp", tmp_path / "cwd"
    tmp.mkdir()
    cwd.mkdir()
    before = sorted(p.name for p in EXAMPLES.iterdir())
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp), **env},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert list(tmp.iterdir()) == [], "the example left temporary files"
    assert list(cwd.iterdir()) == [], "the example wrote into the working directory"
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.name != "__pycache__") == [b for b in before if b != "__pycache__"]
    return done.stdout


def lines_starting(out: str, prefix: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(prefix)]


def test_fraud_detection(tmp_path: Path) -> None:
    out = run_example("fraud_detection.py", tmp_path)
    assert lines_starting(out, "flagged:") == ["flagged: ['c-burst']"]
    (burst,) = lines_starting(out, "c-burst ")
    assert "payments_10m=6" in burst and "flagged=True" in burst
    assert len(lines_starting(out, "c")) == 6  # c-burst and c0..c4, one score each


def test_ride_hailing(tmp_path: Path) -> None:
    out = run_example("ride_hailing.py", tmp_path)
    assert lines_starting(out, "nearest driver:") == ["nearest driver: d3"]
    (d3,) = lines_starting(out, "driver d3:")
    assert float(d3.split()[2]) < 0.3  # km: a street away
    assert "zone centre: 50 requests / 4 drivers in 15 min -> surge x3.0" in out
    assert "zone airport: 10 requests / 4 drivers in 15 min -> surge x1.0" in out
    assert "zone harbour: no data" in out


def test_recommendations(tmp_path: Path) -> None:
    out = run_example("recommendations.py", tmp_path)
    assert lines_starting(out, "u1 top topic:") == ["u1 top topic: sports"]
    assert lines_starting(out, "u2 top topic:") == ["u2 top topic: cooking"]
    (u1,) = lines_starting(out, "u1 top 4:")
    assert u1.count("(sports)") == 4


def test_quickstart_demo_leaves_nothing_behind(tmp_path: Path) -> None:
    """What ``make demo`` runs, on 20k orders instead of 1M."""
    out = run_example("quickstart.py", tmp_path, VOLGA_DEMO_ORDERS="20000")
    assert "offline backfill: 20,000 orders" in out
    assert "online: 21,000 orders streamed" in out and "latest now: user 1:" in out
