"""Checkpoints on Ray: a killed actor restarts the job from its last checkpoint, and the
stores end exactly as an uninterrupted run leaves them (memory store, Redis, offline
rows); a rerun after the job died resumes; a changed parallelism is refused clearly.

The job is the quickstart (filter -> as-of join on the user -> windows per user: join and
window state, two sources) over paced in-memory orders, so it runs long enough to be hit
mid-run; the reference is the same job run by the embedded runtime without interruption.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import volga
from volga.errors import JobFailed
from volga.runtime.checkpoint import CheckpointStore
from volga.sources import MemorySource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore
from volga.testing.quickstart import N_USERS, order_records, quickstart

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

ORDERS = order_records(3000)
KEYS = pl.DataFrame({"user_id": [str(i) for i in range(N_USERS)]})


def pipe(rate_per_s: float | None = None) -> Any:
    return quickstart(lambda online: MemorySource(ORDERS, rate_per_s=rate_per_s) if rate_per_s else MemorySource(ORDERS))


def stores(client: volga.Client) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """(latest online rows, every online history row, offline rows in written order)."""
    offline = client.offline_store.scan("user_spent")
    assert offline is not None
    return (
        client.online_store.get_latest("user_spent", KEYS),
        client.online_store.get_range("user_spent", KEYS, None, None),
        offline.collect(),
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The embedded runtime's stores after the whole job, run once without interruption."""
    root = tmp_path_factory.mktemp("uninterrupted")
    client = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(root / "offline"))
    client.materialize([pipe()], mode="online", write_offline=True, batch_size=50)
    want = stores(client)
    assert want[2].height > 1000
    return want


def ray_client(root: Path, parallelism: int = 2, online_store: Any = None, **runtime: Any) -> volga.Client:
    return volga.Client(online_store or MemoryOnlineStore(), ParquetOfflineStore(root / "offline"),
                        runtime=volga.RayRuntime(parallelism=parallelism, **runtime))


def start(client: volga.Client, root: Path, rate_per_s: float | None = 2500, interval: str = "200ms") -> Any:
    return client.materialize([pipe(rate_per_s)], mode="online", block=False, write_offline=True, batch_size=50,
                              checkpoint_dir=root / "checkpoints", checkpoint_interval=interval)


