"""Prometheus metrics scraped while a job runs: counters move and parse with prometheus_client."""

from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cli.conftest import volga_env, wait_for_line
from tests.support.servers import free_port
from volga.console import ConsoleApp

pytestmark = pytest.mark.integration


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``url``, by (name, labels)."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in text_string_to_metric_families(text) for s in f.samples}


def wait_for(url: str, key: tuple, at_least: float, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if samples.get(key, -1) >= at_least:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"{key} stayed below {at_least}: {samples.get(key)}")
        time.sleep(0.1)


def test_volga_run_metrics_move_as_orders_arrive(tmp_path):
    assert subprocess.run([sys.executable, "-m", "volga", "init", "demo"], cwd=tmp_path, env=volga_env(), check=False).returncode == 0
    project = tmp_path / "demo"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "volga", "run", "app.py", "--metrics-port", str(port)], cwd=project,
                            env=volga_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_line(proc, "online job started")
        rows_in = ("volga_source_rows_total", (("source", "orders"),))
        first = wait_for(url, rows_in, 2000)
        assert first[("volga_jobs_running", ())] == 1
        assert first[("volga_source_late_total", (("source", "orders"),))] == 0
        # append orders to the followed log: valid ones 20s and 10s old (lateness is 5s: the
        # first is released, the second waits for the watermark), one invalid, one late
        now = datetime.datetime.now(datetime.timezone.utc)
        lines = [
            {"user_id": "u1", "product": "mug", "price": 10.0, "ordered_at": (now - datetime.timedelta(seconds=20)).isoformat()},
            {"user_id": "u2", "product": "mug", "price": "ten", "ordered_at": now.isoformat()},
            {"user_id": "u3", "product": "mug", "price": 5.0, "ordered_at": (now - datetime.timedelta(days=5)).isoformat()},
            {"user_id": "u1", "product": "mug", "price": 12.0, "ordered_at": (now - datetime.timedelta(seconds=10)).isoformat()},
        ]
        with open(project / "data" / "orders.jsonl", "a") as log:
            log.write("".join(json.dumps(line) + "\n" for line in lines))
        second = wait_for(url, ("volga_source_late_total", (("source", "orders"),)), 1)
        second = wait_for(url, ("volga_pipeline_rows_total", (("pipeline", "user_spend"),)), 2001)
        assert second[rows_in] == 2003  # three valid rows read (the late one counts as read, then set aside)
        assert second[("volga_source_rejected_total", (("source", "orders"),))] == 1
        assert 10 <= second[("volga_source_event_lag_seconds", (("source", "orders"),))] < 120  # newest read: 10s old
        assert 20 <= second[("volga_pipeline_freshness_seconds", (("pipeline", "user_spend"),))] < 120  # newest written: 20s old
        watermark = second[("volga_pipeline_watermark_seconds", (("pipeline", "user_spend"),))]
        assert watermark == pytest.approx(now.timestamp() - 15, abs=1e-3)  # newest read minus 5s lateness
        window = ("volga_operator_batch_seconds_count", (("job", "user_spend"), ("operator", "window"), ("step", "1")))
        assert second[window] >= 2 and second[window] > first.get(window, 0)
        writes = ("volga_online_store_write_seconds_count", (("pipeline", "user_spend"),))
        assert second[writes] > first[writes]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()


def test_feature_server_counts_requests_by_feature_and_status(tmp_path):
    from volga.scaffold import init_project
    from volga.serving.client import OnDemandClient
    from volga.serving.errors import FeatureNotFound
    from volga.serving.run import load_app

    init_project(tmp_path / "demo")
    client = load_app(str(tmp_path / "demo" / "app.py"))
    console = ConsoleApp(client, "tok")  # before the job: its store writes are timed
    client.materialize([client.definitions["user_spend"]], mode="offline", write_online=True)
    server = console.mount(client.serve(auth_token="tok"))
    try:
        remote = OnDemandClient(server.url, auth_token="tok")
        remote.request(target_features=["user_spend"], keys=[{"user_id": "u1"}])
        remote.request(target_features=["user_spend", "spend_profile"], keys=[{"user_id": "u2"}])
        with pytest.raises(FeatureNotFound):
            remote.request(target_features=["nope"], keys=[{"user_id": "u1"}])
        request = urllib.request.Request(server.url + "/metrics")
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(request, timeout=10)
        assert denied.value.code == 401  # same token as the features
        request.add_header("Authorization", "Bearer tok")
        with urllib.request.urlopen(request, timeout=10) as response:
            samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                       for f in text_string_to_metric_families(response.read().decode()) for s in f.samples}
    finally:
        server.stop()
    assert samples[("volga_serving_requests_total", (("feature", "user_spend"), ("status", "200")))] == 2
    assert samples[("volga_serving_requests_total", (("feature", "spend_profile"), ("status", "200")))] == 1
    assert samples[("volga_serving_requests_total", (("feature", "nope"), ("status", "404")))] == 1
    assert samples[("volga_serving_request_seconds_count", ())] == 3
    assert samples[("volga_online_store_write_seconds_count", (("pipeline", "user_spend"),))] == 1
    assert samples[("volga_pipeline_rows_total", (("pipeline", "user_spend"),))] == 2000


def test_checkpoint_metrics_of_volga_run(tmp_path):
    assert subprocess.run([sys.executable, "-m", "volga", "init", "demo"], cwd=tmp_path, env=volga_env(), check=False).returncode == 0
    project = tmp_path / "demo"
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "volga", "run", "app.py", "--metrics-port", str(port),
                             "--checkpoint-dir", str(tmp_path / "checkpoints"), "--checkpoint-interval", "200ms"],
                            cwd=project, env=volga_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_line(proc, "online job started")
        first = wait_for(url, ("volga_checkpoints_total", ()), 1)
        assert first[("volga_checkpoint_size_bytes", ())] > 1000  # the window state and the store's rows
        assert 0 < first[("volga_checkpoint_duration_seconds", ())] < 60
        assert 0 <= first[("volga_checkpoint_age_seconds", ())] < 60
        later = wait_for(url, ("volga_checkpoints_total", ()), first[("volga_checkpoints_total", ())] + 1)
        assert later[("volga_checkpoints_total", ())] > first[("volga_checkpoints_total", ())]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
