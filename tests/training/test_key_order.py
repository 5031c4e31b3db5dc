"""Grouping offline rows by key for request-time training: each key's rows contiguous and in
their loaded (time) order, whatever the key types."""

from __future__ import annotations

import polars as pl
from hypothesis import given
from hypothesis import strategies as st

from volga.training.lookup import _key_order

KEY_VALUES = {
    "str": st.sampled_from(["a", "b", "é", ""]),
    "int": st.integers(-3, 3),
    "big": st.sampled_from([0, 2**63 + 5, 2**64 - 1]),
    "float": st.sampled_from([0.5, -1.0, 2.0]),
}
DTYPES = {"str": pl.String, "int": pl.Int64, "big": pl.UInt64, "float": pl.Float64}


@given(st.lists(st.sampled_from(sorted(KEY_VALUES)), min_size=1, max_size=2, unique=True), st.data())
def test_each_key_is_contiguous_and_keeps_its_row_order(kinds: list[str], data: st.DataObject) -> None:
    n = data.draw(st.integers(0, 40))
    columns = {kind: data.draw(st.lists(KEY_VALUES[kind], min_size=n, max_size=n)) for kind in kinds}
    frame = pl.DataFrame({k: pl.Series(k, v, dtype=DTYPES[k]) for k, v in columns.items()})
    order, _ = _key_order(frame, kinds)
    assert sorted(order.tolist()) == list(range(n))
    keys = [tuple(frame.row(i)) for i in order.tolist()]
    seen: list[tuple] = []
    for i, key in enumerate(keys):  # contiguous: a key never comes back after another one
        if not seen or seen[-1] != key:
            assert key not in seen
            seen.append(key)
        if i and keys[i - 1] == key:  # stable: the loaded order inside a key
            assert order[i - 1] < order[i]