def wait_for_rows(job: Any, rows: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while job.running and job.metrics.rows_out.get("user_spent", 0) < rows and time.monotonic() < deadline:
        time.sleep(0.02)
    out = job.metrics.rows_out.get("user_spent", 0)
    assert rows <= out, f"the job wrote {out} rows, not {rows}, in {timeout_s} s"
    return out


def keyed_actor(job: Any) -> Any:
    stage = next(i for i, s in enumerate(job.driver.topology.stages) if s.kind == "keyed")
    return job.actors()[stage][1]


def test_killed_actors_restart_from_the_last_checkpoint_with_the_uninterrupted_stores(
    tmp_path: Path, ray_session: Any, uninterrupted: tuple[pl.DataFrame, ...]
) -> None:
    client = ray_client(tmp_path)
    job = start(client, tmp_path)
    total = uninterrupted[2].height
    for fraction in (0.3, 0.6):  # a keyed actor, then a source actor, each mid-run
        at = wait_for_rows(job, int(total * fraction))
        assert at < total and job.running, "the job finished before the actor was killed"
        assert job.metrics.checkpoints >= 1, "no checkpoint written before the kill"
        victim = keyed_actor(job) if fraction < 0.5 else job.actors()[0][0]
        ray_session.kill(victim)
        deadline = time.monotonic() + 30
        while job.restarts < (1 if fraction < 0.5 else 2) and time.monotonic() < deadline:
            time.sleep(0.02)
    job.wait(timeout=120)
    assert job.restarts == 2
    got = stores(client)
    assert got[0].equals(uninterrupted[0]), "latest online rows differ from the uninterrupted run"
    assert got[1].equals(uninterrupted[1]), "online history differs (rows lost or written twice)"
    assert got[2].equals(uninterrupted[2]), "offline rows differ from the uninterrupted run"
    assert job.metrics.rows_out["user_spent"] == total


def test_a_job_that_died_resumes_when_run_again_with_the_same_checkpoint_dir(
    tmp_path: Path, ray_session: Any, uninterrupted: tuple[pl.DataFrame, ...]
) -> None:
    client = ray_client(tmp_path, max_restarts=0)  # no restarts: the job dies with its actor
    job = start(client, tmp_path)
    wait_for_rows(job, uninterrupted[2].height // 3)
    ray_session.kill(keyed_actor(job))
    with pytest.raises(JobFailed, match=r"after 0 restart\(s\) \(max_restarts=0\)"):
        job.wait(timeout=60)
    written = client.offline_store.scan("user_spent")
    assert written is not None and 0 < written.collect().height < uninterrupted[2].height

    again = ray_client(tmp_path)  # as a new driver process: an empty memory store, restored
    with pytest.raises(KeyError, match="nothing was written"):
        again.online_store.get_range("user_spent", KEYS, None, None)
    start(again, tmp_path, rate_per_s=None).wait(timeout=120)
    got = stores(again)
    assert got[0].equals(uninterrupted[0]) and got[1].equals(uninterrupted[1]), "online store differs"
    assert got[2].equals(uninterrupted[2]), "offline rows differ"


@pytest.mark.slow  # a second driver process (~13 s)
def test_a_rerun_after_the_driver_process_was_killed_resumes_from_its_last_checkpoint(
    tmp_path: Path, ray_session: Any, uninterrupted: tuple[pl.DataFrame, ...]
) -> None:
    """The driver (a subprocess on this Ray cluster) is SIGKILLed mid-run; the same job run
    here with the same checkpoint_dir ends with the uninterrupted stores."""
    script = Path(__file__).with_name("ray_driver_job.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "RAY_AUTH_MODE": "disabled"}
    address = ray_session.get_runtime_context().gcs_address
    proc = subprocess.Popen([sys.executable, str(script), "--address", address, "--root", str(tmp_path),
                             "--orders", str(len(ORDERS))], stdout=subprocess.PIPE, text=True, env=env)
    target = uninterrupted[2].height // 2
    killed_at = None
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            words = line.split()
            if words[0] == "rows" and int(words[1]) >= target and int(words[3]) >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = int(words[1])
                break
    finally:
        proc.kill()
        proc.wait(30)
    assert killed_at is not None and killed_at < uninterrupted[2].height, "the driver finished before it was killed"
    written = ParquetOfflineStore(tmp_path / "offline").scan("user_spent")
    assert written is not None and 0 < written.collect().height < uninterrupted[2].height

    again = ray_client(tmp_path)
    start(again, tmp_path, rate_per_s=None).wait(timeout=120)
    got = stores(again)
    assert got[0].equals(uninterrupted[0]) and got[1].equals(uninterrupted[1]), "online store differs"
    assert got[2].equals(uninterrupted[2]), "offline rows differ"


def test_the_checkpoint_holds_each_stage_partition_and_other_parallelisms_are_refused(tmp_path: Path) -> None:
    client = ray_client(tmp_path)
    start(client, tmp_path, rate_per_s=None).wait(timeout=120)
    root = tmp_path / "checkpoints"
    latest = CheckpointStore(root).latest()
    assert latest is not None
    manifest = json.loads((root / f"chk-{latest.id:06d}.json").read_text())
    assert manifest["fingerprint"]["pipeline user_spent"].startswith("output of step")
    assert {p.suffix for p in (root / f"chk-{latest.id:06d}").iterdir()} == {".arrow"}
    state = latest.state
    assert state["runtime"] == "ray" and not state["initial"]
    keyed = [s for s in state["stages"].values() if s["parallelism"] == 2]
    assert len(keyed) == 1 and sorted(keyed[0]["partitions"]) == ["0", "1"]
    # the window's keys are split between the two partitions: each user on exactly one
    users = [
        set(p["operators"][step]["keys"]["buyer_id"].to_list())
        for p in keyed[0]["partitions"].values() for step in p["operators"] if "per_key" in p["operators"][step]
    ]
    assert len(users) == 2 and not users[0] & users[1] and len(users[0] | users[1]) == N_USERS
    assert state["sink"]["written"]["user_spent"] == client.get_offline("user_spent").height

    with pytest.raises(ValueError, match=r"parallelism 2 .*parallelism 3.*Rescaling keyed state on Ray is not built"):
        start(ray_client(tmp_path, parallelism=3), tmp_path)
    with pytest.raises(ValueError, match="taken by a Ray job; the embedded runtime cannot restore it"):
        volga.Client(MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "offline")).materialize(
            [pipe()], mode="online", checkpoint_dir=root)


def test_stop_takes_a_final_checkpoint_that_the_next_run_continues_from(
    tmp_path: Path, uninterrupted: tuple[pl.DataFrame, ...]
) -> None:
    client = ray_client(tmp_path)
    job = start(client, tmp_path, interval="1h")  # only the job's first and final checkpoints
    wait_for_rows(job, uninterrupted[2].height // 2)
    job.stop(timeout=60)
    assert job.metrics.checkpoints == 2
    assert client.get_offline("user_spent").height < uninterrupted[2].height
    again = ray_client(tmp_path)
    start(again, tmp_path, rate_per_s=None).wait(timeout=120)
    got = stores(again)
    assert got[1].equals(uninterrupted[1]) and got[2].equals(uninterrupted[2])


def test_max_restarts_is_checked() -> None:
    with pytest.raises(ValueError, match="max_restarts must be an int >= 0"):
        volga.RayRuntime(max_restarts=-1)
