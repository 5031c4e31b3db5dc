"""ParquetOfflineStore: replace/append semantics, schema persistence, names, atomic swaps."""

from __future__ import annotations

import dataclasses
import datetime
import threading
from pathlib import Path
from typing import Optional

import polars as pl
import pytest

from volga.api.entity import entity, entity_schema, field
from volga.storage import OfflineStore, ParquetOfflineStore

T0 = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)


@entity
class Order:
    user_id: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float
    items: list[int]
    coupon: Optional[str]


ORDER = entity_schema(Order)


def orders(*rows: tuple[str, int, float]) -> pl.DataFrame:
    """Rows (user, minute, amount); ``items`` and ``coupon`` derived from them."""
    return pl.DataFrame(
        [(u, T0 + datetime.timedelta(minutes=m), x, [m], None if m % 2 else f"c{m}") for u, m, x in rows],
        schema=ORDER.polars_schema(),
        orient="row",
    )


@pytest.fixture
def offline(tmp_path: Path) -> ParquetOfflineStore:
    return ParquetOfflineStore(tmp_path / "offline")


def amounts(store: OfflineStore, name: str) -> list[float]:
    lazy = store.scan(name)
    assert lazy is not None
    return lazy.collect()["amount"].to_list()


def test_nothing_stored_reads_as_none(offline: ParquetOfflineStore) -> None:
    assert offline.scan("orders") is None
    assert offline.read("orders") is None
    assert offline.schema("orders") is None
    assert offline.names() == []


def test_replace_twice_keeps_only_the_second_rows(offline: ParquetOfflineStore) -> None:
    offline.replace("orders", ORDER, orders(("a", 0, 1.0), ("b", 1, 2.0), ("a", 2, 3.0)))
    offline.replace("orders", ORDER, orders(("c", 5, 50.0), ("a", 3, 30.0)))

    got = offline.read("orders")

    assert got is not None
    assert got.rows() == orders(("c", 5, 50.0), ("a", 3, 30.0)).rows()
    assert got.schema == pl.Schema(ORDER.polars_schema())
    assert offline.names() == ["orders"]


def test_append_adds_parts_read_back_in_write_order(offline: ParquetOfflineStore) -> None:
    offline.append("orders", ORDER, orders(("a", 9, 1.0), ("b", 1, 2.0)))  # creates the feature
    offline.append("orders", ORDER, orders(("c", 0, 3.0)))
    offline.append("orders", ORDER, orders())  # nothing to add
    offline.append("orders", ORDER, orders(("a", 5, 4.0), ("d", 2, 5.0)))

    assert amounts(offline, "orders") == [1.0, 2.0, 3.0, 4.0, 5.0]
    version = next(p for p in (offline.root / "orders").iterdir() if p.name.startswith("v"))
    assert sorted(p.name for p in version.glob("part-*")) == [
        "part-000001.parquet",
        "part-000002.parquet",
        "part-000003.parquet",
    ]

    offline.replace("orders", ORDER, orders(("z", 0, 9.0)))
    offline.append("orders", ORDER, orders(("z", 1, 10.0)))
    assert amounts(offline, "orders") == [9.0, 10.0]


def test_schema_survives_a_new_store_instance(offline: ParquetOfflineStore) -> None:
    offline.replace("orders", ORDER, orders(("a", 0, 1.0)))

    reopened = ParquetOfflineStore(offline.root)

    assert reopened.schema("orders") == ORDER
    got = reopened.read("orders")
    assert got is not None and got.rows() == orders(("a", 0, 1.0)).rows()


def test_read_bounds_are_inclusive(offline: ParquetOfflineStore) -> None:
    offline.replace("orders", ORDER, orders(*[("a", m, float(m)) for m in range(0, 50, 10)]))

    def read(start: datetime.datetime | None, end: datetime.datetime | None) -> list[float]:
        got = offline.read("orders", start, end)
        assert got is not None
        return got["amount"].to_list()

    minute = datetime.timedelta(minutes=1)
    assert read(T0 + 10 * minute, T0 + 30 * minute) == [10.0, 20.0, 30.0]
    assert read(T0 + 11 * minute, T0 + 29 * minute) == [20.0]
    assert read(None, T0 + 10 * minute) == [0.0, 10.0]
    assert read(T0 + 40 * minute, None) == [40.0]
    naive = datetime.datetime(2024, 5, 1, 0, 20)  # read as UTC
    assert read(naive, naive) == [20.0]


