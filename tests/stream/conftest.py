import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # stream_runs: the runs every test is parametrized over

try:  # the Ray session fixture of tests/ray (one session per module), when Ray is installed
    import ray  # noqa: F401

    _spec = importlib.util.spec_from_file_location("volga_tests_ray_conftest", Path(__file__).parent.parent / "ray" / "conftest.py")
    assert _spec is not None and _spec.loader is not None
    _ray_conftest = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_ray_conftest)
    ray_session = _ray_conftest.ray_session
except ImportError:
    ray_session = None


@pytest.fixture(autouse=True)
def _ray_for_ray_runs(request: pytest.FixtureRequest) -> None:
    """A test parametrized with a Ray run gets the module's Ray session."""
    callspec = getattr(request.node, "callspec", None)
    run = callspec.params.get("run") if callspec is not None else None
    if getattr(run, "ray", 0):
        if ray_session is None:
            pytest.skip("the Ray runs need the 'ray' extra: pip install 'volga[ray]'")
        request.getfixturevalue("ray_session")
