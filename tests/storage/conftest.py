"""Store fixtures: every online-store contract test runs once per backend listed here.

To add a backend, add a factory to ``ONLINE_STORES``: it takes the per-key history bound
(the ``history`` fixture) and returns a fresh, empty store (for a shared server, under a unique
namespace). Give it ``marks=`` (e.g. ``pytest.mark.integration``) in ``_PARAMS`` if it
needs a server.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from volga.storage import MemoryOnlineStore, OnlineStore

# Rows each store keeps per key; small so the history bound is cheap to exercise.
HISTORY = 5

ONLINE_STORES: dict[str, Callable[[int], OnlineStore]] = {
    "memory": lambda history: MemoryOnlineStore(history=history),
}

_PARAMS = [pytest.param(kind, id=kind) for kind in ONLINE_STORES]


@pytest.fixture
def history() -> int:
    """The per-key history bound the ``store`` fixture's stores are built with."""
    return HISTORY


@pytest.fixture(params=_PARAMS)
def store(request: pytest.FixtureRequest, history: int) -> Iterator[OnlineStore]:
    """A fresh online store of each backend, keeping ``history`` rows per key."""
    online = ONLINE_STORES[request.param](history)
    try:
        yield online
    finally:
        online.close()
