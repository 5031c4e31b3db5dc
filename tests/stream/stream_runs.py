"""Runs to parametrize DataStream tests over: batch mode, and streaming mode with tiny
micro-batches (every operator must give the same results; event times drive windows)."""

from __future__ import annotations

import dataclasses

from volga.stream import StreamingContext


@dataclasses.dataclass(frozen=True)
class Run:
    mode: str
    batch_size: int = 10_000

    def context(self) -> StreamingContext:
        return StreamingContext(batch_size=self.batch_size)

    def execute(self, ctx: StreamingContext):
        return ctx.execute(mode=self.mode)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.mode}-b{self.batch_size}"


RUNS = [Run("batch"), Run("streaming", 3), Run("streaming", 1000)]
