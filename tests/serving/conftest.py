"""Fixtures for the serving tests: one materialized client and one server per module."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import serving_defs  # noqa: E402

import volga  # noqa: E402

# Helper modules, not tests (the doctest collector would import them, running their setup).
collect_ignore = ["serving_defs.py", "cli_app.py", "cli_shared_app.py", "serve_process.py"]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A client with every serving definition registered and the default orders materialized."""
    return serving_defs.make_client(tmp_path_factory.mktemp("serving"))


@pytest.fixture(scope="module")
def server(served):
    with served.serve(port=0) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    with volga.OnDemandClient(server.url, timeout=10) as client:
        yield client


@pytest.fixture(scope="module")
def known_users(served):
    """Users with a user_spent row, and one that has none."""
    ids = sorted(set(served.get_offline("user_spent")["user_id"].to_list()), key=int)
    return ids
