"""``StreamingContext.execute/submit(checkpoint_dir=...)``: a DataStream job (keyed reduce,
tumbling window, interval join) stopped, crashed or killed with SIGKILL and run again with
the same checkpoint_dir ends with the sinks of an uninterrupted run: ``ListSink``,
``FileSink`` (.jsonl and .parquet) and store sinks exactly; a callable sink gets the rows
after the last checkpoint again (at-least-once, numbered so they can be told apart)."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from volga.errors import JobFailed
from volga.runtime.checkpoint import CheckpointStore, DefinitionChanged
from volga.storage import ParquetOfflineStore
from volga.stream import CallableSink, ListSink, StreamingContext
from volga.stream import ops as stream_ops

from .ds_job import USERS, ConsumerFailed, Sinks, build, delivered

SCRIPT = Path(__file__).with_name("ds_job.py")


class Crash(RuntimeError):
    pass


def uninterrupted(root: Path, **build_options: Any) -> Sinks:
    sinks = Sinks(root)
    build(sinks, **build_options).execute()
    return sinks


def assert_same_sinks(got: Sinks, want: Sinks) -> None:
    assert got.lists() == want.lists(), "ListSink contents differ"
    assert got.jsonl.read_bytes() == want.jsonl.read_bytes(), "the .jsonl file differs"
    assert pl.read_parquet(got.parquet).equals(pl.read_parquet(want.parquet)), "the .parquet file differs"
    assert got.store_rows().equals(want.store_rows()), "online store rows differ"
    assert got.offline_rows().equals(want.offline_rows()), "offline store rows differ"


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Sinks:
    want = uninterrupted(tmp_path_factory.mktemp("ds-reference"))
    assert {k: len(v) for k, v in want.lists().items()} == {"reduced": 400, "windows": 280, "joined": 166}
    return want


def test_a_job_stopped_mid_run_and_run_again_ends_with_the_uninterrupted_sinks(tmp_path: Path, reference: Sinks) -> None:
    checkpoints = tmp_path / "checkpoints"
    first = Sinks(tmp_path)
    job = build(first, period="3ms").submit(checkpoint_dir=checkpoints, checkpoint_interval="50ms")
    deadline = time.monotonic() + 30
    while delivered(job) < 600 and job.running and time.monotonic() < deadline:
        time.sleep(0.005)
    job.stop()  # a final checkpoint
    assert 0 < len(first.reduced) < 400, f"stopped at {len(first.reduced)} of 400 reduced rows: not mid-run"
    assert job.metrics.checkpoints >= 2  # periodic ones, then the final one
    final = CheckpointStore(checkpoints).latest()
    assert final is not None and final.state["sink"]["delivered"]["sink0"] == len(first.reduced)  # taken at the stop

    # a new process would build new sinks: new lists and a new (empty) in-memory store
    again = Sinks(tmp_path)
    job = build(again, period="1ms").execute(checkpoint_dir=checkpoints, checkpoint_interval="50ms")
    assert len(again.reduced) == 400
    assert_same_sinks(again, reference)


def _crash_at_join_call(mp: pytest.MonkeyPatch, call: int) -> None:
    seen = [0]
    original = stream_ops.IntervalJoinOp.release

    def release(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen[0] += 1
        if seen[0] == call:
            raise Crash(f"crash at interval-join call {call}")
        return original(self, *args, **kwargs)

    mp.setattr(stream_ops.IntervalJoinOp, "release", release)


@pytest.mark.parametrize("call", [3, 11, 25])
def test_a_crashed_job_run_again_in_the_same_process_ends_with_the_uninterrupted_sinks(
    tmp_path: Path, reference: Sinks, call: int
) -> None:
    """The same store object and files: rows written after the last checkpoint are cut back
    (the file, the offline table) or replaced (the in-memory store's snapshot)."""
    checkpoints = tmp_path / "checkpoints"
    first = Sinks(tmp_path)
    with pytest.MonkeyPatch.context() as mp:
        _crash_at_join_call(mp, call)
        with pytest.raises(JobFailed) as failed:
            build(first).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    assert isinstance(failed.value.__cause__, Crash)
    assert 0 < len(first.reduced) < 400

    again = Sinks(tmp_path, online=first.online)
    build(again).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    assert_same_sinks(again, reference)


def test_a_callable_sink_gets_the_rows_after_the_last_checkpoint_again_numbered(tmp_path: Path, reference: Sinks) -> None:
    """At-least-once, as documented: a callable cannot be rolled back. A resumed job gives
    the replayed rows the numbers they had, so dropping the numbers seen already leaves
    exactly the uninterrupted run's rows. The other sinks had written the failed batch's
    rows before the callable raised: they are cut back, and end exactly-once."""
    want = Sinks(tmp_path / "want")
    build(want, callable_sink=True).execute()
    assert [n for n, _ in want.seen] == list(range(166))

    checkpoints = tmp_path / "checkpoints"
    sinks = Sinks(tmp_path / "run", fail_at=101)
    with pytest.raises(JobFailed) as failed:
        build(sinks, callable_sink=True).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    assert isinstance(failed.value.__cause__, ConsumerFailed)
    latest = CheckpointStore(checkpoints).latest()
    assert latest is not None
    resumed_from = latest.state["sink"]["delivered"]["sink7"]  # the callable: the job's 8th sink
    assert resumed_from < 101, "no row was delivered after the last checkpoint: nothing to replay"

    assert latest.state["sink"]["sinks"]["sink6"]["bytes"] < sinks.jsonl.stat().st_size  # the file went past the checkpoint

    build(sinks, callable_sink=True).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    assert_same_sinks(sinks, reference)
    numbers = [n for n, _ in sinks.seen]
    assert numbers == list(range(101)) + list(range(resumed_from, 166)), "rows after the checkpoint are delivered again"
    assert dict(sinks.seen) == dict(want.seen)  # deduplicated by number: the uninterrupted rows


def test_a_changed_job_is_refused_naming_what_changed(tmp_path: Path) -> None:
    checkpoints = tmp_path / "checkpoints"
    build(Sinks(tmp_path)).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    with pytest.raises(DefinitionChanged, match=r"operator 3 \(window\(TumblingWindow\('30s'\)\).*was \"window\(TumblingWindow\('20s'\)\)") as refused:
        build(Sinks(tmp_path), window="30s").execute(checkpoint_dir=checkpoints)
    assert "on_definition_change='rebuild'" in str(refused.value)

    # the same operators, another function body: its accumulators would mean something else
    def keep_max(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
        return {"user": a["user"], "t": b["t"], "v": max(a["v"], b["v"])}

    with pytest.raises(DefinitionChanged, match=r"operator 2 \(reduce\(keep_max\)\): was 'reduce\(<lambda>\); code \w+', now 'reduce\(keep_max\); code \w+'"):
        build(Sinks(tmp_path), combine=keep_max).execute(checkpoint_dir=checkpoints)

    # a sink of another kind: its checkpointed position would mean nothing to it
    ctx = build(Sinks(tmp_path))
    ctx._sinks[0] = dataclasses.replace(ctx._sinks[0], sink=CallableSink(print))
    with pytest.raises(DefinitionChanged, match=r"sink sink0 \(CallableSink print\): was 'ListSink', now 'CallableSink print'"):
        ctx.execute(checkpoint_dir=checkpoints)


def test_rebuild_drops_the_sinks_outputs_and_reruns_the_changed_job_from_its_sources(tmp_path: Path) -> None:
    want = uninterrupted(tmp_path / "want", window="30s")
    checkpoints = tmp_path / "checkpoints"
    sinks = Sinks(tmp_path / "run")
    build(sinks).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    build(sinks, window="30s").execute(checkpoint_dir=checkpoints, on_definition_change="rebuild")
    assert_same_sinks(sinks, want)


def test_checkpoint_keep_sets_how_many_are_kept(tmp_path: Path) -> None:
    runs = []
    for _ in range(2):
        ctx, out = StreamingContext(), ListSink()
        ctx.from_collection(list(range(20))).key_by(lambda x: x % 3).reduce(lambda a, b: a + b).sink(out)
        ctx.execute(checkpoint_dir=tmp_path / "c", checkpoint_interval="0s", checkpoint_keep=2)
        runs.append(out.items)
    store = CheckpointStore(tmp_path / "c")
    assert len(store.ids()) == 2 and store.ids()[-1] >= 4  # a start and an end per run at least
    assert runs[1] == runs[0] and len(runs[0]) == 20  # the second run resumed the finished one


def test_bad_checkpoint_arguments_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="execute\\(\\): checkpoint_dir is for mode='streaming'"):
        build(Sinks(tmp_path)).execute(mode="batch", checkpoint_dir=tmp_path / "c")
    with pytest.raises(ValueError, match="submit\\(\\): on_definition_change must be 'refuse' or 'rebuild', not 'keep'"):
        build(Sinks(tmp_path)).submit(checkpoint_dir=tmp_path / "c", on_definition_change="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="checkpoint_interval"):
        build(Sinks(tmp_path)).execute(checkpoint_dir=tmp_path / "c", checkpoint_interval="soon")
    with pytest.raises(ValueError, match="submit\\(\\): checkpoint_keep must be an int >= 1"):
        build(Sinks(tmp_path)).submit(checkpoint_dir=tmp_path / "c", checkpoint_keep=0)
    ctx = StreamingContext()
    ctx.from_collection([{"k": "a", "v": 1}]).key_by("k").sink(_NotCheckpointable(), name="f")
    with pytest.raises(TypeError, match="checkpoint_dir: the online store .* neither snapshots"):
        ctx.execute(checkpoint_dir=tmp_path / "d")


def test_a_shared_store_sink_or_a_sink_of_streams_with_other_columns_is_refused_with_checkpoints(tmp_path: Path) -> None:
    from volga.storage import MemoryOnlineStore
    from volga.stream import StoreSink

    ctx, shared = StreamingContext(), StoreSink(MemoryOnlineStore(), "both")
    ctx.from_collection([{"k": "a", "v": 1}], name="one").key_by("k").sink(shared)
    ctx.from_collection([{"k": "b", "v": 2}], name="two").key_by("k").sink(shared)
    with pytest.raises(ValueError, match=r"StoreSink MemoryOnlineStore\[both\] is the sink of several streams \(sink0, sink1\)"):
        ctx.execute(checkpoint_dir=tmp_path)

    ctx, shared_list = StreamingContext(), ListSink()
    ctx.from_collection([1, 2], name="values").sink(shared_list)
    ctx.from_collection([{"k": "b", "v": 2}], name="records").sink(shared_list)
    with pytest.raises(ValueError, match=r"ListSink is the sink of streams with different columns \(sink0: \['value'"):
        ctx.execute(checkpoint_dir=tmp_path / "lists")


def test_sinks_say_what_they_guarantee_and_a_numbered_batch_sink_gets_each_batch_first_row_number() -> None:
    from volga.storage import MemoryOnlineStore
    from volga.stream import BatchSink, FileSink, ListSink, StoreSink

    exactly = [ListSink(), FileSink("x.jsonl"), StoreSink(MemoryOnlineStore(), "f")]
    assert {s.guarantee for s in exactly} == {"exactly-once"}
    assert {CallableSink(print).guarantee, BatchSink(print).guarantee} == {"at-least-once"}

    batches: list[tuple[int, int]] = []
    ctx = StreamingContext(batch_size=7)
    ctx.from_collection(list(range(30))).sink(BatchSink(lambda frame, first: batches.append((first, frame.height)), numbered=True))
    ctx.execute()
    assert [first for first, _ in batches] == [sum(n for _, n in batches[:i]) for i in range(len(batches))]
    assert sum(n for _, n in batches) == 30 and len(batches) > 1


class _NotCheckpointable:
    """An online store that can neither snapshot its rows nor write sequenced ones."""

    def write(self, *args: Any, **kwargs: Any) -> None:
        pass

    def get_latest(self, *args: Any) -> None:
        pass


# -- SIGKILL ------------------------------------------------------------------------------

def _start(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    return subprocess.Popen([sys.executable, str(SCRIPT), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen[str]) -> str:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the job did not finish in 60 s: {out[-1000:]!r} {err[-2000:]!r}") from None
    assert proc.returncode == 0, err[-3000:]
    return out


def _kill_at(proc: subprocess.Popen[str], target: int, *, mid_checkpoint: bool) -> int | None:
    """SIGKILL ``proc`` once it has delivered ``target`` rows (with ``mid_checkpoint``, at
    its next checkpoint, between data files and manifest); the count it reported last, or
    None if it finished first."""
    assert proc.stdout is not None
    progress, armed = 0, False
    for line in proc.stdout:
        word, _, number = line.strip().partition(" ")
        if word == "rows":
            progress = int(number)
            armed = armed or progress >= target
        if armed and (not mid_checkpoint or word == "checkpointing"):
            proc.send_signal(signal.SIGKILL)
            return progress
    return None


def _outputs(root: Path) -> tuple[Any, ...]:
    offline = ParquetOfflineStore(root / "offline").scan("totals")
    return (
        json.loads((root / "lists.json").read_text()),
        pl.read_parquet(root / "store.parquet"),
        (root / "joined.jsonl").read_bytes(),
        pl.read_parquet(root / "windows.parquet"),
        None if offline is None else offline.collect(),
    )


def test_sigkill_at_random_points_then_run_again_ends_with_the_uninterrupted_sinks(tmp_path: Path) -> None:
    """A subprocess runs the job (paced sources, a checkpoint every 50 ms) and is killed
    with SIGKILL 8 times, every third time mid-checkpoint; the run after that ends with the
    sinks of an uninterrupted subprocess run: its lists and in-memory store (restored from
    the checkpoint), the files and the offline table (cut back, then appended)."""
    _finish(_start(["--root", str(tmp_path / "reference")]))
    want = _outputs(tmp_path / "reference")
    assert {k: len(v) for k, v in want[0].items()} == {"reduced": 400, "windows": 280, "joined": 166}
    total = 400 * 2 + 280 * 3 + 166 * 2  # rows delivered over every sink (2 reduced, 3 window, 2 join sinks)

    root = tmp_path / "killed"
    args = ["--root", str(root), "--checkpoint_dir", str(root / "checkpoints")]
    rng = random.Random(13)
    kills = mid = 0
    for target in sorted(rng.sample(range(1, total - 200), 8)):
        during_checkpoint = kills % 3 == 0
        proc = _start([*args, "--pause", "0.05"] if during_checkpoint else args)
        try:
            reached = _kill_at(proc, target, mid_checkpoint=during_checkpoint)
        finally:
            proc.kill()
            proc.wait(30)
        if reached is None:
            break
        kills += 1
        mid += during_checkpoint
    assert (kills, mid) == (8, 3), f"only {kills} kills ({mid} mid-checkpoint): the job finished too early"
    assert len(CheckpointStore(root / "checkpoints").ids()) >= 1

    _finish(_start(args))
    got = _outputs(root)
    assert got[0] == want[0], "ListSink contents differ"
    assert got[1].equals(want[1]), "online store rows differ"
    assert got[2] == want[2], "the .jsonl file differs"
    assert got[3].equals(want[3]), "the .parquet file differs"
    assert got[4] is not None and want[4] is not None and got[4].equals(want[4]), "offline store rows differ"


@pytest.mark.integration
@pytest.mark.parametrize("fail_at", [41, 101, 150])
def test_a_store_sink_into_redis_skips_the_replayed_rows_it_applied_already(
    redis_server: Any, tmp_path: Path, unique: str, fail_at: int
) -> None:
    """Redis is not restored from the checkpoint: it keeps what the failed run wrote, and
    the resumed job's sequenced writes skip the rows it applied already."""
    from volga.storage.online.redis import RedisOnlineStore

    def redis(namespace: str) -> RedisOnlineStore:
        return RedisOnlineStore(redis_server.url, namespace=namespace)

    want = Sinks(tmp_path / "want", online=redis(f"{unique}-want"))
    build(want, callable_sink=True).execute()

    checkpoints = tmp_path / "checkpoints"
    sinks = Sinks(tmp_path / "run", online=redis(unique), fail_at=fail_at)
    with pytest.raises(JobFailed):
        build(sinks, callable_sink=True).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    latest = CheckpointStore(checkpoints).latest()
    assert latest is not None
    applied = sinks.online.applied_rows("windows")
    assert applied > latest.state["sink"]["delivered"]["sink3"], "Redis has no row after the checkpoint: nothing to skip"

    again = Sinks(tmp_path / "run", online=redis(unique))  # a new process: a new connection, a new list
    build(again, callable_sink=True).execute(checkpoint_dir=checkpoints, checkpoint_interval="0s")
    assert again.store_rows().equals(want.store_rows()), "Redis history differs (rows lost or applied twice)"
    assert again.online.get_latest("windows", USERS).equals(want.online.get_latest("windows", USERS))
    assert again.lists() == want.lists()


# -- Ray ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """A small local Ray session (as tests/ray's), with the job's module shipped by value."""
    import ray

    from . import ds_job

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    ray.cloudpickle.register_pickle_by_value(ds_job)  # workers cannot import tests
    try:
        yield ray
    finally:
        from volga.runtime.ray.runtime import RayRuntime

        RayRuntime.shutdown()
        ray.shutdown()


@pytest.mark.ray
def test_on_ray_a_job_stopped_mid_run_and_run_again_ends_with_the_uninterrupted_sinks(
    ray_session: Any, tmp_path: Path, reference: Sinks
) -> None:
    from volga.runtime.ray.runtime import RayRuntime

    def on_ray(sinks: Sinks) -> StreamingContext:
        ctx = build(sinks, period="3ms")
        ctx.runtime = RayRuntime(parallelism=2)
        return ctx

    checkpoints = tmp_path / "checkpoints"
    first = Sinks(tmp_path)
    job = on_ray(first).submit(checkpoint_dir=checkpoints, checkpoint_interval="100ms")
    deadline = time.monotonic() + 60
    while delivered(job) < 600 and job.running and time.monotonic() < deadline:
        time.sleep(0.01)
    job.stop()
    assert 0 < len(first.reduced) < 400, f"stopped at {len(first.reduced)} of 400 reduced rows: not mid-run"

    again = Sinks(tmp_path)
    on_ray(again).execute(checkpoint_dir=checkpoints, checkpoint_interval="100ms")
    assert_same_sinks(again, reference)


@pytest.mark.ray
def test_on_ray_a_killed_keyed_actor_restarts_the_job_from_its_checkpoint_with_the_uninterrupted_sinks(
    ray_session: Any, tmp_path: Path, reference: Sinks
) -> None:
    """The sinks of the running job are restored in place: the lists reset to the
    checkpoint's contents, the file cut back, the stores restored or cut back."""
    from volga.runtime.ray.runtime import RayRuntime

    sinks = Sinks(tmp_path)
    ctx = build(sinks, period="3ms")
    ctx.runtime = RayRuntime(parallelism=2)
    job = ctx.submit(checkpoint_dir=tmp_path / "checkpoints", checkpoint_interval="100ms")
    deadline = time.monotonic() + 60
    while delivered(job) < 600 and job.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.running and len(sinks.reduced) < 400 and job.metrics.checkpoints >= 1, "the job finished before the kill"
    ray_job = job.job
    keyed = next(i for i, s in enumerate(ray_job.driver.topology.stages) if s.kind == "keyed")
    ray_session.kill(ray_job.actors()[keyed][1])
    job.wait(timeout=120)
    assert ray_job.restarts == 1
    assert_same_sinks(sinks, reference)


@pytest.mark.ray
def test_on_ray_a_job_resumed_at_another_parallelism_moves_its_keyed_state(
    ray_session: Any, tmp_path: Path, reference: Sinks
) -> None:
    """Reduce and tumbling-window state stopped on 2 actors continues on 3 (and a job
    with an interval join, whose state does not move, is refused naming the join)."""
    from volga.runtime.ray.runtime import RayRuntime

    def on_ray(sinks: Sinks, parallelism: int, join: bool = False) -> StreamingContext:
        ctx = build(sinks, period="3ms", join=join)
        ctx.runtime = RayRuntime(parallelism=parallelism)
        return ctx

    checkpoints = tmp_path / "checkpoints"
    first = Sinks(tmp_path)
    job = on_ray(first, 2).submit(checkpoint_dir=checkpoints, checkpoint_interval="100ms")
    deadline = time.monotonic() + 60
    while delivered(job) < 300 and job.running and time.monotonic() < deadline:
        time.sleep(0.01)
    job.stop()
    assert 0 < len(first.reduced) < 400, f"stopped at {len(first.reduced)} of 400 reduced rows: not mid-run"

    again = Sinks(tmp_path)
    on_ray(again, 3).execute(checkpoint_dir=checkpoints, checkpoint_interval="100ms")
    assert again.lists()["reduced"] == reference.lists()["reduced"]
    assert again.lists()["windows"] == reference.lists()["windows"]
    assert pl.read_parquet(again.parquet).equals(pl.read_parquet(reference.parquet))
    assert again.store_rows().equals(reference.store_rows()) and again.offline_rows().equals(reference.offline_rows())

    joined = tmp_path / "joined"
    joined.mkdir()
    on_ray(Sinks(joined), 2, join=True).execute(checkpoint_dir=joined / "checkpoints", checkpoint_interval="1h")
    with pytest.raises(ValueError, match=r"parallelism 2.*parallelism 3.*join"):
        on_ray(Sinks(joined), 3, join=True).execute(checkpoint_dir=joined / "checkpoints")
