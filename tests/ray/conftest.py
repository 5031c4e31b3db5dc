"""A local Ray session per test module (started once, ~3 s), small enough for a shared
2-core machine: 2 CPUs, no dashboard. Actors come from the runtime's pool, so the jobs
of a module reuse the same few worker processes."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import ray


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    # Pipelines defined in test modules are shipped by value: workers cannot import tests.
    for name, module in list(sys.modules.items()):
        shipped = ("test_consistency", "test_ray", "test_operators", "test_entity_layer", "test_request_time")
        if name.split(".")[-1].startswith(shipped) and getattr(module, "__file__", None):
            ray.cloudpickle.register_pickle_by_value(module)
    try:
        yield ray
    finally:
        from volga.runtime.ray.runtime import RayRuntime

        RayRuntime.shutdown()
        ray.shutdown()
