"""``transform`` with a row function (row -> row): output columns inferred from the function.

New keys become columns (typed from the sample result), keys the function leaves out are
dropped, ``schema=`` overrides the inference; a row whose keys differ from the inferred
columns at run time is set aside in ``job.rejected`` (not dropped silently, not fatal).
Offline and online give the same rows.
"""

import datetime
from typing import Optional

import pytest

import volga
from volga import Count, Entity, entity, field, pipeline, source
from volga.api.frame import PipelineDefinitionError
from volga.sources import MemorySource

T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
MODES = ["offline", "online"]


def at(minutes: float) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minutes)


@entity
class E:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    v: int
    note: Optional[str]


ROWS = [
    {"k": "a", "ts": at(0), "v": 1, "note": "x"},
    {"k": "b", "ts": at(1), "v": 5, "note": None},
    {"k": "a", "ts": at(2), "v": 7, "note": "y"},
]


@source(E)
def events() -> volga.Source:
    return MemorySource(ROWS)


def run(client, mode, body, output, batch_size=1):
    pipe = pipeline(dependencies=[events], output=output)(body)
    job = client.materialize([pipe], mode=mode, write_offline=True, batch_size=batch_size)
    return client.get_offline(pipe.name).sort("ts"), job


@entity
class Doubled:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    v: int
    note: Optional[str]
    v2: int


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_size", [1, 2, 100])
def test_row_function_adds_a_column(client, mode, batch_size):
    def doubled(e: Entity) -> Entity:
        out = e.transform(lambda r: {**r, "v2": r["v"] * 2})
        assert out.columns == ["k", "ts", "v", "note", "v2"]
        return out

    out, job = run(client, mode, doubled, Doubled, batch_size)
    assert out["v2"].to_list() == [2, 10, 14]
    assert out["note"].to_list() == ["x", None, "y"]
    assert job.rejected == []


@entity
class Mixed:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    half: float
    label: str
    big: bool
    seen: datetime.datetime
    tags: list[str]


@pytest.mark.parametrize("mode", MODES)
def test_new_column_types_and_dropped_keys(client, mode):
    def mixed(e: Entity) -> Entity:
        return e.transform(
            lambda r: {
                "k": r["k"],
                "ts": r["ts"],
                "half": r["v"] / 2,
                "label": f"{r['k']}-{r['v']}",
                "big": r["v"] > 3,
                "seen": r["ts"] + datetime.timedelta(hours=1),
                "tags": [r["k"], "t"],
            }
        )  # v and note are left out: dropped

    out, job = run(client, mode, mixed, Mixed)
    assert out.columns == ["k", "ts", "half", "label", "big", "seen", "tags"]
    assert out["half"].to_list() == [0.5, 2.5, 3.5]
    assert out["label"].to_list() == ["a-1", "b-5", "a-7"]
    assert out["big"].to_list() == [False, True, True]
    assert out["seen"].to_list() == [at(60), at(61), at(62)]
    assert out["tags"].to_list() == [["a", "t"], ["b", "t"], ["a", "t"]]
    assert job.rejected == []


@entity
class Counted:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    n: int


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch_size", [1, 100])
def test_rows_with_other_keys_are_rejected_not_dropped_silently(client, mode, batch_size):
    def odd(r):
        if r["v"] == 5:
            return {"k": r["k"], "ts": r["ts"], "v": r["v"], "extra": 1}  # note missing, extra added
        return {**r, "v2": r["v"]}

    def counted(e: Entity) -> Entity:
        return e.transform(odd).group_by("k").aggregate([Count(window="forever", into="n")])

    out, job = run(client, mode, counted, Counted, batch_size)
    assert out["k"].to_list() == ["a", "a"]
    (bad,) = job.rejected
    assert bad.record["v"] == 5
    assert "transform" in bad.source
    assert "extra key(s) ['extra']" in bad.reason
    assert "'note'" in bad.reason and "'v2'" in bad.reason and "missing" in bad.reason


@pytest.mark.parametrize("mode", MODES)
def test_row_returning_a_non_dict_is_rejected(client, mode):
    def counted(e: Entity) -> Entity:
        return e.transform(lambda r: r if r["v"] != 5 else None).group_by("k").aggregate([Count(window="forever", into="n")])

    out, job = run(client, mode, counted, Counted)
    assert out["k"].to_list() == ["a", "a"]
    (bad,) = job.rejected
    assert "not a dict" in bad.reason


