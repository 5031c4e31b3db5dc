"""The OnlineStore contract, run against every backend of the ``store`` fixture (conftest.py).

Times in the scenarios are minutes after T0; ``at(m)`` is that datetime, ``us(m)`` the
same instant in microseconds.
"""

from __future__ import annotations

import datetime
import sys
import threading
from typing import Any, Optional

import polars as pl
import pytest

from volga.api.entity import Schema, entity, entity_schema, field
from volga.storage import KEY_INDEX, OnlineStore

T0 = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
UTC_US = pl.Datetime("us", "UTC")


@entity
class Spend:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    total: float
    note: Optional[str]


@entity
class Purchase:
    user_id: str = field(key=True)
    merchant: int = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float
    tags: list[str]


SPEND = entity_schema(Spend)
PURCHASE = entity_schema(Purchase)


def at(minute: int) -> datetime.datetime:
    return T0 + datetime.timedelta(minutes=minute)


def us(minute: int) -> int:
    return int((at(minute) - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds()) * 1_000_000


def frame(schema: Schema, rows: list[tuple[Any, ...]]) -> pl.DataFrame:
    """Rows given in schema column order, timestamps as minutes."""
    ts = schema.names.index(schema.timestamp)
    fixed = [row[:ts] + (at(row[ts]),) + row[ts + 1 :] for row in rows]
    return pl.DataFrame(fixed, schema=schema.polars_schema(), orient="row")


def spend(*rows: tuple[str, int, float, str | None]) -> pl.DataFrame:
    return frame(SPEND, list(rows))


def users(*ids: str) -> pl.DataFrame:
    return pl.DataFrame({"user_id": list(ids)}, schema={"user_id": pl.String})


def records(df: pl.DataFrame, *columns: str) -> list[tuple[Any, ...]]:
    return df.select(columns or df.columns).rows()


# -- get_latest -------------------------------------------------------------------------


def test_latest_wins_in_write_order(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, "x"), ("b", 1, 10.0, None), ("a", 2, 2.0, "y")))
    store.write("spend", SPEND, spend(("b", 3, 30.0, "z")))
    # The contract: rows arrive in processing order, so the last row written is the latest,
    # whatever its timestamp says.
    store.write("spend", SPEND, spend(("a", 0, 3.0, None)))

    got = store.get_latest("spend", users("a", "b"))

    assert records(got) == [("a", at(0), 3.0, None), ("b", at(3), 30.0, "z")]


def test_get_latest_has_every_schema_column_with_schema_dtypes(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, "x")))

    got = store.get_latest("spend", users("a"))

    assert got.schema == pl.Schema(SPEND.polars_schema())
    assert got.schema["at"] == UTC_US
    assert store.schema("spend") == SPEND


def test_unknown_keys_are_null_rows_in_request_order(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, "x"), ("b", 2, 2.0, "y")))

    got = store.get_latest("spend", users("zz", "b", "a", "zz2", "b"))

    assert records(got) == [
        ("zz", None, None, None),
        ("b", at(2), 2.0, "y"),
        ("a", at(1), 1.0, "x"),
        ("zz2", None, None, None),
        ("b", at(2), 2.0, "y"),
    ]


def test_get_latest_for_no_keys_is_empty_with_schema(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, "x")))

    got = store.get_latest("spend", users())

    assert got.height == 0
    assert got.columns == SPEND.names


def test_composite_keys_are_distinct_and_list_values_round_trip(store: OnlineStore) -> None:
    rows = [
        ("u1", 1, 1, 1.0, ["a"]),
        ("u1", 2, 2, 2.0, []),
        ("u2", 1, 3, 3.0, ["b", "c"]),
        ("u1", 1, 4, 4.0, ["d"]),
    ]
    store.write("purchase", PURCHASE, frame(PURCHASE, rows))
    # Key columns in another order, plus a column the store must ignore.
    request = pl.DataFrame({"merchant": [1, 1, 2, 3], "user_id": ["u2", "u1", "u1", "u1"], "extra": [0, 0, 0, 0]})

    got = store.get_latest("purchase", request)

    assert records(got) == [
        ("u2", 1, at(3), 3.0, ["b", "c"]),
        ("u1", 1, at(4), 4.0, ["d"]),
        ("u1", 2, at(2), 2.0, []),
        ("u1", 3, None, None, None),
    ]


