"""Checkpoints of the embedded runtime: what is written, resuming, changed definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volga.errors import JobFailed
from volga.ops.join import AsOfJoinOp
from volga.ops.window import WindowAggregateOp
from volga.runtime.checkpoint import CheckpointStore, DefinitionChanged
from volga.sources import MemorySource, Source, SourceReader
from volga.storage import MemoryOnlineStore
from volga.testing.quickstart import quickstart, wait_until

from .helpers import ORDERS, run, stores


def test_checkpoints_are_arrow_files_and_a_json_manifest_and_the_last_three_are_kept(tmp_path: Path) -> None:
    for _ in range(3):  # each run ends with a checkpoint: at least 4 in all
        client, _ = run(tmp_path)
    root = tmp_path / "checkpoints"
    manifests = sorted(p.name for p in root.glob("chk-*.json"))
    assert len(manifests) == 3 and manifests[0] != "chk-000001.json"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == [m.removesuffix(".json") for m in manifests]
    files = {p.suffix for p in (root / folders[-1]).iterdir()}
    assert files == {".arrow"}
    manifest = json.loads((root / manifests[-1]).read_text())
    assert manifest["fingerprint"]["pipeline user_spent"].startswith("output of step")
    state = CheckpointStore(root).latest()
    assert state is not None and state.id == int(manifests[-1][4:10])
    window = next(v for v in state.state["operators"].values() if "per_key" in v)
    assert window["keys"]["buyer_id"].n_unique() == window["keys"].height > 0
    assert state.state["sink"]["written"]["user_spent"] == stores(client)[0].height == 759


def test_checkpoint_keep_sets_how_many_are_kept(tmp_path: Path) -> None:
    for _ in range(3):
        client, _ = run(tmp_path, checkpoint_keep=1)
    root = tmp_path / "checkpoints"
    store = CheckpointStore(root)
    (latest,) = store.ids()
    assert latest > 3  # every run took several (one per micro-batch): only the newest is left
    assert [p.name for p in root.iterdir() if p.is_dir() and p.name != "chunks"] == [f"chk-{latest:06d}"]
    assert store.latest().state["sink"]["written"]["user_spent"] == stores(client)[0].height


def test_a_job_rerun_on_a_finished_checkpoint_writes_nothing_twice(tmp_path: Path) -> None:
    client, _ = run(tmp_path)
    first = stores(client)
    again, job = run(tmp_path)  # a new process: empty memory store, restored from the checkpoint
    offline, history = stores(again)
    assert offline.equals(first[0])
    assert history.equals(first[1])
    assert job.metrics.rows_out["user_spent"] == first[0].height


class Crash(RuntimeError):
    pass


def _crash_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the ``call``-th operator call of the next run raise (windows, joins, sink writes)."""
    seen = [0]

    def wrap(cls: Any, method: str) -> None:
        original = getattr(cls, method)

        def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
            seen[0] += 1
            if seen[0] == call:
                raise Crash(f"simulated crash at operator call {call}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, counted)

    wrap(WindowAggregateOp, "apply")
    wrap(AsOfJoinOp, "release")
    wrap(CheckpointStore, "write")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[pl.DataFrame, pl.DataFrame]:
    client, _ = run(tmp_path_factory.mktemp("uninterrupted"))
    return stores(client)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(crashes=st.lists(st.integers(min_value=1, max_value=80), min_size=1, max_size=3), interval=st.sampled_from(["0s", "50ms"]))
def test_crashes_at_random_operator_calls_then_restarts_end_with_the_uninterrupted_stores(
    tmp_path_factory: pytest.TempPathFactory, uninterrupted: tuple[pl.DataFrame, pl.DataFrame], crashes: list[int], interval: str
) -> None:
    root = tmp_path_factory.mktemp("crashing")
    for call in crashes:
        with pytest.MonkeyPatch.context() as mp:
            _crash_at(mp, call)
            try:
                run(root, checkpoint_interval=interval)
            except JobFailed as e:
                assert isinstance(e.__cause__, Crash)
    client, _ = run(root, checkpoint_interval=interval)  # the last restart runs to the end
    offline, history = stores(client)
    assert offline.equals(uninterrupted[0]), f"offline rows differ after crashes at {crashes}"
    assert history.equals(uninterrupted[1]), f"online history differs after crashes at {crashes}"


def test_a_changed_definition_is_refused_naming_what_changed(tmp_path: Path) -> None:
    run(tmp_path)
    with pytest.raises(DefinitionChanged) as err:
        run(tmp_path, pipe=quickstart_with_count_window("2h"))
    message = str(err.value)
    assert "step 4 (window): was \"aggregates (" in message
    assert "Count(on=None, window='1h'" in message and "Count(on=None, window='2h'" in message
    assert "schema" not in message  # only what differs is named
    assert "on_definition_change='rebuild'" in message


def test_rebuild_recomputes_the_changed_definition_from_the_sources_history(tmp_path: Path) -> None:
    run(tmp_path / "job")
    client, _ = run(tmp_path / "job", pipe=quickstart_with_count_window("2h"), on_definition_change="rebuild")
    fresh, _ = run(tmp_path / "fresh", pipe=quickstart_with_count_window("2h"))
    assert stores(client)[0].equals(stores(fresh)[0])
    assert stores(client)[1].equals(stores(fresh)[1])
    # and the next run resumes from the rebuilt job's checkpoints without complaint
    again, _ = run(tmp_path / "job", pipe=quickstart_with_count_window("2h"))
    assert stores(again)[1].equals(stores(fresh)[1])


def quickstart_with_count_window(window: str) -> Any:
    """The quickstart pipeline, its ``num_purchases_1h`` counted over ``window`` instead of 1h."""
    import volga.testing.quickstart as q
    from volga import Entity, pipeline, source
    from volga.api.aggregates import Avg, Count, Max

    @source(q.User)
    def user_source() -> Any:
        return MemorySource(q.USERS)

    @source(q.Order, idle_timeout="200ms")
    def order_source(online: bool = False) -> Any:
        return MemorySource(ORDERS)

    @pipeline(dependencies=[user_source, order_source], output=q.UserSpentInfo)
    def user_spent(users: Entity, orders: Entity) -> Entity:
        on_sale = orders.filter(lambda o: o["product_type"] == "ON_SALE")
        per_user = on_sale.join(users, left_on=["buyer_id"], right_on=["user_id"], how="left")
        return (
            per_user.group_by(keys=["buyer_id"])
            .aggregate(
                [
                    Avg(on="product_price", window="7d", into="avg_spent_7d"),
                    Count(window=window, into="num_purchases_1h"),
                    Max(on="product_price", window="1d", into="max_price_1d"),
                ]
            )
            .rename(columns={"purchased_at": "timestamp", "buyer_id": "user_id"})
        )

    return user_spent


class _Following(Source):
    """The orders, then nothing more: an unbounded source that has caught up."""

    @property
    def bounded(self) -> bool:
        return False

    def open(self, schema: Any, *, name: str, mode: Any = None) -> SourceReader:
        return _FollowingReader(MemorySource(ORDERS).open(schema, name=name))


class _FollowingReader(SourceReader):
    def __init__(self, inner: SourceReader) -> None:
        super().__init__()
        self.inner = inner

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        return self.inner.poll(max_rows)

    @property
    def finished(self) -> bool:
        return False


def test_stop_takes_a_final_checkpoint_and_a_restart_after_it_changes_nothing(tmp_path: Path) -> None:
    pipe = quickstart(lambda online: _Following())
    client, job = run(tmp_path, pipe=pipe, checkpoint_interval="1h", block=False, params={"online": True})
    wait_until(lambda: job.metrics.rows_out.get("user_spent", 0) == 759, what="every output row")
    job.stop()
    latest = CheckpointStore(tmp_path / "checkpoints").latest()
    assert latest is not None and latest.state["sink"]["written"]["user_spent"] == 759
    before = stores(client)

    again, job2 = run(tmp_path, pipe=pipe, checkpoint_interval="1h", block=False, params={"online": True})
    resumed_at = job2.metrics.batches  # restored from the checkpoint
    # 1500 orders re-read 60 at a time (and skipped: they were handed out before the stop)
    wait_until(lambda: job2.metrics.batches >= resumed_at + 30, what="the orders re-read and skipped")
    job2.stop()
    assert job2.metrics.rows_out["user_spent"] == 759
    assert job2.late_events("order_source").height == 0  # re-read rows were skipped, not judged late
    assert stores(again)[0].equals(before[0]) and stores(again)[1].equals(before[1])


def test_bad_checkpoint_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checkpoint_dir is for mode='online' jobs"):
        run(tmp_path, mode="offline")
    with pytest.raises(ValueError, match="on_definition_change must be 'refuse' or 'rebuild', not 'ignore'"):
        run(tmp_path, on_definition_change="ignore")
    with pytest.raises(ValueError, match="checkpoint_interval"):
        run(tmp_path, checkpoint_interval="soon")
    with pytest.raises(ValueError, match=r"materialize\(user_spent\): checkpoint_keep must be an int >= 1 .*got 0"):
        run(tmp_path, checkpoint_keep=0)

    class NoState(MemoryOnlineStore):
        snapshot = None  # type: ignore[assignment]

    with pytest.raises(TypeError, match="neither snapshots its contents nor writes sequenced rows"):
        run(tmp_path, online_store=NoState())


@pytest.mark.integration
def test_a_job_that_dies_before_its_first_periodic_checkpoint_applies_nothing_twice_to_redis(
    redis_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The job writes its starting point before it starts; the rerun resumes from it, and
    Redis (which keeps what the dead run wrote) skips the rows it applied already."""
    import uuid

    from volga.storage.online.redis import RedisOnlineStore

    def redis(namespace: str) -> RedisOnlineStore:
        return RedisOnlineStore(redis_server.url, namespace=namespace)

    namespace = f"first-checkpoint-{uuid.uuid4().hex[:8]}"
    want_client, _ = run(tmp_path / "want", online_store=redis(namespace + "-want"))
    want = stores(want_client)
    with pytest.MonkeyPatch.context() as mp:
        _crash_at(mp, 40)  # rows are in Redis by then; the next checkpoint is an hour away
        with pytest.raises(JobFailed):
            run(tmp_path / "run", online_store=redis(namespace), checkpoint_interval="1h")
    assert redis(namespace).applied_rows("user_spent") > 0, "the dead run wrote nothing to Redis: nothing to skip"
    ids = CheckpointStore(tmp_path / "run" / "checkpoints").ids()
    assert len(ids) == 1, "only the starting point was written"
    client, _ = run(tmp_path / "run", online_store=redis(namespace), checkpoint_interval="1h")
    offline, history = stores(client)
    assert history.equals(want[1]), "Redis history differs (rows applied twice)"
    assert offline.equals(want[0])


def test_sources_commit_the_positions_of_the_checkpoint_just_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a checkpoint is written, each source commits that checkpoint's position (Kafka:
    group offsets), not one it reached since: a restart from the checkpoint starts a
    partition it had not read from the committed offset, so committing ahead skips rows."""
    from volga.sources.memory import MemoryReader

    commits: list[tuple[dict[str, int] | None, list[dict[str, int]]]] = []  # (committed, positions on disk)

    def commit(self: MemoryReader, position: dict[str, int] | None = None) -> None:
        latest = CheckpointStore(tmp_path / "checkpoints").latest()
        assert latest is not None
        commits.append((position, [s["position"] for s in latest.state["sources"].values()]))

    monkeypatch.setattr(MemoryReader, "position", lambda self: {"0": self._pos})
    monkeypatch.setattr(MemoryReader, "commit", commit)
    run(tmp_path)  # a checkpoint every micro-batch boundary ("0s"), each written in the background
    orders = [position for position, _ in commits if position and position["0"] > 20]  # the 20 users are read at once
    assert len(orders) >= 5, commits
    assert all(position in on_disk for position, on_disk in commits), [c for c in commits if c[0] not in c[1]][:3]
