"""Checkpoints on Ray: a killed actor restarts the job from its last checkpoint, and the
stores end exactly as an uninterrupted run leaves them (memory store, offline rows); a
rerun after the job died resumes; a job resumed at another parallelism has its keyed
state redistributed, and state that cannot be is refused clearly.

The job is the quickstart (filter -> as-of join on the user -> windows per user: join and
window state, two sources) over paced in-memory orders, so it runs long enough to be hit
mid-run; the reference is the same job run by the embedded runtime without interruption.
"""

from __future__ import annotations

import datetime
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
from tests import test_consistency as tc
from volga.errors import JobFailed
from volga.runtime.checkpoint import CheckpointStore
from volga.sources import MemorySource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore
from volga.testing.quickstart import N_USERS, order_records, quickstart

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("ray_session")]

ORDERS = order_records(3000)
T0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
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


# -- rescaling ------------------------------------------------------------------------------

CASES = [
    tc.AggCase("Count", None, "10m", 1), tc.AggCase("Sum", "v", "30m", 1), tc.AggCase("Avg", "q", "forever", 1),
    tc.AggCase("Stddev", "v", "10m", 1), tc.AggCase("Min", "v", "30m", 1), tc.AggCase("Max", "q", "forever", 1),
    tc.AggCase("First", "tag", "10m", 1), tc.AggCase("Last", "v", "forever", 1), tc.AggCase("LastN", "q", "10m", 3),
    # value ids and string order labels are numbered per partition: rebuilt when redistributed
    tc.AggCase("CountDistinct", "tag", "10m", 1), tc.AggCase("Min", "tag", "30m", 1), tc.AggCase("Max", "tag", "forever", 1),
]
EVENTS = [
    {"k": f"k{(i * 7) % 23}", "ts": T0 + datetime.timedelta(seconds=20 * (i // 3)), "v": None if i % 11 == 0 else float(i % 17),
     "q": i % 5, "tag": f"t{i % 4}"}
    for i in range(3000)
]


def aggregation_pipe(cases: list[Any], rate_per_s: float | None = None) -> Any:
    """Many window kinds over 23 keys (ties in event time), from paced in-memory events."""
    Event = tc.make_entity("Event", tc.EVENT_FIELDS, keys=["k"], timestamp="ts")
    intos = [f"{c.kind.lower()}_{c.on or 'rows'}_{i}" for i, c in enumerate(cases)]
    Out = tc.make_entity("Out", [("k", str), ("ts", datetime.datetime)] + [(i, c.annotation()) for i, c in zip(intos, cases)],
                         keys=["k"], timestamp="ts")

    @volga.source(Event)
    def events() -> volga.Source:
        return MemorySource(EVENTS, rate_per_s=rate_per_s) if rate_per_s else MemorySource(EVENTS)

    @volga.pipeline(dependencies=[events], output=Out)
    def features(events: volga.Entity) -> volga.Entity:
        return events.group_by(keys=["k"]).aggregate([c.volga(i) for i, c in zip(intos, cases)])

    return features


def all_stores(client: volga.Client, name: str, keys: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    offline = client.offline_store.scan(name)
    assert offline is not None
    return client.online_store.get_latest(name, keys), client.online_store.get_range(name, keys, None, None), offline.collect()


@pytest.mark.parametrize(("which", "new"), [("quickstart", 3), ("windows", 1), ("windows", 3)])
def test_a_job_stopped_at_parallelism_2_continues_at_another_parallelism_with_the_same_stores(
    tmp_path: Path, which: str, new: int
) -> None:
    if which == "quickstart":
        make, name, keys, key = pipe, "user_spent", KEYS, "buyer_id"
    else:
        make, name, key = (lambda rate=None: aggregation_pipe(CASES, rate)), "features", "k"
        keys = pl.DataFrame({"k": [f"k{i}" for i in range(23)]})
    embedded = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "embedded"))
    embedded.materialize([make()], mode="online", write_offline=True, batch_size=50)
    want = all_stores(embedded, name, keys)

    first = ray_client(tmp_path)
    job = first.materialize([make(2500)], mode="online", block=False, write_offline=True, batch_size=50,
                            checkpoint_dir=tmp_path / "checkpoints", checkpoint_interval="1h")
    deadline = time.monotonic() + 60
    while job.metrics.rows_out.get(name, 0) < want[2].height // 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    job.stop(timeout=60)
    assert 0 < job.metrics.rows_out[name] < want[2].height

    again = ray_client(tmp_path, parallelism=new)
    resumed = again.materialize([make()], mode="online", write_offline=True, batch_size=50,
                                checkpoint_dir=tmp_path / "checkpoints", checkpoint_interval="1h")
    assert f"x{new})" in resumed.explain()
    got = all_stores(again, name, keys)
    assert got[0].equals(want[0]), "latest rows differ after rescaling"
    assert got[1].equals(want[1]), "online history differs after rescaling"
    assert got[2].equals(want[2]), "offline rows differ after rescaling"
    # the final checkpoint has the keys on the actors the hash now routes them to: each on one
    latest = CheckpointStore(tmp_path / "checkpoints").latest()
    assert latest is not None
    keyed = next(s for s in latest.state["stages"].values()
                 if any("per_key" in op for op in s["partitions"]["0"]["operators"].values()))
    owners = [set(op["keys"][key].to_list()) for part in keyed["partitions"].values()
              for op in part["operators"].values() if "per_key" in op]
    assert len(owners) == new and sum(len(o) for o in owners) == len(set().union(*owners)) == keys.height


def test_max_restarts_is_checked() -> None:
    with pytest.raises(ValueError, match="max_restarts must be an int >= 0"):
        volga.RayRuntime(max_restarts=-1)


def test_a_changed_definition_is_refused_or_rebuilt_from_the_sources_history(tmp_path: Path) -> None:
    from volga.runtime.checkpoint import DefinitionChanged

    keys = pl.DataFrame({"k": [f"k{i}" for i in range(23)]})
    ray_client(tmp_path).materialize([aggregation_pipe(CASES[:2])], mode="online", write_offline=True, batch_size=500,
                                     checkpoint_dir=tmp_path / "c")
    changed = aggregation_pipe(CASES[:3])
    with pytest.raises(DefinitionChanged, match="was taken of a different definition"):
        ray_client(tmp_path).materialize([changed], mode="online", checkpoint_dir=tmp_path / "c")
    rebuilt = ray_client(tmp_path)
    rebuilt.materialize([changed], mode="online", write_offline=True, batch_size=500, checkpoint_dir=tmp_path / "c",
                        on_definition_change="rebuild")
    embedded = volga.Client(MemoryOnlineStore(), ParquetOfflineStore(tmp_path / "embedded"))
    embedded.materialize([aggregation_pipe(CASES[:3])], mode="online", write_offline=True, batch_size=500)
    got, want = all_stores(rebuilt, "features", keys), all_stores(embedded, "features", keys)
    assert got[1].equals(want[1]) and got[2].equals(want[2]), "the rebuilt job's stores differ from a fresh run's"


def test_a_from_pipeline_job_stopped_at_parallelism_2_continues_at_3_with_its_join_and_window_state_moved(tmp_path: Path) -> None:
    """A DataStream job made of an Entity pipeline runs the Entity API's own as-of join and
    window operators (one graph, one compiler), so their state moves between actors when the
    job resumes at another parallelism, as ``materialize``'s does."""
    from volga.stream import ListSink, StreamingContext

    def job(rate_per_s: float | None, parallelism: int | None) -> tuple[StreamingContext, ListSink]:
        runtime = volga.RayRuntime(parallelism=parallelism) if parallelism else None
        ctx, out = StreamingContext(runtime, batch_size=50), ListSink()
        ctx.from_pipeline(pipe(rate_per_s)).sink(out)
        return ctx, out

    ctx, want = job(None, None)
    ctx.execute()
    assert len(want.items) > 1000

    ctx, first = job(2500, 2)
    running = ctx.submit(checkpoint_dir=tmp_path / "checkpoints", checkpoint_interval="1h")
    deadline = time.monotonic() + 60
    while sum(running.metrics.rows_out.values()) < len(want.items) // 2 and running.running and time.monotonic() < deadline:
        time.sleep(0.02)
    running.stop(timeout=60)
    assert 0 < len(first.items) < len(want.items), f"stopped at {len(first.items)} of {len(want.items)} rows: not mid-run"

    ctx, again = job(None, 3)
    assert "join(kind='asof', how='left')" in ctx.explain()
    ctx.execute(checkpoint_dir=tmp_path / "checkpoints", checkpoint_interval="1h")
    assert again.frame().sort(pl.all()).equals(want.frame().sort(pl.all()))
