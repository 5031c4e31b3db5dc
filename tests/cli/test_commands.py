"""The operating commands, run as subprocesses on a project made by ``volga init``."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.cli.conftest import volga, volga_env, wait_for_line

pytestmark = pytest.mark.integration


def test_version_and_python_dash_m(tmp_path):
    import volga as package

    done = volga("--version", cwd=tmp_path)
    assert done.returncode == 0 and done.stdout.strip() == f"volga {package.__version__}"
    helped = volga("--help", cwd=tmp_path)
    assert all(cmd in helped.stdout for cmd in ("run", "materialize", "list", "describe", "ui", "init", "serve", "historical"))


def test_init_makes_a_project_whose_own_test_passes(project):
    assert sorted(p.name for p in project.iterdir()) == ["README.md", "app.py", "data", "test_app.py"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_app.py"], cwd=project,
                          env=volga_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


def test_init_refuses_a_directory_with_files(project):
    again = volga("init", str(project), cwd=project.parent)
    assert again.returncode == 2
    assert "already exists and is not an empty directory" in again.stderr


def test_list_shows_every_definition_with_tags_and_owner(project):
    done = volga("list", "app.py", cwd=project)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split()[:3] == ["KIND", "NAME", "ENTITY"]
    rows = {line.split()[1]: line.split() for line in lines[1:]}
    assert rows["orders"][:5] == ["source", "orders", "Order", "user_id", "orders,raw"]
    assert rows["user_spend"][:6] == ["pipeline", "user_spend", "UserSpend", "user_id", "spend", "shop-data"]
    assert rows["spend_profile"][0] == "on_demand"
    as_json = json.loads(volga("list", "app.py", "--json", cwd=project).stdout)
    spend = next(e for e in as_json if e["name"] == "user_spend")
    assert spend["upstream"] == ["orders"] and spend["downstream"] == ["spend_profile"]
    assert spend["description"].startswith("How much and how often each user buys")


def test_describe_gives_schema_windows_and_lineage(project):
    done = volga("describe", "app.py", "user_spend", cwd=project)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert out.startswith("user_spend (pipeline) -> UserSpend")
    assert "spent_1d = Sum(price, 1d) by user_id" in out
    assert "orders_1h = Count(1h) by user_id" in out
    assert "reads:   orders" in out and "read by: spend_profile" in out
    assert "user_id              str          key" in out
    missing = volga("describe", "app.py", "nope", cwd=project)
    assert missing.returncode == 2
    assert "no source, pipeline or on-demand feature named 'nope'; known: orders, user_spend, spend_profile" in missing.stderr


def test_materialize_backfills_with_progress_lines(project):
    done = volga("materialize", "app.py", "--progress-interval", "0.01", cwd=project)
    assert done.returncode == 0, done.stderr
    assert "volga: offline user_spend: done, 2,000 rows read, 2,000 rows written" in done.stderr
    assert "volga materialize: user_spend: 2,000 offline rows (2,000 computed)" in done.stderr
    rows = pl.read_parquet(next((project / "volga_data").rglob("*.parquet")))
    assert rows.height == 2000


def test_materialize_time_range_keeps_rows_outside(project):
    first = volga("materialize", "app.py", cwd=project)
    assert first.returncode == 0, first.stderr
    # the order log changes: every price doubles; re-backfill only the last 12 hours
    log = project / "data" / "orders.jsonl"
    orders = [json.loads(line) for line in log.read_text().splitlines()]
    for o in orders:
        o["price"] = o["price"] * 2
    log.write_text("\n".join(json.dumps(o) for o in orders) + "\n")
    cut = orders[len(orders) * 3 // 4]["ordered_at"]
    done = volga("materialize", "app.py", "--start", cut, cwd=project)
    assert done.returncode == 0, done.stderr
    import volga as package

    client = package.Client(data_dir=project / "volga_data")
    rows = client.get_offline("user_spend").sort("ordered_at", maintain_order=True)
    cut_ts = pl.Series([cut]).str.to_datetime(time_zone="UTC")[0]
    before, after = rows.filter(pl.col("ordered_at") < cut_ts), rows.filter(pl.col("ordered_at") >= cut_ts)
    assert rows.height == 2000 and before.height and after.height
    # the newly written rows see doubled prices; the kept rows still the old ones
    assert after["max_price_7d"].max() > 120  # doubled prices go up to 240; the originals stay under 120
    assert before["max_price_7d"].max() <= 120


def test_materialize_rejects_bad_flags(project):
    bad_time = volga("materialize", "app.py", "--start", "yesterday", cwd=project)
    assert bad_time.returncode == 2 and "--start 'yesterday' is not an ISO 8601 time" in bad_time.stderr
    bad_pipe = volga("materialize", "app.py", "--pipelines", "nope", cwd=project)
    assert bad_pipe.returncode == 2 and "no pipeline named 'nope'; pipelines: user_spend" in bad_pipe.stderr
    bad_params = volga("materialize", "app.py", "--params", "[1]", cwd=project)
    assert bad_params.returncode == 2 and "--params must be a JSON object" in bad_params.stderr
    no_app = volga("list", "missing.py", cwd=project)
    assert no_app.returncode == 2 and "no such file 'missing.py'" in no_app.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_is_a_service_that_stops_cleanly_on_a_signal(project, sig):
    proc = subprocess.Popen([sys.executable, "-m", "volga", "run", "app.py"], cwd=project, env=volga_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, "online job started: user_spend")
        assert proc.poll() is None  # following the order log: it keeps running
        proc.send_signal(sig)
        rest = proc.communicate(timeout=60)[1]
    finally:
        proc.kill()
    assert proc.returncode == 0, rest
    assert f"{sig.name} received: stopping" in rest
    assert "stopped cleanly: rows in {'orders': 2000}" in rest


def test_run_failing_to_start_exits_non_zero_with_one_line(project):
    (project / "data" / "orders.jsonl").unlink()
    done = volga("run", "app.py", cwd=project)
    assert done.returncode == 1
    (reason,) = [line for line in done.stderr.splitlines() if line.startswith("volga run:")]
    assert "cannot start user_spend" in reason and "orders.jsonl" in reason


def test_run_with_a_checkpoint_dir_takes_a_final_checkpoint_and_resumes_from_it(project):
    checkpoints = project / "checkpoints"
    for attempt in range(2):
        proc = subprocess.Popen([sys.executable, "-m", "volga", "run", "app.py", "--checkpoint-dir", str(checkpoints),
                                 "--checkpoint-keep", "1"],
                                cwd=project, env=volga_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            started = "".join(wait_for_line(proc, "online job started: user_spend"))
            proc.send_signal(signal.SIGTERM)
            rest = proc.communicate(timeout=60)[1]
        finally:
            proc.kill()
        assert proc.returncode == 0, rest
        manifests = sorted(checkpoints.glob("chk-*.json"))
        assert len(manifests) == 1, f"not one checkpoint kept after SIGTERM (attempt {attempt}): {manifests} {rest}"
    assert "resumed from checkpoint" in started, started  # the second run restored the first one's final state


def test_run_refuses_checkpoint_interval_without_dir(project):
    done = volga("run", "app.py", "--checkpoint-interval", "10s", cwd=project)
    assert done.returncode == 2
    assert "--checkpoint-interval needs --checkpoint-dir" in done.stderr
    done = volga("run", "app.py", "--checkpoint-keep", "2", cwd=project)
    assert done.returncode == 2 and "--checkpoint-keep needs --checkpoint-dir" in done.stderr


def test_historical_and_serve_work_on_the_new_project(project):
    done = volga("historical", "app.py", "--spine", "data/spine.csv", "--features", "user_spend", "spend_profile.big_spender",
                 "--out", "train.parquet", "--compute", cwd=project)
    assert done.returncode == 0, done.stderr
    train = pl.read_parquet(project / "train.parquet")
    assert train.height == 12 and {"spent_1d", "big_spender"} <= set(train.columns)
    proc = subprocess.Popen([sys.executable, "-m", "volga", "serve", "app.py", "--port", "0"], cwd=project,
                            env=volga_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "volga: serving" in line, line + proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" on ", 1)[1].split(" ", 1)[0]
        import urllib.request

        with urllib.request.urlopen(url + "/health", timeout=10) as r:
            assert json.loads(r.read())["status"] == "ok"
        with urllib.request.urlopen(url + "/ui", timeout=10) as r:
            assert "spend_profile" in r.read().decode()
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            assert "volga_serving_request_seconds" in r.read().decode()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0


def test_ui_serves_the_console_until_stopped(project):
    import urllib.error
    import urllib.request

    from tests.support.servers import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "volga", "ui", "app.py", "--port", str(port), "--auth-token", "t0k"],
                            cwd=project, env=volga_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert f"the console is at http://127.0.0.1:{port}/ui" in line, line
        with pytest.raises(urllib.error.HTTPError) as denied:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ui", timeout=10)
        assert denied.value.code == 401
        request = urllib.request.Request(f"http://127.0.0.1:{port}/ui/feature/spend_profile")
        request.add_header("Authorization", "Bearer t0k")
        with urllib.request.urlopen(request, timeout=10) as response:
            page = response.read().decode()
        assert "Whether the user spent more than `threshold`" in page and "reads user_spend (latest)" in page
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()


BOOM_APP = '''
import datetime
import volga
from volga import Count, Entity, entity, field, pipeline, source
from volga.sources.base import Source, SourceReader


@entity
class Tick:
    key: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)


@entity
class TickCount:
    key: str = field(key=True)
    at: datetime.datetime = field(timestamp=True)
    n: int


class BrokenReader(SourceReader):
    polls = 0

    def poll(self, max_rows):
        self.polls += 1
        if self.polls > 3:
            raise RuntimeError("the disk is on fire\\nsecond line of detail")
        return None

    @property
    def finished(self):
        return False


class Broken(Source):
    @property
    def bounded(self):
        return False

    def open(self, schema, *, name, mode=None):
        return BrokenReader()


@source(Tick)
def ticks() -> volga.Source:
    return Broken()


@pipeline(dependencies=[ticks], output=TickCount)
def tick_count(t: Entity) -> Entity:
    return t.group_by(keys=["key"]).aggregate([Count(window="1h", into="n")])


client = volga.Client()
'''


def test_run_exits_1_with_one_line_when_the_job_fails(tmp_path):
    (tmp_path / "boom.py").write_text(BOOM_APP)
    done = volga("run", "boom.py", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "volga run: job failed: RuntimeError: the disk is on fire second line of detail"


def test_the_installed_volga_script_runs(tmp_path):
    script = Path(sys.executable).parent / "volga"
    assert script.exists(), f"no {script}: install the package into this venv (pip install -e .)"
    done = subprocess.run([str(script), "init", "demo"], cwd=tmp_path, env=volga_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    listed = subprocess.run([str(script), "list", "app.py"], cwd=tmp_path / "demo", env=volga_env(), capture_output=True,
                            text=True, timeout=120, check=False)
    assert listed.returncode == 0 and "user_spend" in listed.stdout
