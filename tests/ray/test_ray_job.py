"""Jobs on Ray: the stage split, backpressure under a slow sink, a killed actor, stop()."""

from __future__ import annotations

import datetime
import time
from typing import Any

import polars as pl
import pytest

import volga
from tests import test_consistency as tc
from volga import Count, Entity, Sum, entity, field, pipeline, source
from volga.errors import JobFailed
from volga.plan.compile import compile_plan
from volga.runtime.local.executors import StreamOptions
from volga.runtime.ray.exchange import split_by_key
from volga.runtime.ray.topology import split_plan
from volga.sources import MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


@entity
class Click:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: int


@entity
class Spend:
    user: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    clicks_1h: int
    spent_1h: int


def clicks(n: int) -> list[dict[str, Any]]:
    return [{"user": f"u{i % 37}", "at": T0 + datetime.timedelta(seconds=i), "amount": i % 11} for i in range(n)]


def spend_pipeline(rows: list[dict[str, Any]], *, rate_per_s: float | None = None) -> Any:
    @source(Click)
    def click_source() -> volga.Source:
        return MemorySource(rows, rate_per_s=rate_per_s) if rate_per_s else MemorySource(rows)

    @pipeline(dependencies=[click_source], output=Spend)
    def spend(click_source: Entity) -> Entity:
        return click_source.group_by(keys=["user"]).aggregate(
            [Count(window="1h", into="clicks_1h"), Sum(on="amount", window="1h", into="spent_1h")]
        )

    return spend


# ------------------------------------------------------------------ without Ray


def test_quickstart_shape_is_one_keyed_stage() -> None:
    """join on the user id, then group by the same id: co-partitioned, one hop per row."""
    orders = [{"buyer_id": "u1", "purchased_at": tc.at(1), "price": 5.0, "note": None}]
    users = [{"user_id": "u1", "registered_at": tc.at(0), "tier": 1, "note": None}]
    pipe, _ = tc.join_pipeline(users, orders, tc.JoinCase(1.0, True, "left", True, "5m"))
    topology = split_plan(compile_plan([pipe]), 3)
    kinds = [(s.kind, s.parallelism, len(s.inputs)) for s in topology.stages]
    assert kinds == [("source", 1, 0), ("source", 1, 0), ("keyed", 3, 2)], topology.explain()


def test_group_by_another_key_starts_a_new_stage() -> None:
    pipe, _ = tc.aggregation_pipeline([], [tc.AggCase("Count", None, "5m", 1)], keys=("tag",))
    topology = split_plan(compile_plan([pipe]), 2)
    assert [s.partition for s in topology.stages] == [None, ("tag",)], topology.explain()


def test_a_worker_freezes_the_heap_while_it_runs_a_stage() -> None:
    """As an embedded job does (``volga.runtime.heap``): full collections skip the objects
    alive when the worker was configured, until it is reset (configured twice: one freeze)."""
    import gc

    from volga.runtime.ray.actor import StageWorker

    pipe, _ = tc.aggregation_pipeline([], [tc.AggCase("Count", None, "5m", 1)], keys=("tag",))
    topology = split_plan(compile_plan([pipe]), 2)
    before = gc.get_freeze_count()  # 0 unless a job another test left running still runs
    worker = StageWorker()
    worker.configure(topology, 1, 0, "online", {}, None, 1)
    assert gc.get_freeze_count() > before
    worker.configure(topology, 1, 1, "online", {}, None, 1)
    assert gc.get_freeze_count() > before
    worker.reset()
    assert gc.get_freeze_count() == before


def test_routing_is_stable_and_keeps_order() -> None:
    rows = pl.DataFrame({"user": [f"u{i % 5}" for i in range(50)], "i": list(range(50))})
    parts = split_by_key(rows, ["user"], 3)
    assert sorted(sum((p["i"].to_list() for p in parts), [])) == list(range(50))
    for part in parts:
        assert part["i"].is_sorted()
    again = split_by_key(rows.rename({"user": "other_name"}), ["other_name"], 3)
    assert [p["i"].to_list() for p in parts] == [p["i"].to_list() for p in again]


