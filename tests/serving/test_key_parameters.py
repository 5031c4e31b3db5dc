"""A parameter after the dependencies named like an output key field receives the request
key's value and needs no default (README "Keys"); any other one is a per-request
argument and needs a default."""

from __future__ import annotations

import datetime
import re
from typing import Optional

import pytest
from serving_defs import START, SpendLevel, UserSpentInfo, user_spent

from volga import OnDemandDefinitionError, on_demand


@on_demand(dependencies=[user_spent])
def level_by_key(spent: Optional[UserSpentInfo], user_id: str) -> SpendLevel:
    return SpendLevel(user_id=user_id, timestamp=spent.timestamp if spent else START,
                      level="none" if spent is None else "some")


def test_key_parameter_needs_no_default_and_receives_the_key(served, known_users):
    assert [a.name for a in level_by_key.args] == ["user_id"]
    missing, known = served.get_on_demand("level_by_key", [{"user_id": "999"}, {"user_id": known_users[0]}])
    assert (missing.user_id, missing.level) == ("999", "none")
    assert (known.user_id, known.level) == (known_users[0], "some")


def test_other_parameters_still_need_a_default():
    with pytest.raises(OnDemandDefinitionError, match=re.escape(
        "parameter 'region' comes after the 1 dependencies, so it is a per-request argument and needs a default "
        "(or is named like a key field of SpendLevel ['user_id']"
    )):
        @on_demand(dependencies=[user_spent])
        def bad(spent: Optional[UserSpentInfo], region: str) -> SpendLevel: ...


def test_the_function_is_called_directly_with_the_key_too():
    row = level_by_key(None, "7")
    assert row.user_id == "7" and row.timestamp == START and isinstance(START, datetime.datetime)