def test_request_key_dtype_is_read_as_the_stored_dtype(store: OnlineStore) -> None:
    store.write("purchase", PURCHASE, frame(PURCHASE, [("u1", 7, 1, 1.0, [])]))
    request = pl.DataFrame({"user_id": ["u1"], "merchant": pl.Series([7], dtype=pl.Int32)})

    got = store.get_latest("purchase", request)

    assert records(got, "merchant", "amount") == [(7, 1.0)]
    assert got.schema["merchant"] == pl.Int64


# -- get_last_n / get_range -------------------------------------------------------------


def test_last_n_is_oldest_first_grouped_in_request_order(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, None), ("b", 2, 2.0, None), ("a", 3, 3.0, None)))
    store.write("spend", SPEND, spend(("b", 4, 4.0, None), ("a", 5, 5.0, None)))

    got = store.get_last_n("spend", users("b", "zz", "a"), 2)

    assert got.columns == [*SPEND.names, KEY_INDEX]
    assert records(got, KEY_INDEX, "user_id", "total") == [
        (0, "b", 2.0),
        (0, "b", 4.0),
        (2, "a", 3.0),
        (2, "a", 5.0),
    ]
    assert got.schema["at"] == UTC_US


def test_last_n_is_bounded_by_history(store: OnlineStore, history: int) -> None:
    store.write("spend", SPEND, spend(*[("a", m, float(m), None) for m in range(history + 3)]))

    got = store.get_last_n("spend", users("a"), history + 10)

    assert got["total"].to_list() == [float(m) for m in range(3, history + 3)]
    assert store.get_last_n("spend", users("a"), 1)["total"].to_list() == [float(history + 2)]


def test_last_n_zero_and_repeated_keys(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, None), ("a", 2, 2.0, None)))

    assert store.get_last_n("spend", users("a"), 0).columns == [*SPEND.names, KEY_INDEX]
    assert store.get_last_n("spend", users("a"), 0).height == 0
    assert records(store.get_last_n("spend", users("a", "a"), 1), KEY_INDEX, "total") == [(0, 2.0), (1, 2.0)]


def test_range_bounds_are_inclusive_and_none_is_open(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(*[("a", m, float(m), None) for m in (0, 10, 20, 30)]))
    store.write("spend", SPEND, spend(("b", 10, 100.0, None), ("b", 25, 250.0, None)))
    keys = users("a", "b")

    def totals(start: int | None, end: int | None) -> list[tuple[Any, ...]]:
        got = store.get_range("spend", keys, start, end)
        assert got.columns == [*SPEND.names, KEY_INDEX]
        return records(got, KEY_INDEX, "total")

    assert totals(us(10), us(20)) == [(0, 10.0), (0, 20.0), (1, 100.0)]
    assert totals(us(10) + 1, us(20) - 1) == []
    assert totals(None, us(10)) == [(0, 0.0), (0, 10.0), (1, 100.0)]
    assert totals(us(25), None) == [(0, 30.0), (1, 250.0)]
    assert totals(None, None) == [(0, 0.0), (0, 10.0), (0, 20.0), (0, 30.0), (1, 100.0), (1, 250.0)]


def test_range_of_composite_keys(store: OnlineStore) -> None:
    rows = [("u1", 1, 1, 1.0, []), ("u1", 2, 2, 2.0, []), ("u1", 1, 3, 3.0, ["x"])]
    store.write("purchase", PURCHASE, frame(PURCHASE, rows))
    request = pl.DataFrame({"user_id": ["u9", "u1"], "merchant": [1, 1]})

    got = store.get_range("purchase", request, us(1), us(3))

    assert records(got, KEY_INDEX, "amount", "tags") == [(1, 1.0, []), (1, 3.0, ["x"])]


