"""Training-set benchmark: ``get_historical_features`` against Feast's, on the same data.

    .venv/bin/python benchmarks/training.py                      # 10M events, 1M-row spine, 10 features
    .venv/bin/python benchmarks/training.py --skip-feast
    .venv/bin/python benchmarks/training.py --events 2000000 --spine 200000

1. Generates ``--events`` orders (30 days, ``--users`` buyers and ``--products`` products,
   uniformly: the kindest keys for Feast, see below) and
   backfills two pipelines over them with Volga (offline mode): ``user_features`` (5
   windowed aggregates per buyer) and ``product_features`` (5 per product), one output row
   per order each. That is the offline data both systems read; the backfill time is printed
   for orientation only.
2. The spine: ``--spine`` rows drawn from the orders (buyer, product, the order's time plus
   up to a minute), in random order, with a ``row_id``.
3. Volga: ``client.get_historical_features(spine, 10 features)`` in a fresh process (so its
   peak memory is its own): seconds and peak RSS.
4. Feast (``get_historical_features`` with its local file offline store, ``to_df()``), in its
   own virtualenv under ``benchmarks/.feast-venv`` (gitignored; created on first run with
   ``pip install feast``; Feast pins pandas < 3), over Parquet exports of the very same
   offline rows, in a fresh process watched by this one: stopped when its resident memory
   passes ``--feast-max-gb`` or it runs past ``--feast-timeout-s`` (the machine is shared).
   If it cannot finish at the full spine, both systems are also measured on the first
   ``--fallback-spines`` rows of the spine, so that a ratio is still measured, not guessed.
5. The two results are compared value by value on the spine rows both return. Volga's timed
   calls evaluate windows at each spine time (request-time values, DESIGN.md); Feast returns
   each key's latest stored row, so the check compares Feast with Volga's
   ``as_of="last_event"`` result (one extra, untimed call).

Feast's file store joins every spine row with every feature row of its key and then drops
all but the latest (``dd.merge`` then ``drop_duplicates``): its cost grows with spine rows x
feature rows per key. Volga does one backward ``join_asof`` per pipeline.

The machine is shared with other engineers' test runs and has 2 cores: the figures are
noisy; compare the ratio, not the absolute seconds, across runs. Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
START = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
DAYS = 30
USER_FIELDS = {"u_avg_price_7d": float, "u_orders_1h": int, "u_max_price_1d": float, "u_spent_1d": float, "u_orders_7d": int}
PRODUCT_FIELDS = {"p_avg_price_7d": float, "p_orders_1h": int, "p_min_price_1d": float, "p_sold_1d": float, "p_orders_7d": int}
FEATURES = [f"user_features.{f}" for f in USER_FIELDS] + [f"product_features.{f}" for f in PRODUCT_FIELDS]


# -- the definitions, as a user writes them --------------------------------------------------
def build(data: Path):
    import volga
    from volga import (
        Avg,
        Count,
        Entity,
        Max,
        Min,
        Sum,
        entity,
        field,
        on_demand,
        pipeline,
        source,
    )
    from volga.sources import ParquetSource

    @entity
    class Order:
        buyer_id: str = field(key=True)
        product_id: str
        purchased_at: datetime.datetime = field(timestamp=True)
        price: float

    def output(name: str, key: str, fields: dict) -> type:
        namespace = {"__annotations__": {key: str, "timestamp": datetime.datetime, **fields},
                     key: field(key=True), "timestamp": field(timestamp=True)}
        return entity(type(name, (), namespace))

    UserFeatures = output("UserFeatures", "user_id", USER_FIELDS)
    ProductFeatures = output("ProductFeatures", "product_id", PRODUCT_FIELDS)

    @source(Order)
    def orders() -> volga.Source:
        return ParquetSource(data / "orders.parquet")

    @pipeline(dependencies=[orders], output=UserFeatures)
    def user_features(orders: Entity) -> Entity:
        return orders.group_by(keys=["buyer_id"]).aggregate([
            Avg(on="price", window="7d", into="u_avg_price_7d"),
            Count(window="1h", into="u_orders_1h"),
            Max(on="price", window="1d", into="u_max_price_1d"),
            Sum(on="price", window="1d", into="u_spent_1d"),
            Count(window="7d", into="u_orders_7d"),
        ]).rename(columns={"buyer_id": "user_id", "purchased_at": "timestamp"})

    @pipeline(dependencies=[orders], output=ProductFeatures)
    def product_features(orders: Entity) -> Entity:
        return orders.group_by(keys=["product_id"]).aggregate([
            Avg(on="price", window="7d", into="p_avg_price_7d"),
            Count(window="1h", into="p_orders_1h"),
            Min(on="price", window="1d", into="p_min_price_1d"),
            Sum(on="price", window="1d", into="p_sold_1d"),
            Count(window="7d", into="p_orders_7d"),
        ]).rename(columns={"purchased_at": "timestamp"})

    # On-demand features over user_features: plain arithmetic (traced, vectorised) and a branch (row-wise).
    UserValue = output("UserValue", "user_id", {"value_7d": float, "gold": bool})

    @on_demand(dependencies=[user_features])
    def user_value(u: UserFeatures) -> UserValue:
        return UserValue(user_id=u.user_id, timestamp=u.timestamp, value_7d=u.u_avg_price_7d * u.u_orders_7d,
                         gold=u.u_spent_1d > 100.0)

    @on_demand(dependencies=[user_features])
    def user_tier(u: UserFeatures) -> UserValue:
        gold = u.u_spent_1d > 100.0 if u.u_orders_1h else False
        return UserValue(user_id=u.user_id, timestamp=u.timestamp, value_7d=u.u_avg_price_7d * u.u_orders_7d, gold=gold)

    client = volga.Client(data_dir=data / "volga")
    client.register(user_features, product_features, user_value, user_tier)
    return client, [user_features, product_features]


def make_data(data: Path, n_events: int, n_spine: int, n_users: int, n_products: int) -> None:
    rng = np.random.default_rng(7)
    start_us = int(START.timestamp() * 1_000_000)
    ts = np.sort(rng.integers(0, DAYS * 86_400_000_000, n_events)) + start_us
    # Uniform keys: the kindest data for Feast, whose join grows with the feature rows per key
    # (a realistic skew, a few very popular products, makes it blow up much sooner).
    buyers = rng.integers(0, n_users, n_events)
    products = rng.integers(0, n_products, n_events)
    orders = pl.DataFrame({
        "buyer_id": buyers.astype(str),
        "product_id": np.char.add("p", products.astype(str)),
        "purchased_at": pl.Series(ts).cast(pl.Datetime("us", "UTC")),
        "price": np.round(rng.gamma(2.0, 20.0, n_events), 2),
    })
    orders.write_parquet(data / "orders.parquet")
    picks = rng.integers(0, n_events, n_spine)
    spine = pl.DataFrame({
        "row_id": np.arange(n_spine),
        "user_id": orders["buyer_id"].gather(picks),
        "product_id": orders["product_id"].gather(picks),
        "event_timestamp": (orders["purchased_at"].gather(picks).cast(pl.Int64) + rng.integers(0, 60_000_000, n_spine))
        .cast(pl.Datetime("us", "UTC")),
        "label": rng.random(n_spine) < 0.1,
    })
    spine.write_parquet(data / "spine.parquet")


# -- parts, each in its own process ------------------------------------------------------------
def part_backfill(data: Path) -> dict:
    client, pipelines = build(data)
    started = time.perf_counter()
    client.materialize(pipelines, mode="offline")
    seconds = time.perf_counter() - started
    rows = {}
    for p in pipelines:  # the same rows, as Parquet files Feast's FileSource reads
        frame = client.get_offline(p.name)
        frame.write_parquet(data / f"{p.name}.parquet")
        rows[p.name] = frame.height
    return {"seconds": seconds, "rows": rows}


def part_volga(data: Path, n_spine: int, out: Path | None, repeat: int) -> dict:
    """The median of ``repeat`` calls (the machine is shared; Feast, minutes per call, runs once)."""
    client, _ = build(data)
    spine = pl.read_parquet(data / "spine.parquet").head(n_spine)
    runs = []
    for _ in range(repeat):
        started = time.perf_counter()
        train = client.get_historical_features(spine, FEATURES, timestamp_column="event_timestamp")
        runs.append(time.perf_counter() - started)
    if out is not None:
        # The value check against Feast uses the per-event values Feast serves (as_of="last_event"):
        # the timed calls evaluate windows at each spine time, which Feast cannot do.
        client.get_historical_features(spine, FEATURES, timestamp_column="event_timestamp", as_of="last_event").write_parquet(out)
    return {"seconds": sorted(runs)[len(runs) // 2], "runs": runs, "rows": train.height, "peak_rss_mb": _peak_mb()}


def part_on_demand(data: Path, n_spine: int) -> dict:
    """One on-demand feature traced into polars expressions, one that runs row-wise."""
    from volga.training.on_demand import OnDemandEvaluator

    client, _ = build(data)
    spine = pl.read_parquet(data / "spine.parquet").head(n_spine)
    paths: dict[str, str] = {}
    evaluate = OnDemandEvaluator.evaluate

    def spy(self: OnDemandEvaluator, index: int, columns: tuple[str, ...]) -> object:
        result = evaluate(self, index, columns)
        paths.update(self.paths)
        return result

    OnDemandEvaluator.evaluate = spy  # type: ignore[method-assign]
    out = {}
    for name in ("user_value", "user_tier"):
        started = time.perf_counter()
        client.get_historical_features(spine, [name], timestamp_column="event_timestamp")
        out[name] = {"seconds": time.perf_counter() - started, "path": paths.get(name, "?")}
    return out


def _peak_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


FEAST_SCRIPT = '''
import datetime, json, os, resource, sys, time
import pandas as pd
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
from feast.repo_config import RepoConfig
from feast.types import Float64, Int64

data, n_spine, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fields = json.loads(sys.argv[4])
repo = os.path.join(data, "feast_repo")
os.makedirs(repo, exist_ok=True)
config = RepoConfig(
    project="training_bench", provider="local", repo_path=repo, registry=os.path.join(repo, "registry.db"),
    offline_store={"type": "file"}, online_store={"type": "sqlite", "path": os.path.join(repo, "online.db")},
    entity_key_serialization_version=3,
)
store = FeatureStore(config=config)
user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
product = Entity(name="product", join_keys=["product_id"], value_type=ValueType.STRING)
types = {"float": Float64, "int": Int64}
views = []
for name, entity, names in (("user_features", user, fields["user"]), ("product_features", product, fields["product"])):
    views.append(FeatureView(
        name=name, entities=[entity], ttl=datetime.timedelta(0),
        schema=[Field(name=f, dtype=types[t]) for f, t in names.items()],
        source=FileSource(path=os.path.join(data, name + ".parquet"), timestamp_field="timestamp"),
    ))
store.apply([user, product, *views])
spine = pd.read_parquet(os.path.join(data, "spine.parquet")).head(n_spine)
features = [f"{view}:{f}" for view, kind in (("user_features", "user"), ("product_features", "product")) for f in fields[kind]]
started = time.perf_counter()
train = store.get_historical_features(entity_df=spine, features=features).to_df()
seconds = time.perf_counter() - started
train.to_parquet(out)
import feast
peak_kb = next((int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")), None)
peak_mb = peak_kb / 1024 if peak_kb else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "rows": len(train), "peak_rss_mb": peak_mb, "version": feast.__version__}))
'''


def ensure_feast_venv(venv: Path) -> Path:
    """The Feast virtualenv (shared with benchmarks/serving.py), created on first use."""
    python = venv / "bin" / "python"
    if (venv / "bin" / "feast").exists():
        return python
    print(f"  creating {venv} and installing feast (a few minutes, once)...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "feast"], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip install feast failed:\n{done.stderr[-3000:]}")
    return python


def run_feast(python: Path, data: Path, n_spine: int, out: Path, max_gb: float, timeout_s: float) -> dict:
    """Feast in its own process, stopped past ``max_gb`` resident or ``timeout_s``."""
    fields = {"user": {f: t.__name__ for f, t in USER_FIELDS.items()}, "product": {f: t.__name__ for f, t in PRODUCT_FIELDS.items()}}
    env = {**os.environ, "FEAST_USAGE": "False", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(
        [str(python), "-c", FEAST_SCRIPT, str(data), str(n_spine), str(out), json.dumps(fields)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    started, peak_kb, why = time.perf_counter(), 0, None
    while proc.poll() is None:
        peak_kb = max(peak_kb, _rss_kb(proc.pid))
        elapsed = time.perf_counter() - started
        if peak_kb > max_gb * 1024 * 1024:
            why = f"stopped: resident memory passed {max_gb:g} GB after {elapsed:.0f}s"
        elif elapsed > timeout_s:
            why = f"stopped: still running after {timeout_s:.0f}s"
        if why:
            proc.kill()
            proc.wait()
            return {"error": why, "seconds_before_stop": elapsed, "peak_rss_mb": peak_kb / 1024}
        time.sleep(0.2)
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        return {"error": f"exited with {proc.returncode}: {stderr.strip()[-2000:]}"}
    return json.loads(stdout.strip().splitlines()[-1])


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def compare(volga_out: Path, feast_out: Path) -> str:
    """How many feature values agree on the spine rows both returned."""
    v = pl.read_parquet(volga_out)
    f = pl.read_parquet(feast_out)
    names = [n.split(".", 1)[1] for n in FEATURES]
    f = f.select("row_id", *[pl.col(n).alias(n + "_feast") for n in names])
    both = v.join(f, on="row_id", how="inner")
    differing = {}
    for n in names:
        a, b = both[n].cast(pl.Float64), both[n + "_feast"].cast(pl.Float64)
        same = (a.is_null() & b.is_null()) | ((a - b).abs() <= 1e-9 * b.abs().fill_null(0).clip(1.0, None))
        bad = both.height - int(same.fill_null(False).sum())
        if bad:
            differing[n] = bad
    missing = v.height - both.height
    text = f"{both.height:,} rows in both; Feast left out {missing:,} spine rows"
    if missing:
        left_out = v.join(f, on="row_id", how="anti")
        nulls = int(left_out.get_column(names[0]).is_null().sum())
        text += f" ({nulls:,} of them have no user feature row at or before their time in Volga's result)"
    return text + ("; every feature value equal" if not differing else f"; values differ in {differing}")


# -- driver ---------------------------------------------------------------------------------
def _runs(result: dict) -> str:
    return ", ".join(f"{s:.2f}" for s in result["runs"])



def child(part: str, data: Path, n_spine: int = 0, out: str = "", repeat: int = 1) -> dict:
    cmd = [sys.executable, __file__, "--part", part, "--data", str(data), "--spine", str(n_spine), "--out", out,
           "--repeat", str(repeat)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{part} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--spine", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--products", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3, help="Volga calls per measurement (the median is reported)")
    parser.add_argument("--skip-feast", action="store_true")
    parser.add_argument("--feast-venv", default=str(HERE / ".feast-venv"))
    parser.add_argument("--feast-max-gb", type=float, default=12.0, help="stop Feast past this resident memory")
    parser.add_argument("--feast-timeout-s", type=float, default=1800.0)
    parser.add_argument("--fallback-spines", default="10000,100000", help="spine sizes to measure both at if Feast cannot do the full one")
    parser.add_argument("--part", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:
        data = Path(args.data)
        if args.part == "backfill":
            result = part_backfill(data)
        elif args.part == "on_demand":
            result = part_on_demand(data, args.spine)
        else:
            result = part_volga(data, args.spine, Path(args.out) if args.out else None, args.repeat)
        print(json.dumps(result))
        return

    with tempfile.TemporaryDirectory(prefix="volga-training-bench-") as tmp:
        data = Path(tmp)
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (others' runs share this machine)")
        print(f"training-set benchmark: {args.events:,} events, {args.spine:,}-row spine, {len(FEATURES)} features "
              f"(2 pipelines x 5), {args.users:,} users, {args.products:,} products; 2-core shared machine: figures are noisy")
        t = time.perf_counter()
        make_data(data, args.events, args.spine, args.users, args.products)
        print(f"  generated data in {time.perf_counter() - t:.1f}s", flush=True)
        backfill = child("backfill", data)
        print(f"  Volga offline backfill of both pipelines (orientation only): {backfill['seconds']:.1f}s, "
              f"{sum(backfill['rows'].values()):,} feature rows", flush=True)

        volga = child("volga", data, args.spine, str(data / "volga_out.parquet"), args.repeat)
        print(f"\nVolga get_historical_features, {args.spine:,} spine rows: {volga['seconds']:.2f}s "
              f"(median of {_runs(volga)}), peak RSS {volga['peak_rss_mb'] / 1024:.2f} GB (target <= 8 GB)", flush=True)
        od = child("on_demand", data, args.spine)
        print(f"on-demand features over the same spine (orientation; each function once per distinct input row): "
              f"arithmetic {od['user_value']['seconds']:.2f}s ({od['user_value']['path']}), "
              f"with a branch {od['user_tier']['seconds']:.2f}s ({od['user_tier']['path'].split(' (')[0]}): "
              f"{od['user_tier']['seconds'] / od['user_value']['seconds']:.1f}x", flush=True)
        if args.skip_feast:
            print("\nFeast: skipped (--skip-feast)")
            return
        try:
            python = ensure_feast_venv(Path(args.feast_venv))
        except Exception as e:  # noqa: BLE001 - reported, never faked
            print(f"\nFeast could not be installed here, so it was not measured: {type(e).__name__}: {e}")
            return
        print(f"\nFeast get_historical_features (file offline store, to_df), same offline rows, {args.spine:,} spine rows "
              f"(stopped past {args.feast_max_gb:g} GB or {args.feast_timeout_s:.0f}s):", flush=True)
        feast = run_feast(python, data, args.spine, data / "feast_out.parquet", args.feast_max_gb, args.feast_timeout_s)
        ratios = []
        if "error" not in feast:
            print(f"  feast {feast['version']}: {feast['seconds']:.2f}s, peak RSS {feast['peak_rss_mb'] / 1024:.2f} GB")
            print(f"  check: {compare(data / 'volga_out.parquet', data / 'feast_out.parquet')}")
            ratios.append((args.spine, feast["seconds"] / volga["seconds"]))
        else:
            print(f"  Feast did not finish: {feast['error']}"
                  + (f" (peak RSS seen {feast['peak_rss_mb'] / 1024:.1f} GB)" if "peak_rss_mb" in feast else ""))
            if "still running" in feast["error"]:
                print(f"  -> at this size Volga is at least {feast['seconds_before_stop'] / volga['seconds']:.0f}x faster "
                      "(Feast's time before it was stopped / Volga's time)")
            else:
                print(f"  -> at this size Feast cannot produce the training set within {args.feast_max_gb:g} GB; "
                      f"Volga did in {volga['seconds']:.1f}s at {volga['peak_rss_mb'] / 1024:.1f} GB")
            for size in [int(s) for s in args.fallback_spines.split(",") if s]:
                if size >= args.spine:
                    continue
                small_v = child("volga", data, size, str(data / f"volga_{size}.parquet"), args.repeat)
                small_f = run_feast(python, data, size, data / f"feast_{size}.parquet", args.feast_max_gb, args.feast_timeout_s)
                line = (f"  {size:>9,} spine rows: Volga {small_v['seconds']:.2f}s (median of {_runs(small_v)}; "
                        f"{small_v['peak_rss_mb'] / 1024:.2f} GB)")
                if "error" in small_f:
                    print(line + f", Feast did not finish: {small_f['error']}")
                    continue
                ratio = small_f["seconds"] / small_v["seconds"]
                ratios.append((size, ratio))
                print(line + f", Feast {small_f['version']} {small_f['seconds']:.2f}s ({small_f['peak_rss_mb'] / 1024:.2f} GB): {ratio:.0f}x")
                print(f"    check: {compare(data / f'volga_{size}.parquet', data / f'feast_{size}.parquet')}")
        print(f"\nratio (Feast seconds / Volga seconds, same data, same run; target >= 20x); load average {os.getloadavg()[0]:.1f} "
              f"on {os.cpu_count()} cores:")
        for size, ratio in ratios:
            print(f"  {size:>9,} spine rows: {ratio:.1f}x")
        if not ratios:
            print("  none measured (see above)")


if __name__ == "__main__":
    main()
