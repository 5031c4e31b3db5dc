"""Shared fixtures. Every test gets its own stores (no global state to reset)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def client(tmp_path):
    import volga

    return volga.Client(data_dir=tmp_path / "volga_data")


# -- real servers for integration tests (started once per session, on free ports) -------------
# Shared by tests/storage (the Redis online store) and tests/integration (the connectors).


@pytest.fixture(scope="session")
def redis_server():
    from volga.testing.servers import RedisServer

    with RedisServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_server():
    from volga.testing.servers import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def kafka_broker():
    from volga.testing.servers import KafkaBroker

    with KafkaBroker() as broker:
        yield broker
