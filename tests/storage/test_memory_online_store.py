"""What is particular to MemoryOnlineStore (the shared contract is in test_online_store_contract.py)."""

from __future__ import annotations

import dataclasses
import datetime

import polars as pl
import pytest

from volga.api.entity import entity, entity_schema, field
from volga.storage import MemoryOnlineStore

T0 = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)


@entity
class Balance:
    account: int = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    amount: float


BALANCE = entity_schema(Balance)


def balances(*rows: tuple[int, int, float]) -> pl.DataFrame:
    return pl.DataFrame(
        [(a, T0 + datetime.timedelta(minutes=m), x) for a, m, x in rows], schema=BALANCE.polars_schema(), orient="row"
    )


@pytest.mark.parametrize("history", [0, -1, 2.5])
def test_history_must_be_a_positive_int(history: object) -> None:
    with pytest.raises(ValueError, match="history"):
        MemoryOnlineStore(history=history)  # type: ignore[arg-type]


def test_latest_count_is_the_number_of_keys() -> None:
    store = MemoryOnlineStore()
    assert store.latest_count("balance") == 0

    store.write("balance", BALANCE, balances((1, 0, 1.0), (2, 0, 2.0), (1, 1, 3.0)))

    assert store.latest_count("balance") == 2


def test_writing_another_shape_under_a_name_asks_to_clear_it_first() -> None:
    store = MemoryOnlineStore()
    store.write("balance", BALANCE, balances((1, 0, 1.0)))
    renamed = dataclasses.replace(BALANCE, name="BalanceV2")
    store.write("balance", renamed, balances((1, 1, 2.0)))  # same columns: fine
    wider = dataclasses.replace(BALANCE, fields=(*BALANCE.fields, dataclasses.replace(BALANCE.fields[-1], name="fee")))

    with pytest.raises(ValueError, match=r"clear\('balance'\)"):
        store.write("balance", wider, balances((1, 2, 3.0)).with_columns(fee=pl.lit(0.0)))

    store.clear("balance")
    store.write("balance", wider, balances((1, 2, 3.0)).with_columns(fee=pl.lit(0.5)))
    assert store.get_latest("balance", pl.DataFrame({"account": [1]}))["fee"].to_list() == [0.5]


def test_batches_are_conformed_to_the_schema() -> None:
    """Extra columns dropped, columns reordered, a naive timestamp read as UTC, Int32 widened."""
    store = MemoryOnlineStore()
    batch = pl.DataFrame(
        {
            "extra": ["ignored"],
            "amount": [1.5],
            "at": [datetime.datetime(2024, 5, 1, 12, 0)],
            "account": pl.Series([7], dtype=pl.Int32),
        }
    )

    store.write("balance", BALANCE, batch)

    got = store.get_latest("balance", pl.DataFrame({"account": [7]}))
    assert got.schema == pl.Schema(BALANCE.polars_schema())
    assert got.rows() == [(7, datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc), 1.5)]


def test_a_datetime_key_round_trips() -> None:
    @entity
    class Slot:
        day: datetime.datetime = field(key=True)
        at: datetime.datetime = field(timestamp=True)
        value: int

    schema = entity_schema(Slot)
    store = MemoryOnlineStore()
    day = datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)
    store.write("slot", schema, pl.DataFrame({"day": [day], "at": [T0], "value": [3]}, schema=schema.polars_schema()))

    got = store.get_latest("slot", pl.DataFrame({"day": [datetime.datetime(2024, 5, 1), datetime.datetime(2024, 5, 2)]}))

    assert got.rows() == [(day, T0, 3), (datetime.datetime(2024, 5, 2, tzinfo=datetime.timezone.utc), None, None)]
