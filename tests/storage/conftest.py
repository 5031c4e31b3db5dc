"""Store fixtures: every online-store contract test runs once per backend listed here.

To add a backend, add a factory to ``ONLINE_STORES``: it takes the per-key history bound
(the ``history`` fixture) and returns a fresh, empty store (for a shared server, under a unique
namespace). A backend that needs a server names, in ``_SERVERS``, the session fixture that
starts it (tests/conftest.py); the factory then also gets that fixture's value, and the
backend's tests carry the ``integration`` marker.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from volga.storage import MemoryOnlineStore, OnlineStore

# Rows each store keeps per key; small so the history bound is cheap to exercise.
HISTORY = 5

ONLINE_STORES: dict[str, Callable[..., OnlineStore]] = {
    "memory": lambda history: MemoryOnlineStore(history=history),
    "redis": lambda history, server: _redis_store(server.url, history),
}

# Backends that need a server: the session fixture (tests/conftest.py) that starts it. Its
# value is passed to the factory after ``history``.
_SERVERS = {"redis": "redis_server"}

_PARAMS = [
    pytest.param(kind, id=kind, marks=[pytest.mark.integration] if kind in _SERVERS else [])
    for kind in ONLINE_STORES
]


def _redis_store(url: str, history: int) -> OnlineStore:
    from volga.storage.online.redis import RedisOnlineStore

    return RedisOnlineStore(url, history=history, namespace=f"test-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def history() -> int:
    """The per-key history bound the ``store`` fixture's stores are built with."""
    return HISTORY


@pytest.fixture(params=_PARAMS)
def store(request: pytest.FixtureRequest, history: int) -> Iterator[OnlineStore]:
    """A fresh online store of each backend, keeping ``history`` rows per key."""
    server: list[Any] = [request.getfixturevalue(_SERVERS[request.param])] if request.param in _SERVERS else []
    online = ONLINE_STORES[request.param](history, *server)
    try:
        yield online
    finally:
        online.close()
