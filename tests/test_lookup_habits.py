"""What a new user hits at lookup time (issue 14, items 5-8): definitions where names are
expected, keys as pandas/numpy users hold them, one row shape, training that names the
failing row or nulls it."""

from __future__ import annotations

import datetime
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest

import volga
from tests.test_request_time import Velocity, at, swipe, velocity_pipeline
from volga import entity, field, on_demand
from volga.serving import FeatureFunctionError
from volga.training.historical import FeatureErrorsWarning


@pytest.fixture
def served(tmp_path):
    client = volga.Client(data_dir=tmp_path)
    pipe = velocity_pipeline([swipe("a", 0, amount=2.0), swipe("a", 1, amount=3.0), swipe("b", 2, amount=5.0)])
    client.materialize([pipe], mode="offline", write_online=True)
    return client, pipe


def test_definitions_are_accepted_where_names_are(served):
    client, pipe = served
    assert client.get_latest(pipe, [{"card": "a"}], at=at(1)) == client.get_latest("velocity", [{"card": "a"}], at=at(1))
    assert client.get_offline(pipe).height == 3
    assert len(client.get_last_n(pipe, [{"card": "a"}], n=5)[0]) == 2
    spine = pl.DataFrame({"card": ["a"], "timestamp": [at(1)]})
    assert client.get_historical_features(spine, [pipe])["cnt_10m"].to_list() == [2]


def test_a_feast_style_reference_gets_a_hint(served):
    client, _ = served
    spine = pl.DataFrame({"card": ["a"], "timestamp": [at(1)]})
    with pytest.raises(volga.UnknownFeature, match=r"did you mean 'velocity.sum_1h'\?"):
        client.get_historical_features(spine, ["velocity:sum_1h"])
    with pytest.raises(volga.UnknownFeature, match=r"did you mean 'velocity.sum_1h'\?"):
        client.get_latest("velocity:sum_1h", [{"card": "a"}])
    with pytest.raises(volga.serving.FeatureNotFound, match=r"did you mean 'velocity.cnt_10m'\?"):
        client.get_on_demand("velocity:cnt_10m", [{"card": "a"}])


def test_keys_as_pandas_numpy_users_hold_them(served):
    client, _ = served
    want = client.get_latest("velocity", [{"card": "a"}, {"card": "b"}], at=at(3))
    assert client.get_latest("velocity", pd.DataFrame({"card": ["a", "b"]}), at=at(3)) == want
    assert client.get_latest("velocity", pl.DataFrame({"card": ["a", "b"]}), at=at(3)) == want
    assert client.get_latest("velocity", [{"card": np.str_("a")}, {"card": np.str_("b")}], at=at(3)) == want
    assert client.get_latest("velocity", {"card": "a"}, at=at(3)) == want[:1]  # one key as a dict
    assert client.get_on_demand("velocity", {"card": "a"}, at=at(3))[0]["cnt_10m"] == want[0].cnt_10m
    with pytest.raises(volga.KeyMismatch, match=r"key #0 field 'card' must be str, got 7"):
        client.get_latest("velocity", [{"card": np.int64(7)}])


@entity
class Counter:
    n: int = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    seen: int


def test_numpy_integer_and_iso_datetime_keys_work_on_every_lookup(tmp_path):
    from volga import Count, Entity, pipeline, source
    from volga.sources import MemorySource

    @source(Counter)
    def counters() -> volga.Source:
        return MemorySource([{"n": 1, "at": at(0), "seen": 0}])

    @pipeline(dependencies=[counters], output=Counter)
    def counted(c: Entity) -> Entity:
        return c.group_by(keys=["n"]).aggregate([Count(window="forever", into="seen")])

    client = volga.Client(data_dir=tmp_path)
    client.materialize([counted], mode="offline", write_online=True)
    assert client.get_latest("counted", [{"n": np.int64(1)}])[0].seen == 1
    assert client.get_on_demand("counted", [{"n": np.int32(1)}])[0]["seen"] == 1


def test_one_row_shape_entity_rows_read_like_dicts(served):
    client, _ = served
    (row,) = client.get_latest("velocity", [{"card": "a"}], at=at(1))
    (same,) = client.get_on_demand("velocity", [{"card": "a"}], at=at(1))
    assert isinstance(row, Velocity)
    assert row["cnt_10m"] == row.cnt_10m == same["cnt_10m"] == same.cnt_10m
    assert row.to_dict() == same.to_dict() == dict(row) == dict(same)
    assert row.to_dict()["at"].tzinfo is datetime.timezone.utc and same["at"].tzinfo is datetime.timezone.utc
    with pytest.raises(KeyError, match="Velocity has no field 'nope'"):
        row["nope"]


@entity
class Ratio:
    card: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    per_swipe: float


def test_training_names_the_failing_key_and_time_or_nulls_it(served):
    client, pipe = served

    @on_demand(dependencies=[pipe])
    def ratio(v: Velocity) -> Ratio:
        if v.card == "b":
            raise ValueError("bad card")
        return Ratio(card=v.card, at=v.at, per_swipe=(v.sum_1h or 0.0) / v.cnt_10m)

    spine = pl.DataFrame({"card": ["a", "b", "a", "b"], "timestamp": [at(1), at(2), at(1.5), at(3)]})
    with pytest.raises(FeatureFunctionError, match=r"'ratio' raised ValueError: bad card \(key \{'card': 'b'\}\) at spine row 1 \(time 2024-01-01 00:02:00"):
        client.get_historical_features(spine, ["ratio"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = client.get_historical_features(spine, ["ratio"], on_error="null")
    assert out["per_swipe"].to_list() == [2.5, None, 2.5, None]
    assert [str(w.message) for w in caught if issubclass(w.category, FeatureErrorsWarning)] == [
        "get_historical_features: on-demand functions raised, their features are null there (on_error='null'): 'ratio': 2 row(s)"
    ]
    with pytest.raises(ValueError, match="on_error must be 'raise' or 'null'"):
        client.get_historical_features(spine, ["ratio"], on_error="skip")


def test_a_null_key_in_the_spine_gives_null_features(served):
    client, _ = served
    spine = pl.DataFrame({"card": ["a", None], "timestamp": [at(1), at(1)]})
    out = client.get_historical_features(spine, ["velocity.cnt_10m"])
    assert out["cnt_10m"].to_list() == [2, None]
