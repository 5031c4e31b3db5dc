"""A request-time pipeline (windows served as of the request time) under checkpoints: after
crashes and restarts, the online store answers as an uninterrupted run's does."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import pytest

import volga
from volga import Count, Entity, Sum, entity, field, pipeline, source
from volga.errors import JobFailed
from volga.ops.window import WindowAggregateOp
from volga.sources import MemorySource
from volga.storage import MemoryOnlineStore, ParquetOfflineStore

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)


@entity
class Swipe:
    card: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float


@entity
class Velocity:
    card: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    cnt_10m: int
    sum_1h: float


EVENTS = [{"card": f"c{i % 4}", "at": T0 + datetime.timedelta(minutes=i), "amount": float(i % 9)} for i in range(400)]


def velocity() -> Any:
    @source(Swipe)
    def swipes() -> volga.Source:
        return MemorySource(EVENTS)

    @pipeline(dependencies=[swipes], output=Velocity)
    def velocity(s: Entity) -> Entity:
        return s.group_by(keys=["card"]).aggregate([Count(window="10m", into="cnt_10m"), Sum(on="amount", window="1h", into="sum_1h")])

    return velocity


def run(root: Path) -> volga.Client:
    client = volga.Client(MemoryOnlineStore(history=5), ParquetOfflineStore(root / "offline"))
    client.materialize([velocity()], mode="online", batch_size=17, checkpoint_dir=root / "ckpt", checkpoint_interval="0s")
    return client


def answers(client: volga.Client) -> list[Any]:
    keys = [{"card": f"c{i}"} for i in range(4)]
    return [
        [(r.cnt_10m, r.sum_1h, r.at) for r in client.get_latest("velocity", keys, at=T0 + datetime.timedelta(minutes=m))]
        for m in (400, 405, 410, 430, 460)
    ]


def test_request_time_answers_survive_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    want = answers(run(tmp_path / "uninterrupted"))
    root = tmp_path / "crashing"
    for crash_at in (5, 9, 3):
        seen = [0]
        original = WindowAggregateOp.apply

        def apply(self: Any, batch: Any, __original: Any = original, __seen: list[int] = seen, __at: int = crash_at) -> Any:
            __seen[0] += 1
            if __seen[0] == __at:
                raise RuntimeError("simulated crash")
            return __original(self, batch)

        with monkeypatch.context() as mp:
            mp.setattr(WindowAggregateOp, "apply", apply)
            with pytest.raises(JobFailed):
                run(root)
    assert answers(run(root)) == want
