"""``ChainSource``: read one source to its end, then the next (history, then live).

The usual way to start a streaming job with warm window state: replay recorded history
(Parquet, a topic from offset 0) through the streaming engine, then follow live events.

>>> ChainSource([]).bounded
True
"""

import dataclasses
from collections.abc import Sequence

import polars as pl

from volga.api.entity import Schema
from volga.sources.base import Source, SourceMode, SourceReader


class ChainReader(SourceReader):
    def __init__(self, sources: Sequence[Source], schema: Schema, name: str, mode: SourceMode | None) -> None:
        super().__init__()
        self._pending = list(sources)
        self._schema, self._name, self._mode = schema, name, mode
        self._current: SourceReader | None = None
        self._advance()

    def _advance(self) -> None:
        while self._current is None or self._current.finished:
            if self._current is not None:
                self.rejected.extend(self._current.drain_rejected())
                self._current.close()
                self._current = None
            if not self._pending:
                return
            self._current = self._pending.pop(0).open(self._schema, name=self._name, mode=self._mode)

    def poll(self, max_rows: int) -> pl.DataFrame | None:
        if self._current is None:
            return None
        batch = self._current.poll(max_rows)
        self.entered_at = self._current.entered_at
        self.rejected.extend(self._current.drain_rejected())
        if batch is not None:
            self.rows_read += batch.height
        self._advance()
        return batch

    @property
    def finished(self) -> bool:
        return self._current is None

    def commit(self, position: dict[str, int] | None = None) -> None:
        if self._current is not None:
            self._current.commit(position)

    def close(self) -> None:
        if self._current is not None:
            self._current.close()


@dataclasses.dataclass(frozen=True, eq=False)
class ChainSource(Source):
    """Sources read one after another; bounded only if every part is."""

    sources: Sequence[Source]

    @property
    def bounded(self) -> bool:
        return all(s.bounded for s in self.sources)

    def open(self, schema: Schema, *, name: str, mode: SourceMode | None = None) -> SourceReader:
        return ChainReader(self.sources, schema, name, mode)

    def describe(self) -> str:
        return "ChainSource(" + ", ".join(s.describe() for s in self.sources) + ")"
