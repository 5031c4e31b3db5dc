"""``ListSink`` is iterable (and indexable) over the elements it collected."""

from volga.stream import ListSink, StreamingContext


def test_list_sink_iterates_over_what_a_job_wrote():
    ctx = StreamingContext()
    counts = ListSink()
    (ctx.from_collection(["to be or", "not to be"]).flat_map(str.split)
        .map(lambda w: (w, 1)).key_by(lambda kv: kv[0])
        .reduce(lambda a, b: (a[0], a[1] + b[1])).sink(counts))
    ctx.execute()
    assert list(counts) == counts.items and len(list(counts)) == 6
    assert dict(counts) == {"to": 2, "be": 2, "or": 1, "not": 1}  # the latest value per word
    assert counts[0] == ("to", 1) and counts[-1] == ("be", 2)
    words = [word for word, _ in counts]
    assert words == ["to", "be", "or", "not", "to", "be"]


def test_iteration_is_a_snapshot():
    sink = ListSink([1, 2])
    it = iter(sink)
    sink.items.append(3)
    assert list(it) == [1, 2] and list(sink) == [1, 2, 3]
