"""Property: for the same request, the server (through ``OnDemandClient``) and the
in-process path (``client.get_on_demand``) give identical rows, or the same error."""

from __future__ import annotations

import datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_defs import START

from volga.serving import ServingError

# target -> (query args it takes, function args it takes)
TARGETS = {
    "user_stats": ((), ()),
    "spend_trend": (("n",), ("threshold",)),
    "window_spend": (("start", "end"), ()),
    "user_offer": ((), ("boost",)),
    "spend_level": ((), ()),
    "user_spent": ((), ()),
}
USERS = [str(i) for i in range(12)] + ["999", "nobody"]
instants = st.integers(0, 26 * 60).map(lambda m: START + datetime.timedelta(minutes=m))


@st.composite
def requests(draw):
    target = draw(st.sampled_from(sorted(TARGETS)))
    query_names, udf_names = TARGETS[target]

    def one_key():
        user = draw(st.one_of(st.sampled_from(USERS), st.integers(0, 20) if draw(st.integers(0, 30)) == 0 else st.nothing()))
        k = {"user_id": user}
        if target == "user_offer":
            k["offer"] = draw(st.sampled_from(["gold", "tin", ""]))
        return k

    keys = [one_key() for _ in range(draw(st.integers(0, 4)))]
    query: dict = {}
    for name in query_names:
        if draw(st.integers(0, 12)) == 0:
            continue  # missing: both paths must reject it alike
        if name == "n":
            query["n"] = draw(st.integers(0, 6))
        else:
            query[name] = draw(st.one_of(st.none(), instants))
    udf: dict = {}
    for name in udf_names:
        if draw(st.booleans()):
            udf[name] = draw(st.floats(-50, 500, allow_nan=False))
    if draw(st.integers(0, 15)) == 0:
        udf["unknown_arg"] = 1
    return target, keys, query, udf


def as_dict(row):
    return None if row is None else dict(row)


def outcome(call):
    try:
        return "ok", call()
    except ServingError as e:
        return "error", (type(e).__name__, e.field)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_server_and_in_process_agree(served, http, request):
    target, keys, query, udf = request
    local = outcome(lambda: [as_dict(r) for r in served.get_on_demand(target, keys, {**query, **udf})])
    remote = outcome(lambda: http.request([target], {target: keys}, query_args=query, udf_args=udf)[target])
    if local[0] == "error":
        # Paths differ in their prefix only (in process: "keys[0]", "args"; server:
        # "feature_keys.<name>[0]", "query_args"/"udf_args"): compare the field named.
        assert remote[0] == "error" and remote[1][0] == local[1][0]
        assert remote[1][1].rsplit(".", 1)[-1] == local[1][1].rsplit(".", 1)[-1]
    else:
        assert remote == local