@entity
class AsFloat:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    v2: float


@pytest.mark.parametrize("mode", MODES)
def test_explicit_schema_overrides_the_inference(client, mode):
    def as_float(e: Entity) -> Entity:
        # the probe would say int; schema= says float, and extra keys are ignored
        return e.transform(lambda r: {**r, "v2": r["v"] * 2}, schema={"k": str, "ts": datetime.datetime, "v2": float})

    out, job = run(client, mode, as_float, AsFloat)
    assert out["v2"].to_list() == [2.0, 10.0, 14.0]
    assert job.rejected == []


@pytest.mark.parametrize("mode", MODES)
def test_explicit_schema_rejects_rows_missing_a_column(client, mode):
    def fn(r):
        out = {"k": r["k"], "ts": r["ts"], "v2": float(r["v"])}
        if r["v"] == 5:
            del out["v2"]
        return out

    def as_float(e: Entity) -> Entity:
        return e.transform(fn, schema={"k": str, "ts": datetime.datetime, "v2": float})

    out, job = run(client, mode, as_float, AsFloat)
    assert out["v2"].to_list() == [1.0, 7.0]
    (bad,) = job.rejected
    assert "missing key(s) ['v2']" in bad.reason


def test_probe_that_cannot_run_asks_for_schema():
    @entity
    class S:
        k: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        s: str

    @source(S)
    def strings() -> volga.Source:
        return MemorySource([{"k": "a", "ts": at(0), "s": "12"}])

    @entity
    class Parsed:
        k: str = field(key=True)
        ts: datetime.datetime = field(timestamp=True)
        s: str
        n: int

    with pytest.raises(PipelineDefinitionError, match=r"cannot infer the output columns.*ValueError.*pass schema="):

        @pipeline(dependencies=[strings], output=Parsed)
        def parsed(e: Entity) -> Entity:
            return e.transform(lambda r: {**r, "n": int(r["s"])})

    @pipeline(dependencies=[strings], output=Parsed)
    def parsed_with_schema(e: Entity) -> Entity:
        return e.transform(
            lambda r: {**r, "n": int(r["s"])}, schema={"k": str, "ts": datetime.datetime, "s": str, "n": int}
        )

    assert parsed_with_schema.name == "parsed_with_schema"


@entity
class Halved:
    k: str = field(key=True)
    ts: datetime.datetime = field(timestamp=True)
    v: float
    note: Optional[str]


@pytest.mark.parametrize("mode", MODES)
def test_retyped_value_column_takes_the_sample_type(client, mode):
    def halved(e: Entity) -> Entity:
        return e.transform(lambda r: {**r, "v": r["v"] / 2})

    out, _ = run(client, mode, halved, Halved)
    assert out["v"].to_list() == [0.5, 2.5, 3.5]


def test_division_by_zero_on_the_first_sample_still_infers():
    @pipeline(dependencies=[events], output=AsFloat)
    def ratio(e: Entity) -> Entity:
        return e.transform(lambda r: {"k": r["k"], "ts": r["ts"], "v2": 1 / r["v"]})

    assert ratio.name == "ratio"


@pytest.mark.parametrize(
    "fn, message",
    [
        (lambda r: {**r, "x": None}, r"cannot infer the type of new column 'x'.*pass schema="),
        (lambda r: {**r, "x": []}, r"cannot infer the type of new column 'x'.*pass schema="),
        (lambda r: {"k": r["k"], "v": r["v"]}, r"must keep key/timestamp columns \['ts'\]"),
        (lambda r: {**r, "k": 1}, r"changes the type of key/timestamp 'k'"),
        (lambda r: {**r, "w": r["nope"]}, r"reads unknown column 'nope'"),
        (lambda r: [r], r"must return a dict"),
    ],
    ids=["none", "empty-list", "drops-ts", "retypes-key", "unknown-column", "not-a-dict"],
)
def test_definition_errors_name_the_culprit(fn, message):
    with pytest.raises(PipelineDefinitionError, match=message):

        @pipeline(dependencies=[events], output=Doubled)
        def bad(e: Entity) -> Entity:
            return e.transform(fn)


def test_missing_declared_column_still_reported():
    with pytest.raises(PipelineDefinitionError, match=r"'v2': declared int but the pipeline does not produce it"):

        @pipeline(dependencies=[events], output=Doubled)
        def no_v2(e: Entity) -> Entity:
            return e.transform(lambda r: dict(r))
