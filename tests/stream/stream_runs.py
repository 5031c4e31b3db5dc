"""Runs to parametrize DataStream tests over: batch mode, and streaming mode with tiny
micro-batches (every operator must give the same results; event times drive windows),
on the embedded runtime and on Ray with one and two actors per keyed stage."""

from __future__ import annotations

import dataclasses

from volga.stream import StreamingContext


@dataclasses.dataclass(frozen=True)
class Run:
    mode: str
    batch_size: int = 10_000
    ray: int = 0  # 0: the embedded runtime; n: RayRuntime(parallelism=n)

    def context(self) -> StreamingContext:
        if self.ray:
            from volga.runtime.ray.runtime import RayRuntime

            return StreamingContext(runtime=RayRuntime(parallelism=self.ray), batch_size=self.batch_size)
        return StreamingContext(batch_size=self.batch_size)

    def execute(self, ctx: StreamingContext):
        return ctx.execute(mode=self.mode)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.mode}-b{self.batch_size}" + (f"-ray{self.ray}" if self.ray else "")


RUNS = [Run("batch"), Run("streaming", 3), Run("streaming", 1000)]
# Representative tests also run on Ray (the fixture in conftest.py starts one session per module).
RAY_RUNS = [Run("batch", 10_000, ray=1), Run("streaming", 3, ray=1), Run("streaming", 3, ray=2)]
ALL_RUNS = RUNS + RAY_RUNS
# Thousands of rows: on Ray, bigger micro-batches (each costs a few ms of actor calls).
BIG_RUNS = RUNS + [Run("batch", 10_000, ray=1), Run("streaming", 700, ray=2)]
