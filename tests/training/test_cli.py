"""``volga historical app.py --spine ... --features ... --out ...``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import training_defs as defs
from training_defs import EVENTS, spine

import volga.cli

APP = Path(__file__).parent / "training_cli_app.py"


def test_cli_writes_what_the_api_returns(tmp_path, monkeypatch, capsys):
    client = defs.client_with(tmp_path / "data", EVENTS)
    monkeypatch.setenv("VOLGA_TRAINING_TEST_DIR", str(tmp_path / "data"))
    s = spine(["a", "b", "a", "zz"], [3, 6, 11, 1], label=[1, 0, 1, 0])
    s.write_parquet(tmp_path / "spine.parquet")
    out = tmp_path / "out" / "train.parquet"
    code = volga.cli.main([
        "historical", str(APP), "--spine", str(tmp_path / "spine.parquet"), "--features", "stats.total,scaled", "recent.count",
        "--out", str(out), "--args", '{"n": 2}', "--ttl", "stats=4m", "--full-names",
    ])
    assert code == 0, capsys.readouterr().err
    assert "wrote 4 rows x 8 columns" in capsys.readouterr().err
    want = client.get_historical_features(
        s, ["stats.total", "scaled", "recent.count"], args={"n": 2}, ttl={"stats": "4m"}, full_names=True
    )
    assert pl.read_parquet(out).equals(want)


def test_cli_csv_spine_key_map_and_errors(tmp_path, monkeypatch, capsys):
    client = defs.client_with(tmp_path / "data", EVENTS)
    monkeypatch.setenv("VOLGA_TRAINING_TEST_DIR", str(tmp_path / "data"))
    s = spine(["a", "b"], [3, 6]).rename({"user": "customer", "timestamp": "ts"})
    s.write_csv(tmp_path / "spine.csv")
    code = volga.cli.main([
        "historical", str(APP), "--spine", str(tmp_path / "spine.csv"), "--features", "stats.total",
        "--out", str(tmp_path / "train.csv"), "--key-map", "user=customer", "--timestamp-column", "ts",
    ])
    assert code == 0, capsys.readouterr().err
    got = pl.read_csv(tmp_path / "train.csv")
    assert got["total"].to_list() == [7.0, 0.0]
    assert client.get_historical_features(s, ["stats.total"], key_map={"user": "customer"}, timestamp_column="ts")["total"].to_list() == [7.0, 0.0]
    capsys.readouterr()
    for argv, message in [
        (["--features", "nope"], "volga historical: unknown feature 'nope'"),
        (["--features", "stats", "--timestamp-column", "when"], "no timestamp column 'when'"),
        (["--features", "stats", "--key-map", "user"], "--key-map user: write KEY=COLUMN"),
        (["--features", "recent", "--args", "[1]"], "--args must be a JSON object"),
        (["--features", "stats", "--ttl", "1h", "--ttl", "stats=2m"], "give one global ttl"),
    ]:
        base = ["historical", str(APP), "--spine", str(tmp_path / "spine.csv"), "--out", str(tmp_path / "x.parquet")]
        code = volga.cli.main([*base, "--timestamp-column", "ts", "--key-map", "user=customer", *argv])
        assert code == 2 and message in capsys.readouterr().err, argv
    code = volga.cli.main(["historical", str(tmp_path / "missing_app.py"), "--spine", str(tmp_path / "spine.csv"),
                           "--features", "stats", "--out", str(tmp_path / "x.parquet")])
    assert code == 2 and "volga historical: no such file" in capsys.readouterr().err


def test_the_volga_command_has_the_subcommand():
    done = subprocess.run([sys.executable, "-m", "volga.cli", "historical", "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0 and "--spine" in done.stdout and "--features" in done.stdout
