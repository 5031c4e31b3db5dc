"""The operating commands of the ``volga`` CLI: run, materialize, list, describe, ui, init.

``app.py`` (or ``app.py:client``, ``package.module:client``) is loaded as ``volga serve``
loads it (:func:`volga.serving.run.load_app`). Exit codes: 0 done or stopped cleanly,
1 the job failed, 2 bad usage or an app that cannot load; the reason is one line on
stderr. Logs go to stderr (systemd and Kubernetes collect them from there).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import inspect
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("volga.run")


class UsageError(Exception):
    """Bad arguments or an app that cannot run as asked (the message says which)."""


def add_parsers(commands: Any) -> None:
    """Add run, materialize, list, describe, ui and init to the CLI's subparsers."""
    app_help = "the module defining the features and a volga.Client: app.py, app.py:client or pkg.mod:client"
    run = commands.add_parser("run", help="run the online job as a long-running service (SIGTERM stops it)")
    run.add_argument("app", help=app_help)
    run.add_argument("--pipelines", nargs="+", default=None, help="pipelines to run (default: every pipeline of the app)")
    run.add_argument("--params", default=None, help='materialize params as JSON (default {"online": true} merged in)')
    run.add_argument("--checkpoint-dir", default=None, help="checkpoint the job's state here (a path or an s3:// URL); a restart resumes from it")
    run.add_argument("--checkpoint-interval", default=None, help="time between checkpoints, e.g. 10s")
    run.add_argument("--checkpoint-keep", type=int, default=None, help="how many checkpoints to keep (default 3)")
    run.add_argument("--metrics-port", type=int, default=None, help="serve /metrics (Prometheus) and /ui on this port")
    run.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (default 127.0.0.1)")
    run.add_argument("--write-offline", action="store_true", help="also make the job's output the offline rows")
    run.add_argument("--log-interval", type=float, default=30.0, help="seconds between status lines (default 30)")
    run.add_argument("--stop-timeout", type=float, default=30.0, help="seconds to finish in-flight rows on stop")

    mat = commands.add_parser("materialize", help="backfill the offline store from the sources, with progress")
    mat.add_argument("app", help=app_help)
    mat.add_argument("--pipelines", nargs="+", default=None, help="pipelines to backfill (default: all)")
    mat.add_argument("--params", default=None, help="materialize params as JSON")
    mat.add_argument("--start", default=None, help="replace only output rows at or after this time (ISO 8601)")
    mat.add_argument("--end", default=None, help="replace only output rows at or before this time (ISO 8601)")
    mat.add_argument("--write-online", action="store_true", help="also write the online store")
    mat.add_argument("--progress-interval", type=float, default=None,
                     help="seconds between plain progress lines when stderr is not a terminal (default 10)")

    lst = commands.add_parser("list", help="the catalog: sources, pipelines, on-demand features")
    lst.add_argument("app", help=app_help)
    lst.add_argument("--json", action="store_true", help="print the catalog as JSON")
    desc = commands.add_parser("describe", help="one definition: schema, windows, lineage, description")
    desc.add_argument("app", help=app_help)
    desc.add_argument("name", help="a source, pipeline or on-demand feature")
    desc.add_argument("--json", action="store_true", help="print as JSON")

    ui = commands.add_parser("ui", help="the web console")
    ui.add_argument("app", help=app_help)
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ui.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks a free one)")
    ui.add_argument("--auth-token", default=None, help="require this token (default: $VOLGA_AUTH_TOKEN)")
    ui.add_argument("--run", action="store_true", help="also run the online job in this process (live job page)")

    init = commands.add_parser("init", help="create a small working project")
    init.add_argument("dir", help="the directory to create")


def run_command(args: argparse.Namespace) -> int:
    """Dispatch an operating subcommand; returns the exit code."""
    handlers = {"run": run, "materialize": materialize, "list": list_catalog, "describe": describe, "ui": ui, "init": init}
    from volga.serving.run import AppError

    try:
        return handlers[args.command](args)
    except (UsageError, AppError) as e:
        print(f"volga {args.command}: {str(e).replace('volga serve: ', '')}", file=sys.stderr)
        return 2


def server_hooks(client: Any, token: str | None) -> dict[str, Any]:
    """``/ui`` and ``/metrics`` on the feature server (``volga serve``)."""
    from volga.console import ConsoleApp

    return ConsoleApp(client, token).server_hooks()


