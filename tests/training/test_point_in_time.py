"""The training/serving consistency guarantee (DESIGN.md), tested.

Random events and a random spine: ``get_historical_features`` must equal, row for row, a
reference that replays the events in time order and, at each spine time t, asks the online
path. The reference materializes the events with ts <= t in online (streaming) mode into a
fresh client, then calls ``get_latest`` (with the ttl) and ``get_on_demand`` for the spine
rows with ``at=t``. Times are minutes after ``T0``; spine times hit
event times exactly (ties), fall a microsecond before them, between them, before the first
event and after the last.
"""

from __future__ import annotations

import datetime
import math
import tempfile
from typing import Any

import polars as pl
import pytest
import training_defs as defs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volga.training import vectorise

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
USERS = ("a", "b", "c")
US = datetime.timedelta(microseconds=1)
# Which query arguments each on-demand feature takes (get_on_demand rejects others).
TAKES = {
    "scaled": ("factor",), "level": (), "recent": ("n",), "windowed": ("start", "end"), "boosted": ("factor",),
    "combo": ("n", "factor", "bonus"),
}


@st.composite
def scenarios(draw: Any) -> dict[str, Any]:
    n_events = draw(st.integers(0, 12))
    minute, events = 0, []
    for _ in range(n_events):
        minute += draw(st.sampled_from([0, 0, 1, 2, 6]))  # ties, small steps, gaps past the 5m window
        events.append({
            "user": draw(st.sampled_from(USERS)),
            "at": defs.at(minute),
            "amount": draw(st.integers(-200, 1000)) / 100,
            "tag": draw(st.sampled_from("xyz")),
        })
    event_minutes = sorted({e["at"] for e in events}) or [defs.at(0)]
    some_time = st.one_of(
        st.sampled_from(event_minutes),                                    # exactly at an event
        st.sampled_from(event_minutes).map(lambda t: t - US),              # just before one
        st.integers(-2, minute + 8).map(lambda m: defs.at(m + 0.5)),       # between, before, after
    )
    pool = draw(st.lists(st.tuples(st.sampled_from((*USERS, "zz")), some_time), min_size=1, max_size=6))
    spine = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=10))  # duplicates come from the pool
    bounds = [draw(st.one_of(st.none(), st.integers(-1, minute + 2).map(defs.at))) for _ in range(2)]
    if None not in bounds:
        bounds.sort()
    args = {
        "n": draw(st.integers(1, 4)),
        "start": bounds[0],
        "end": bounds[1],
        "factor": draw(st.sampled_from([2.0, -0.5, 3])),
        "bonus": draw(st.sampled_from([0.0, 1.25])),
    }
    ttl = draw(st.sampled_from([None, "0s", "2m", "10m"]))
    history = draw(st.sampled_from([2, 1000]))  # rows the online store keeps per key: caps last_n and range
    return {"events": events, "spine": spine, "args": args, "ttl": ttl, "history": history}


def served_at(events: list[dict[str, Any]], rows: list[tuple[str, datetime.datetime]], args: dict[str, Any],
              ttl: str | None, history: int, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The reference: for each spine time, replay the events up to it online and ask."""
    out: list[dict[str, Any]] = [{} for _ in rows]
    for t in sorted({t for _, t in rows}):
        prefix = [e for e in events if e["at"] <= t]
        at_t = [i for i, (_, ti) in enumerate(rows) if ti == t]
        keys = [{"user": rows[i][0]} for i in at_t]
        with tempfile.TemporaryDirectory() as directory:
            client = defs.client_with(directory, prefix, mode="online", history=history)
            answers = {"stats": client.get_latest("stats", keys, ttl=ttl, at=t)}
            for name in TAKES:
                answers[name] = client.get_on_demand(name, keys, {a: args[a] for a in TAKES[name]}, at=t)
        for name, values in answers.items():
            fields = defs.FEATURE_FIELDS[name]
            for i, value in zip(at_t, values):
                for f in fields:
                    out[i][f"{name}.{f}"] = None if value is None else getattr(value, f)
    return out


def same(got: Any, want: Any) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if isinstance(want, float) or isinstance(got, float):
        return math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12)
    return bool(got == want)


@SETTINGS
@given(scenarios())
def test_training_rows_equal_what_was_served_at_each_spine_time(scenario: dict[str, Any]) -> None:
    events, rows, args, ttl, history = (scenario[k] for k in ("events", "spine", "args", "ttl", "history"))
    spine = pl.DataFrame({"user": [u for u, _ in rows], "timestamp": [t for _, t in rows], "row": list(range(len(rows)))})
    with tempfile.TemporaryDirectory() as directory, pytest.MonkeyPatch.context() as monkeypatch:
        client = defs.client_with(directory, events, history=history)
        # Check the traced (vectorised) functions themselves, without their row-wise sample check.
        monkeypatch.setattr(vectorise, "_sample_agrees", lambda *a: True)
        train = client.get_historical_features(spine, defs.FEATURES, args=args, ttl=ttl and {"stats": ttl}, full_names=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        want = served_at(events, rows, args, ttl, history, monkeypatch)
    assert train.columns[:3] == ["user", "timestamp", "row"]
    assert train.height == len(rows) and train["row"].to_list() == list(range(len(rows)))
    for i, (expected, got) in enumerate(zip(want, train.drop("user", "timestamp", "row").to_dicts())):
        assert set(got) == set(expected)
        bad = {c: (got[c], expected[c]) for c in expected if not same(got[c], expected[c])}
        assert not bad, (
            f"spine row {i} {rows[i]}: (training, served) differ: {bad}\n"
            f"events: {events}\nargs: {args}, ttl: {ttl}, history: {history}"
        )
