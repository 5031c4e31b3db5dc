"""``volga serve app.py``: one process, auth from the environment, --workers."""

from __future__ import annotations

import time

import pytest
from serve_process import start, stop, wait_url

import volga
from volga.serving import Unauthorized


@pytest.mark.slow
def test_serve_app_module_with_token_from_env():
    process = start("cli_app.py", "--port", "0", env={"VOLGA_AUTH_TOKEN": "tok"})
    try:
        url = wait_url(process)
        with pytest.raises(Unauthorized):
            volga.OnDemandClient(url).request(["user_stats"], keys=[{"user_id": "1"}])
        client = volga.OnDemandClient(url, auth_token="tok")
        rows = client.request(["user_stats", "spend_trend"], keys=[{"user_id": "1"}, {"user_id": "999"}], query_args={"n": 2})
        assert rows["user_stats"][0]["user_id"] == "1" and rows["user_stats"][1] is None
        assert {f["name"] for f in client.features()} >= {"user_stats", "spend_trend", "window_spend", "user_offer", "user_spent"}
    finally:
        assert stop(process) == 0


def test_workers_refused_with_in_memory_store():
    process = start("cli_app.py", "--port", "0", "--workers", "2")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "--workers 2 needs an online store that the worker processes share" in err
    assert "in-memory store" in err


@pytest.mark.slow
@pytest.mark.integration
def test_workers_share_one_port_over_a_shared_redis_store(redis_server, tmp_path):
    import serving_defs

    from volga.storage import RedisOnlineStore

    writer = volga.Client(online_store=RedisOnlineStore(redis_server.url, namespace="cli-shared"), data_dir=tmp_path)
    writer.register(serving_defs.user_spent, serving_defs.user_stats)
    writer.materialize([serving_defs.user_spent], mode="offline", write_online=True)
    (expected,) = writer.get_on_demand("user_stats", keys=[{"user_id": "1"}])
    process = start("cli_shared_app.py:client", "--port", "0", "--workers", "2", env={"VOLGA_TEST_REDIS_URL": redis_server.url})
    try:
        url = wait_url(process, timeout=120)
        pids = set()
        deadline = time.time() + 20
        while len(pids) < 2 and time.time() < deadline:
            client = volga.OnDemandClient(url)  # a new connection each time: the kernel spreads them
            pids.add(client.health()["pid"])
            rows = client.request(["user_stats"], keys=[{"user_id": "1"}])["user_stats"]
            assert rows[0]["user_id"] == "1"  # the data came from Redis: the workers never materialized
            assert rows[0]["total_spent"] == expected.total_spent
            client.close()
        assert len(pids) == 2
    finally:
        assert stop(process) == 0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_app.py", "no such file 'no_such_app.py'"),
        ("serving_defs.py", "must define one module-level volga.Client (found none)"),
        ("cli_app.py:nobody", "has no volga.Client named 'nobody'"),
    ],
)
def test_bad_app_spec(spec, message):
    process = start(spec, "--port", "0")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2 and message in err


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.ray
def test_ray_replicas_share_one_port_over_redis(redis_server, tmp_path):
    import serving_defs

    from volga.storage import RedisOnlineStore

    writer = volga.Client(online_store=RedisOnlineStore(redis_server.url, namespace="cli-shared"), data_dir=tmp_path)
    writer.register(serving_defs.user_spent, serving_defs.user_stats)
    writer.materialize([serving_defs.user_spent], mode="offline", write_online=True)
    (expected,) = writer.get_on_demand("user_stats", keys=[{"user_id": "1"}])
    env = {"VOLGA_TEST_REDIS_URL": redis_server.url, "RAY_AUTH_MODE": "disabled"}
    process = start("cli_shared_app.py:client", "--port", "0", "--ray", "--replicas", "2", env=env)
    try:
        url = wait_url(process, timeout=180)
        pids = set()
        deadline = time.time() + 30
        while len(pids) < 2 and time.time() < deadline:
            client = volga.OnDemandClient(url)  # a new connection each time: the kernel spreads them
            pids.add(client.health()["pid"])
            assert client.request(["user_stats"], keys=[{"user_id": "1"}])["user_stats"][0]["total_spent"] == expected.total_spent
            client.close()
        assert len(pids) == 2
    finally:
        assert stop(process) == 0


def test_ray_serving_refuses_the_in_memory_store():
    process = start("cli_app.py", "--port", "0", "--ray", "--replicas", "2")
    _, err = process.communicate(timeout=120)
    assert process.returncode == 2
    assert "volga serve --ray: the replicas are separate processes and need an online store they share" in err