# -- run -----------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    client = _load(args.app)
    pipelines = _pipelines(client, args.pipelines)
    params = {"online": True, **_params(args.params)}
    extra = _checkpoint_options(client, args)
    stop = threading.Event()
    received: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if args.metrics_port is not None:
        from volga.console import ConsoleApp, ConsoleServer

        server = ConsoleServer(ConsoleApp(client), host=args.metrics_host, port=args.metrics_port).start()
        log.info("metrics on %s/metrics, console on %s/ui", server.url, server.url)
    names = [p.name for p in pipelines]
    try:
        job = client.materialize(pipelines, mode="online", params=params, block=False, write_offline=args.write_offline, **extra)
    except Exception as e:
        print(f"volga run: cannot start {', '.join(names)}: {type(e).__name__}: {_one_line(e)}", file=sys.stderr)
        if server:
            server.stop()
        return 1
    log.info("online job started: %s (pid %d); SIGTERM or Ctrl-C stops it", ", ".join(names), _pid())
    last_log = time.monotonic()
    while job.running and not stop.wait(0.2):
        if time.monotonic() - last_log >= args.log_interval:
            last_log = time.monotonic()
            m = job.metrics
            log.info("rows in %s, rows out %s, late %d", dict(m.rows_in), dict(m.rows_out), sum(m.late.values()))
    code = 0
    try:
        if stop.is_set():
            log.info("%s received: stopping (finishing rows in flight)", received[0] if received else "stop")
            job.stop(timeout=args.stop_timeout)
        else:
            job.wait()
            log.info("all sources are finished: the job is done")
        m = job.metrics
        log.info("stopped cleanly: rows in %s, rows out %s", dict(m.rows_in), dict(m.rows_out))
    except TimeoutError:
        print(f"volga run: the job did not stop within {args.stop_timeout:g}s", file=sys.stderr)
        code = 1
    except Exception as e:
        cause = e.__cause__ or e
        print(f"volga run: job failed: {type(cause).__name__}: {_one_line(cause)}", file=sys.stderr)
        code = 1
    finally:
        if server:
            server.stop()
    return code


def _checkpoint_options(client: Any, args: argparse.Namespace) -> dict[str, Any]:
    """``checkpoint_dir``/``checkpoint_interval``/``checkpoint_keep`` for materialize, only when given."""
    extra: dict[str, Any] = {}
    if args.checkpoint_dir:
        extra["checkpoint_dir"] = args.checkpoint_dir
    if args.checkpoint_interval:
        if not args.checkpoint_dir:
            raise UsageError("--checkpoint-interval needs --checkpoint-dir")
        extra["checkpoint_interval"] = args.checkpoint_interval
    if args.checkpoint_keep is not None:
        if not args.checkpoint_dir:
            raise UsageError("--checkpoint-keep needs --checkpoint-dir")
        extra["checkpoint_keep"] = args.checkpoint_keep
    accepted = inspect.signature(client.materialize).parameters
    missing = [k for k in extra if k not in accepted]
    if missing:
        raise UsageError(f"this version of volga cannot checkpoint (Client.materialize takes no {missing[0]})")
    return extra


# -- materialize ---------------------------------------------------------------------------
def materialize(args: argparse.Namespace) -> int:
    from volga.progress import ProgressReporter

    client = _load(args.app)
    pipelines = _pipelines(client, args.pipelines)
    start, end = _time(args.start, "--start"), _time(args.end, "--end")
    if start and end and start > end:
        raise UsageError(f"--start {args.start} is after --end {args.end}")
    params = _params(args.params)
    kept = {p.name: client.offline_store.read(p.name) for p in pipelines} if start or end else {}
    started = time.perf_counter()
    try:
        job = client.materialize(pipelines, mode="offline", params=params, block=False,
                                 write_online=args.write_online)
        ProgressReporter(job, interval_s=args.progress_interval).follow()
        job.wait()
    except Exception as e:
        cause = e.__cause__ or e
        print(f"volga materialize: failed: {type(cause).__name__}: {_one_line(cause)}", file=sys.stderr)
        return 1
    for p in pipelines:
        if start or end:
            _keep_outside(client, p, kept[p.name], start, end)
        stored = client.offline_store.read(p.name)
        print(f"volga materialize: {p.name}: {0 if stored is None else stored.height:,} offline rows "
              f"({job.metrics.rows_out.get(p.name, 0):,} computed) in {time.perf_counter() - started:.1f}s", file=sys.stderr)
    return 0


def _keep_outside(client: Any, pipe: Any, old: Any, start: datetime.datetime | None, end: datetime.datetime | None) -> None:
    """Rows in [start, end] from this run, the previously stored rows elsewhere."""
    import polars as pl

    ts = pipe.schema.timestamp
    inside = pl.lit(True)
    if start:
        inside = inside & (pl.col(ts) >= start)
    if end:
        inside = inside & (pl.col(ts) <= end)
    new = client.offline_store.read(pipe.name)
    parts = [new.filter(inside)]
    if old is not None:
        parts.append(old.filter(~inside))
    merged = pl.concat(parts).sort(ts, maintain_order=True)
    client.offline_store.replace(pipe.name, pipe.schema, merged)


