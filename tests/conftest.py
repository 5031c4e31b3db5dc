"""Shared fixtures. Every test gets its own stores (no global state to reset)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture
def client(tmp_path):
    import volga

    return volga.Client(data_dir=tmp_path / "volga_data")