# -- errors and lifecycle ---------------------------------------------------------------


@pytest.mark.parametrize(
    "read",
    [
        lambda s, keys: s.get_latest("nope", keys),
        lambda s, keys: s.get_last_n("nope", keys, 3),
        lambda s, keys: s.get_range("nope", keys, None, None),
    ],
    ids=["latest", "last_n", "range"],
)
def test_reading_an_unknown_feature_is_a_key_error_naming_it(store: OnlineStore, read: Any) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, None)))

    with pytest.raises(KeyError, match="nope"):
        read(store, users("a"))
    assert store.schema("nope") is None


@pytest.mark.parametrize(
    "read",
    [
        lambda s, keys: s.get_latest("purchase", keys),
        lambda s, keys: s.get_last_n("purchase", keys, 3),
        lambda s, keys: s.get_range("purchase", keys, None, None),
    ],
    ids=["latest", "last_n", "range"],
)
def test_a_missing_key_column_is_a_value_error_naming_it(store: OnlineStore, read: Any) -> None:
    store.write("purchase", PURCHASE, frame(PURCHASE, [("u1", 1, 1, 1.0, [])]))

    with pytest.raises(ValueError, match="merchant"):
        read(store, users("u1"))


def test_a_batch_missing_a_column_is_rejected(store: OnlineStore) -> None:
    with pytest.raises(ValueError, match="total"):
        store.write("spend", SPEND, spend(("a", 1, 1.0, None)).drop("total"))


def test_clear_forgets_a_feature_only(store: OnlineStore) -> None:
    store.write("spend", SPEND, spend(("a", 1, 1.0, None)))
    store.write("other", SPEND, spend(("a", 2, 2.0, None)))

    store.clear("spend")
    store.clear("never-written")

    assert store.schema("spend") is None
    with pytest.raises(KeyError):
        store.get_latest("spend", users("a"))
    assert records(store.get_latest("other", users("a")), "total") == [(2.0,)]
    store.write("spend", SPEND, spend(("b", 3, 3.0, None)))
    assert records(store.get_latest("spend", users("a", "b")), "total") == [(None,), (3.0,)]


# -- concurrency ------------------------------------------------------------------------


def test_concurrent_writes_and_reads_never_see_torn_rows(store: OnlineStore, history: int) -> None:
    """A streaming thread writes while a serving thread reads: every row read was written whole.

    Each written row is self-consistent: ``total`` is its minute and ``note`` spells it, so a
    row mixing two writes would show. Per key, the latest minute read never goes back.
    """
    n_keys, n_batches, batch_rows = 50, 1000, 20
    ids = [f"k{i}" for i in range(n_keys)]
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            minute = 0
            for _ in range(n_batches):
                rows = []
                for _ in range(batch_rows):
                    rows.append((ids[minute % n_keys], minute, float(minute), f"m{minute}"))
                    minute += 1
                store.write("spend", SPEND, spend(*rows))
        except BaseException as e:  # reported by the test thread
            errors.append(e)
        finally:
            done.set()

    def reader() -> None:
        seen = dict.fromkeys(ids, -1.0)
        keys = users(*ids)
        reads = 0
        try:
            while not done.is_set() or reads < 3:
                reads += 1
                latest = store.get_latest("spend", keys) if store.schema("spend") else None
                for user_id, when, total, note in [] if latest is None else latest.rows():
                    if when is None:
                        assert total is None and note is None
                        continue
                    assert when == at(int(total)) and note == f"m{int(total)}", (user_id, when, total, note)
                    assert total >= seen[user_id], f"latest of {user_id} went back in time"
                    seen[user_id] = total
                if latest is not None:
                    recent = store.get_last_n("spend", keys[:5], history)
                    for when, total, note in recent.select("at", "total", "note").rows():
                        assert when == at(int(total)) and note == f"m{int(total)}"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so reads land inside writes
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)

    assert not errors, errors[0]
    last = n_batches * batch_rows - 1
    final = store.get_latest("spend", users(ids[last % n_keys]))
    assert records(final, "total") == [(float(last),)]
