"""While a streaming job runs, the objects alive when it started are out of the garbage
collector's reach (a full collection over them would stall a micro-batch); afterwards
they are collectable again."""

import gc

from volga.stream import StreamingContext


def test_a_streaming_job_freezes_the_heap_it_started_with_and_unfreezes_it_at_the_end():
    before = gc.get_freeze_count()  # 0 unless a job another test left running still runs
    frozen_during: list[int] = []

    def seen(x: int) -> None:
        frozen_during.append(gc.get_freeze_count())

    ctx = StreamingContext()
    ctx.from_collection(list(range(5))).map(lambda x: x + 1).sink(seen)
    ctx.execute(mode="streaming")
    assert len(frozen_during) == 5 and min(frozen_during) > 0
    assert gc.get_freeze_count() == before


def test_a_batch_job_leaves_the_collector_alone():
    before = gc.get_freeze_count()
    frozen_during: list[int] = []
    ctx = StreamingContext()
    ctx.from_collection([1, 2]).sink(lambda x: frozen_during.append(gc.get_freeze_count()))
    ctx.execute(mode="batch")
    assert frozen_during == [before, before]