# -- catalog -------------------------------------------------------------------------------
def list_catalog(args: argparse.Namespace) -> int:
    from volga.catalog import catalog

    entries = catalog(_load(args.app))
    if args.json:
        print(json.dumps([dataclasses.asdict(e) for e in entries], indent=2))
        return 0
    rows = [("KIND", "NAME", "ENTITY", "KEYS", "TAGS", "OWNER", "DESCRIPTION")] + [
        (e.kind, e.name, e.entity, ",".join(e.keys), ",".join(e.tags), e.owner or "", e.description.split("\n", 1)[0][:60])
        for e in entries
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def describe(args: argparse.Namespace) -> int:
    from volga.catalog import find

    try:
        e = find(_load(args.app), args.name)
    except KeyError as err:
        raise UsageError(str(err.args[0])) from None
    if args.json:
        print(json.dumps(dataclasses.asdict(e), indent=2))
        return 0
    out = [f"{e.name} ({e.kind}) -> {e.entity}"]
    if e.description:
        out += ["", *("  " + line for line in e.description.splitlines())]
    if e.tags or e.owner:
        out += ["", f"tags: {', '.join(e.tags) or '-'}    owner: {e.owner or '-'}"]
    out += ["", "fields:"] + [
        f"  {f.name:<20} {f.type:<12} {'key' if f.key else ('timestamp' if f.timestamp else '')}" for f in e.fields
    ]
    if e.windows:
        out += ["", "windows:"] + [f"  {w}" for w in e.windows]
    if e.details:
        out += [""] + [f"  {d}" for d in e.details]
    out += ["", "lineage:", f"  reads:   {', '.join(e.upstream) or '-'}", f"  read by: {', '.join(e.downstream) or '-'}"]
    out += ["", f"defined at {e.location}"]
    print("\n".join(out))
    return 0


# -- ui and init ---------------------------------------------------------------------------
def ui(args: argparse.Namespace) -> int:
    import os

    from volga.console import ConsoleApp, ConsoleServer

    client = _load(args.app)
    token = args.auth_token or os.environ.get("VOLGA_AUTH_TOKEN") or None
    console = ConsoleApp(client, token)
    job = client.materialize(_pipelines(client, None), mode="online", params={"online": True}, block=False) if args.run else None
    server = ConsoleServer(console, host=args.host, port=args.port).start()
    print(f"volga ui: the console is at {server.url}/ui (metrics at {server.url}/metrics); Ctrl-C stops it", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    if job is not None:
        job.stop()
    return 0


def init(args: argparse.Namespace) -> int:
    from volga.scaffold import init_project

    root = Path(args.dir)
    try:
        init_project(root)
    except FileExistsError as e:
        raise UsageError(str(e).replace("volga init: ", "")) from None
    print(f"volga init: created {root}/ (app.py, data/orders.jsonl, data/spine.csv, test_app.py). Next:\n"
          f"  cd {root} && volga list app.py && volga materialize app.py && volga run app.py --metrics-port 9108")
    return 0


# -- helpers -------------------------------------------------------------------------------
def _load(spec: str) -> Any:
    from volga.serving.run import load_app

    return load_app(spec)


def _pipelines(client: Any, names: list[str] | None) -> list[Any]:
    from volga.api.decorators import PipelineDef

    known = sorted((d for d in dict.values(client.definitions) if isinstance(d, PipelineDef)), key=lambda p: p.seq)
    if not names:
        if not known:
            raise UsageError("the app defines no @pipeline")
        return known
    chosen = []
    for name in (n for item in names for n in item.split(",") if n):
        found = client.definitions.get(name)
        if not isinstance(found, PipelineDef):
            raise UsageError(f"--pipelines: no pipeline named {name!r}; pipelines: {', '.join(p.name for p in known) or 'none'}")
        chosen.append(found)
    return chosen


def _params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"--params is not valid JSON: {e}") from None
    if not isinstance(params, dict):
        raise UsageError(f"--params must be a JSON object, got {text!r}")
    return params


def _time(text: str | None, flag: str) -> datetime.datetime | None:
    if text is None:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{flag} {text!r} is not an ISO 8601 time like 2024-05-01T00:00:00Z") from None
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)  # naive means UTC


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


def _pid() -> int:
    import os

    return os.getpid()
