"""``@on_demand`` declarations: what is accepted, and every error naming its culprit."""

from __future__ import annotations

import datetime
import re
from typing import Optional

import pytest
from serving_defs import SpendTrend, UserSpentInfo, UserStats, user_spent, user_stats

import volga
from volga import OnDemandDef, OnDemandDefinitionError, entity, field, on_demand


@entity
class ByProduct:
    product_id: str = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    score: float


@entity
class IntKeyed:
    user_id: int = field(key=True)
    timestamp: datetime.datetime = field(timestamp=True)
    score: float


def raises(match: str):
    return pytest.raises(OnDemandDefinitionError, match=re.escape(match))


def test_definition_is_frozen_data():
    assert isinstance(user_stats, OnDemandDef)
    assert user_stats.name == "user_stats" and user_stats.output is UserStats
    assert [(d.name, d.query, d.param) for d in user_stats.dependencies] == [("user_spent", "latest", "spent")]
    with pytest.raises(AttributeError):
        user_stats.output = SpendTrend  # type: ignore[misc]


def test_default_query_is_latest_and_optional_is_accepted():
    @on_demand(dependencies=[user_spent])
    def maybe(spent: Optional[UserSpentInfo]) -> UserStats: ...

    assert maybe.dependencies[0].query == "latest" and maybe.dependencies[0].optional


def test_per_request_args_are_recorded_with_defaults():
    @on_demand(dependencies=[(user_spent, "last_n")])
    def f(rows: list[UserSpentInfo], threshold: float = 1.5, *, label: str = "x") -> UserStats: ...

    assert [(a.name, a.default) for a in f.args] == [("threshold", 1.5), ("label", "x")]


def test_the_function_stays_callable():
    spent = UserSpentInfo(user_id="1", timestamp=datetime.datetime(2025, 1, 1), avg_spent_7d=2.0,
                          num_purchases_1h=3, max_price_1d=4.0)
    assert user_stats(spent).total_spent == 6.0


@pytest.mark.parametrize(
    "query, annotation, expected",
    [
        ("latest", "list[UserSpentInfo]", "parameter 'spent' receives user_spent (latest) and must be typed UserSpentInfo or Optional[UserSpentInfo]"),
        ("last_n", "UserSpentInfo", "parameter 'spent' receives user_spent (last_n) and must be typed list[UserSpentInfo]"),
        ("range", "Optional[list[UserSpentInfo]]", "parameter 'spent' receives user_spent (range) and must be typed list[UserSpentInfo]"),
        ("latest", "UserStats", "parameter 'spent' receives user_spent (latest) and must be typed UserSpentInfo"),
    ],
)
def test_parameter_type_must_match_dependency_output(query, annotation, expected):
    namespace = {"UserSpentInfo": UserSpentInfo, "UserStats": UserStats, "Optional": Optional}
    exec(f"def bad(spent: {annotation}) -> UserStats: ...", namespace)
    with raises(f"on_demand bad: {expected}"):
        on_demand(dependencies=[(user_spent, query)])(namespace["bad"])


def test_missing_annotation_names_parameter():
    with raises("on_demand bad: parameter 'spent' receives dependency user_spent: annotate it with UserSpentInfo"):
        @on_demand(dependencies=[user_spent])
        def bad(spent) -> UserStats: ...


def test_return_must_be_an_entity():
    with raises("on_demand bad: the return annotation"):
        @on_demand(dependencies=[user_spent])
        def bad(spent: UserSpentInfo) -> dict: ...
    with raises("on_demand worse: annotate the return type"):
        @on_demand(dependencies=[user_spent])
        def worse(spent: UserSpentInfo): ...


def test_request_args_need_defaults():
    with raises("on_demand bad: parameter 'threshold' comes after the 1 dependencies, so it is a per-request argument and needs a default"):
        @on_demand(dependencies=[user_spent])
        def bad(spent: UserSpentInfo, threshold: float) -> UserStats: ...