@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "a\\b", ".hidden", "a b", "naïve", "x\x00"])
def test_unsafe_feature_names_are_rejected(offline: ParquetOfflineStore, name: str) -> None:
    with pytest.raises(ValueError, match="feature name"):
        offline.replace(name, ORDER, orders(("a", 0, 1.0)))
    with pytest.raises(ValueError, match="feature name"):
        offline.scan(name)
    assert not (offline.root.parent / "escape").exists()


def test_dotted_and_dashed_names_are_fine(offline: ParquetOfflineStore) -> None:
    offline.replace("user.spend_v2-daily", ORDER, orders(("a", 0, 1.0)))

    assert amounts(offline, "user.spend_v2-daily") == [1.0]


def test_rows_are_conformed_to_the_schema(offline: ParquetOfflineStore) -> None:
    rows = orders(("a", 0, 1.0)).with_columns(
        pl.col("at").dt.replace_time_zone(None), extra=pl.lit("dropped")
    ).select("extra", "coupon", "items", "amount", "at", "user_id")

    offline.replace("orders", ORDER, rows)

    got = offline.read("orders")
    assert got is not None and got.rows() == orders(("a", 0, 1.0)).rows()
    with pytest.raises(ValueError, match="amount"):
        offline.append("orders", ORDER, orders(("a", 1, 2.0)).drop("amount"))


def test_append_of_another_shape_is_refused_but_replace_accepts_it(offline: ParquetOfflineStore) -> None:
    offline.replace("orders", ORDER, orders(("a", 0, 1.0)))
    narrower = dataclasses.replace(ORDER, fields=tuple(f for f in ORDER.fields if f.name != "coupon"))
    rows = orders(("a", 1, 2.0)).drop("coupon")

    with pytest.raises(ValueError, match="replace"):
        offline.append("orders", narrower, rows)

    offline.replace("orders", narrower, rows)
    assert offline.schema("orders") == narrower
    assert amounts(offline, "orders") == [2.0]


def test_a_lazy_frame_taken_before_a_replace_still_reads(offline: ParquetOfflineStore) -> None:
    offline.replace("orders", ORDER, orders(("a", 0, 1.0)))
    before = offline.scan("orders")
    assert before is not None

    offline.replace("orders", ORDER, orders(("a", 0, 2.0)))
    offline.replace("orders", ORDER, orders(("a", 0, 3.0)))

    assert before.collect()["amount"].to_list() == [1.0]
    assert amounts(offline, "orders") == [3.0]


def test_replaced_versions_are_deleted_after_the_grace_period(tmp_path: Path) -> None:
    store = ParquetOfflineStore(tmp_path, old_version_grace_s=0)
    for amount in (1.0, 2.0, 3.0):
        store.replace("orders", ORDER, orders(("a", 0, amount)))

    versions = [p.name for p in (tmp_path / "orders").iterdir() if p.is_dir()]
    assert versions == ["v000003"]
    assert amounts(store, "orders") == [3.0]


def test_a_reader_never_sees_a_half_replaced_feature(offline: ParquetOfflineStore) -> None:
    """While one thread re-runs a backfill, every read returns exactly one whole run."""
    runs = 40
    errors: list[BaseException] = []
    done = threading.Event()

    def run_rows(run: int) -> pl.DataFrame:
        return orders(*[("a", m, float(run)) for m in range(run % 7 + 1)])

    def writer() -> None:
        try:
            for run in range(runs):
                offline.replace("orders", ORDER, run_rows(run))
                offline.append("orders", ORDER, run_rows(run))
        except BaseException as e:
            errors.append(e)
        finally:
            done.set()

    def reader() -> None:
        try:
            while not done.is_set():
                got = offline.read("orders")
                if got is None:
                    continue
                run = int(got["amount"][0])
                assert set(got["amount"].to_list()) == {float(run)}, "rows of two runs mixed"
                assert got.height in (run % 7 + 1, 2 * (run % 7 + 1)), "a run was read half-written"
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    assert not errors, errors[0]
    assert amounts(offline, "orders") == [float(runs - 1)] * (2 * ((runs - 1) % 7 + 1))
