"""Shared fixtures. Every test gets its own stores (no global state to reset)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The repository root, so tests import their helpers as ``tests.support`` (test-only code
# kept out of the installed package); --import-mode=importlib does not add it itself.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


@pytest.fixture
def client(tmp_path):
    import volga

    return volga.Client(data_dir=tmp_path / "volga_data")


# -- real servers for integration tests (started once per session, on free ports) -------------
# Shared by tests/storage (the Redis online store) and tests/integration (the connectors).


@pytest.fixture(scope="session")
def redis_server():
    from tests.support.servers import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    from tests.support.servers import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def kafka_broker():
    from tests.support.servers import KafkaBroker

    with KafkaBroker() as broker:
        yield broker