# ------------------------------------------------------------------ on Ray


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_slow_sink_bounds_what_is_in_flight_and_loses_nothing() -> None:
    """A sink that takes 5 ms a batch: the source is slowed down to it. Rows read but not
    yet written stay under what the bounded edges and the output queue can hold."""
    from volga.runtime.ray.runtime import _OUTBOX_ITEMS

    rows, batch, p, in_flight = clicks(6000), 50, 2, 1
    pipe = spend_pipeline(rows)
    written: list[pl.DataFrame] = []

    def slow_sink(name: str, out: pl.DataFrame) -> None:
        time.sleep(0.005)
        written.append(out)

    runtime = volga.RayRuntime(parallelism=p, max_in_flight=in_flight)
    job = runtime.start(compile_plan([pipe]), "online", None, slow_sink, block=False, options=StreamOptions(batch_size=batch))
    gaps = []
    while job.running:
        read = job.stage_stats()[0].rows_in
        gaps.append(read - sum(w.height for w in written))
        time.sleep(0.05)
    job.wait()
    # per keyed actor: in_flight queued + 1 running + 1 blocked output; the queue; the driver's batch in hand
    bound = (p * (in_flight + 2) + _OUTBOX_ITEMS + 2) * batch
    assert max(gaps) <= bound < len(rows) / 2, (max(gaps), bound)
    embedded = volga.Client(offline_store=volga.ParquetOfflineStore(tc.tempfile.mkdtemp()))
    embedded.materialize([pipe], mode="offline")
    want = embedded.get_offline(pipe.name)
    got = pl.concat(written).select(want.columns)  # sinks also get the hidden request-time columns
    assert got.equals(want), "Ray output under backpressure differs from the embedded batch run"


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_killed_worker_fails_the_job_clearly(ray_session: Any) -> None:
    pipe = spend_pipeline(clicks(100_000), rate_per_s=2000)
    client = volga.Client(runtime=volga.RayRuntime(parallelism=2))
    job = client.materialize([pipe], mode="online", block=False, batch_size=100)
    deadline = time.time() + 30
    while job.metrics.rows_out.get("spend", 0) < 200 and time.time() < deadline:
        time.sleep(0.05)
    assert job.metrics.rows_out.get("spend", 0) >= 200, "the job never produced output"
    ray_session.kill(job.actors()[1][0])
    with pytest.raises(JobFailed, match=r"stage 1 \(keyed by \['user'\], x2\).*actor 0|ActorDied|actor died") as failed:
        job.wait(timeout=30)
    assert "stage" in str(failed.value)
    assert not job.running


@pytest.mark.ray
@pytest.mark.usefixtures("ray_session")
def test_stop_flushes_what_was_read_and_releases_the_actors() -> None:
    rows = clicks(100_000)
    pipe = spend_pipeline(rows, rate_per_s=2000)
    client = volga.Client(runtime=volga.RayRuntime(parallelism=2))
    job = client.materialize([pipe], mode="online", block=False, batch_size=100, write_offline=True)
    deadline = time.time() + 30
    while job.metrics.rows_out.get("spend", 0) < 200 and time.time() < deadline:
        time.sleep(0.05)
    job.stop(timeout=30)
    read = job.metrics.rows_in["click_source"]
    stored = client.get_offline("spend")
    assert 0 < read < len(rows)
    assert stored.height == read, "stop() must write every row the sources handed out"
    embedded = volga.Client(offline_store=volga.ParquetOfflineStore(tc.tempfile.mkdtemp()))
    embedded.materialize([spend_pipeline(rows[:read])], mode="offline")
    assert stored.equals(embedded.get_offline("spend"))
    stats = job.stage_stats()
    assert [s.rows_in for s in stats] == [read, read] and all(s.lag_s == 0 for s in stats), stats


def test_missing_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_ray(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    monkeypatch.delitem(__import__("sys").modules, "ray", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'volga\[ray\]'"):
        volga.RayRuntime(parallelism=2)


def test_bad_parallelism_is_refused() -> None:
    with pytest.raises(ValueError, match="parallelism must be a positive int"):
        volga.RayRuntime(parallelism=0)


def test_importing_volga_does_not_import_ray() -> None:
    import subprocess
    import sys

    code = "import sys, volga; volga.RayRuntime; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

