"""The stores' side of a checkpointed online job: exactly-once effect on the stores.

A checkpointed job numbers each pipeline's output rows (the numbering is the same when a
restored job replays rows after its checkpoint). The checkpoint records how many rows
were written; on restore:

* an online store that snapshots its contents (the in-memory store) gets them back;
* an online store with sequenced writes (Redis: ``applied_rows``/``write_at``) keeps what
  it has: rows it already applied are skipped when replayed, by their numbers;
* the offline store (``write_offline=True``) is cut back to the rows written at the
  checkpoint, and replayed rows are appended again.

So the stores end as an uninterrupted run leaves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import polars as pl

from volga.api.entity import Schema
from volga.storage.offline.base import OfflineStore
from volga.storage.online.base import OnlineStore

__all__ = ["CheckpointedSink", "check_checkpointable"]


@runtime_checkable
class SnapshotStore(Protocol):
    def snapshot(self, names: Any) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class SequencedStore(Protocol):
    def applied_rows(self, name: str) -> int: ...

    def write_at(self, name: str, schema: Schema, batch: pl.DataFrame, first_row: int, *, retain_us: int | None = None) -> None: ...

    def reset_applied(self, name: str) -> None: ...


def check_checkpointable(store: OnlineStore) -> None:
    """Raise a clear error for an online store a checkpointed job cannot keep exactly-once."""
    if not isinstance(store, (SnapshotStore, SequencedStore)):
        raise TypeError(
            f"checkpoint_dir: the online store {store!r} neither snapshots its contents nor writes sequenced rows; "
            "checkpointed jobs support MemoryOnlineStore and RedisOnlineStore"
        )


class CheckpointedSink:
    """``sink(pipeline, rows)`` for a checkpointed online job, with its checkpoint state."""

    def __init__(
        self,
        online: OnlineStore,
        offline: OfflineStore | None,
        schemas: Mapping[str, Schema],
        retain_us: Mapping[str, int | None] | None = None,
    ) -> None:
        check_checkpointable(online)
        self.online, self.offline, self.schemas = online, offline, dict(schemas)
        self.retain = dict(retain_us or {})  # request-time pipelines: history kept by time
        self.written = dict.fromkeys(self.schemas, 0)

    def __call__(self, name: str, rows: pl.DataFrame) -> None:
        schema, first = self.schemas[name], self.written[name]
        if isinstance(self.online, SequencedStore):
            self.online.write_at(name, schema, rows, first, retain_us=self.retain.get(name))
        else:
            self.online.write(name, schema, rows, retain_us=self.retain.get(name))
        if self.offline is not None:
            self.offline.append(name, schema, rows)
        self.written[name] = first + rows.height

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"written": dict(self.written)}
        if isinstance(self.online, SnapshotStore):
            state["online"] = self.online.snapshot(list(self.schemas))
        return state

    def restore(self, state: dict[str, Any]) -> None:
        self.written.update(state["written"])
        if isinstance(self.online, SnapshotStore):
            self.online.restore(state.get("online", {}))
        if self.offline is not None:
            for name, schema in self.schemas.items():
                stored = self.offline.scan(name)
                kept = stored.head(self.written[name]).collect() if stored is not None else pl.DataFrame(schema=schema.polars_schema())
                self.offline.replace(name, schema, kept)

    def start_fresh(self) -> None:
        """No checkpoint to resume: the offline rows restart empty, row numbers from 0."""
        for name, schema in self.schemas.items():
            if isinstance(self.online, SequencedStore):
                self.online.reset_applied(name)
            if self.offline is not None:
                self.offline.replace(name, schema, pl.DataFrame(schema=schema.polars_schema()))

    def reset(self) -> None:
        """Outputs dropped (rebuilding from the sources' history writes them again)."""
        for name, schema in self.schemas.items():
            self.online.clear(name)
            if self.offline is not None:
                self.offline.replace(name, schema, pl.DataFrame(schema=schema.polars_schema()))
            self.written[name] = 0
