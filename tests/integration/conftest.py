"""Fixtures for the connector tests. The servers are session fixtures in tests/conftest.py
(``redis_server``, ``postgres_server``, ``kafka_broker``); tests that restart a server or need
credentials start their own from ``tests.support.servers``. The quickstart pipeline and the
batch reference are in ``volga.testing.quickstart``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest


@pytest.fixture
def unique() -> Iterator[str]:
    """A name no other test uses (topics, streams, tables, groups, namespaces)."""
    yield f"t{uuid.uuid4().hex[:10]}"