def test_star_args_rejected():
    with raises("on_demand bad: *kw/**kw parameters are not supported"):
        @on_demand(dependencies=[user_spent])
        def bad(spent: UserSpentInfo, **kw) -> UserStats: ...


def test_fewer_parameters_than_dependencies():
    with raises("on_demand bad: declares 2 dependencies but takes 1 parameter(s)"):
        @on_demand(dependencies=[user_spent, user_stats])
        def bad(spent: UserSpentInfo) -> UserStats: ...


def test_dependency_params_must_be_positional():
    with raises("on_demand bad: parameter 'spent' receives dependency user_spent and must be positional"):
        @on_demand(dependencies=[user_spent])
        def bad(*, spent: UserSpentInfo) -> UserStats: ...


def test_unknown_query_and_non_latest_on_demand_dependency():
    with raises("on_demand bad: dependency user_spent has query 'first'; use one of ['latest', 'last_n', 'range']"):
        @on_demand(dependencies=[(user_spent, "first")])
        def bad(spent: UserSpentInfo) -> UserStats: ...
    with raises("on_demand worse: dependency user_stats is an on-demand feature (one row per request key), so its query must be 'latest'"):
        @on_demand(dependencies=[(user_stats, "last_n")])
        def worse(stats: list[UserStats]) -> UserStats: ...


def test_dependency_must_be_a_pipeline_or_on_demand():
    with raises("on_demand bad: dependency #0 42 is not a @pipeline or @on_demand definition"):
        @on_demand(dependencies=[42])
        def bad(x: UserStats) -> UserStats: ...
    with raises("@on_demand(dependencies=...) takes a list"):
        on_demand(dependencies=user_spent)


def test_dependency_keys_must_be_output_keys():
    with raises("on_demand bad: dependency user_spent is keyed by ['user_id'], but the output ByProduct has keys ['product_id']"):
        @on_demand(dependencies=[user_spent])
        def bad(spent: UserSpentInfo) -> ByProduct: ...
    with raises("on_demand worse: key 'user_id' is str in user_spent but int in the output IntKeyed"):
        @on_demand(dependencies=[user_spent])
        def worse(spent: UserSpentInfo) -> IntKeyed: ...


def test_arg_named_like_a_query_arg_is_rejected():
    with raises("on_demand bad: per-request argument(s) ['n'] share a name with query arguments"):
        @on_demand(dependencies=[(user_spent, "last_n")])
        def bad(rows: list[UserSpentInfo], n: int = 3) -> UserStats: ...


def test_names_resolve_late_and_cycles_are_errors(tmp_path):
    @on_demand(dependencies=["ping_b"])
    def ping_a(b: UserStats) -> UserStats: ...

    @on_demand(dependencies=[ping_a])
    def ping_b(a: UserStats) -> UserStats: ...

    client = volga.Client(data_dir=tmp_path)
    with raises("dependency cycle ping_a -> ping_b -> ping_a"):
        client.register(ping_a, ping_b)


def test_unknown_name_is_reported_at_register(tmp_path):
    @on_demand(dependencies=["nowhere"])
    def lost(x: UserStats) -> UserStats: ...

    with raises("on_demand lost: unknown dependency 'nowhere' for parameter 'x'"):
        volga.Client(data_dir=tmp_path).register(lost)


def test_named_dependency_type_checked_on_resolution(tmp_path):
    @on_demand(dependencies=["user_spent"])
    def by_name(spent: UserStats) -> UserStats: ...

    client = volga.Client(data_dir=tmp_path)
    with raises("on_demand by_name: parameter 'spent' receives user_spent (latest) and must be typed UserSpentInfo"):
        client.register(user_spent, by_name)


def test_register_pulls_in_dependencies(tmp_path):
    client = volga.Client(data_dir=tmp_path)
    client.register(user_stats)
    assert {"user_stats", "user_spent", "user_source", "order_source"} <= set(client.definitions)
