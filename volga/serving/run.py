"""Running the feature server from a user's module: ``volga serve app.py``.

The module defines the features and a :class:`volga.Client` (with its stores, and
whatever materialization it starts). ``app.py:client`` names the client when there are
several. Every ``@pipeline`` and ``@on_demand`` definition at module level is registered
with it.

With ``workers > 1``, each worker is a separate process that imports the module itself
and listens on the same port with ``SO_REUSEPORT``; the kernel spreads connections over
them. They answer consistently only if the online store is shared between processes
(Redis), so the in-memory store is refused with ``workers > 1``.
"""

from __future__ import annotations

import importlib
import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from volga.api.decorators import PipelineDef
from volga.api.on_demand import OnDemandDef
from volga.serving.http import ServerLimits
from volga.storage import MemoryOnlineStore


class AppError(Exception):
    """The app module cannot be served as asked (message says why and what to do)."""


def load_app(spec: str) -> Any:
    """Import ``path/to/app.py[:name]`` (or ``package.module[:name]``) and return its client."""
    from volga.client import Client

    target, _, attr = spec.partition(":")
    path = Path(target)
    if target.endswith(".py") or path.exists():
        if not path.is_file():
            raise AppError(f"volga serve: no such file {target!r}")
        sys.path.insert(0, str(path.resolve().parent))
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        assert module_spec is not None and module_spec.loader is not None
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(target)
    if attr:
        client = getattr(module, attr, None)
        if not isinstance(client, Client):
            raise AppError(f"volga serve: {target} has no volga.Client named {attr!r}")
    else:
        clients = {name: v for name, v in vars(module).items() if isinstance(v, Client)}
        if len(clients) != 1:
            found = f"several ({sorted(clients)})" if clients else "none"
            raise AppError(
                f"volga serve: {target} must define one module-level volga.Client (found {found}); "
                f"name it as {target}:NAME"
            )
        (client,) = clients.values()
    definitions = [v for v in vars(module).values() if isinstance(v, (PipelineDef, OnDemandDef))]
    client.register(*definitions)
    return client


def check_workers(client: Any, workers: int, spec: str) -> None:
    if workers > 1 and isinstance(client.online_store, MemoryOnlineStore):
        raise AppError(
            f"volga serve: --workers {workers} needs an online store that the worker processes share "
            f"(such as Redis), but {spec} uses the in-memory store, which lives inside one process: each "
            "worker would serve different data. Use --workers 1, or give the Client a shared online store."
        )


def serve_app(
    spec: str, *, host: str, port: int, workers: int, auth_token: str | None, max_body_bytes: int | None = None,
    limits: ServerLimits | None = None, hooks: Callable[[Any], dict[str, Any]] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (then drain: see :class:`ServerLimits`); returns the exit code.

    ``hooks(client)`` gives the server's ``extra_routes``/``observer`` (``/metrics`` and
    ``/ui``, from the CLI); with ``workers > 1`` the workers serve features only."""
    from volga.serving.http import serve_forever

    if workers < 1:
        raise AppError(f"volga serve: --workers must be >= 1, got {workers}")
    if workers == 1:
        client = load_app(spec)
        serve_forever(
            client._on_demand, host=host, port=port, auth_token=auth_token, max_body_bytes=max_body_bytes,
            limits=limits, on_ready=lambda url: _announce(url, client, 1), **(hooks(client) if hooks else {}),
        )
        return 0
    return _supervise(
        spec, host=host, port=port, workers=workers, auth_token=auth_token, max_body_bytes=max_body_bytes, limits=limits
    )


def _announce(url: str, client: Any, workers: int) -> None:
    names = sorted(n for n, d in client.definitions.items() if isinstance(d, (OnDemandDef, PipelineDef)))
    print(f"volga: serving {len(names)} features on {url} ({workers} worker{'s' if workers > 1 else ''}, pid {os.getpid()}): "
          f"{', '.join(names)}", flush=True)


def _worker(
    spec: str, host: str, port: int, workers: int, auth_token: str | None, max_body_bytes: int | None,
    limits: ServerLimits | None, conn: Any,
) -> None:
    from volga.serving.http import serve_forever

    try:
        client = load_app(spec)
        check_workers(client, workers, spec)
    except Exception as e:
        conn.send(("error", str(e) if isinstance(e, AppError) else f"volga serve: {spec} failed to load: {type(e).__name__}: {e}"))
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles Ctrl-C and stops us with SIGTERM
    serve_forever(
        client._on_demand, host=host, port=port, auth_token=auth_token, max_body_bytes=max_body_bytes, reuse_port=True,
        limits=limits, on_ready=lambda url: conn.send(("ready", url, [n for n in sorted(client.definitions)])),
    )


def _supervise(
    spec: str, *, host: str, port: int, workers: int, auth_token: str | None, max_body_bytes: int | None,
    limits: ServerLimits | None,
) -> int:
    context = multiprocessing.get_context("spawn")
    processes: list[Any] = []
    stopping = False

    def stop(*_: Any) -> None:  # SIGTERM makes each worker drain; a second one stops it at once
        nonlocal stopping
        stopping = True
        for p in processes:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    url, served = "", []
    for index in range(workers):
        ours, theirs = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker, args=(spec, host, port, workers, auth_token, max_body_bytes, limits, theirs),
            name=f"volga-serve-{index}",
        )
        process.start()
        processes.append(process)
        message: tuple[Any, ...] = (
            ours.recv() if ours.poll(300) else ("error", f"volga serve: worker {index} did not start within 300s")
        )
        if message[0] != "ready":
            print(message[1], file=sys.stderr, flush=True)
            stop()
            return 2
        url, served = message[1], message[2]
        port = int(url.rsplit(":", 1)[1])  # port 0: the first worker picked one; the others join it
    print(f"volga: serving {len(served)} definitions on {url} ({workers} workers, pids "
          f"{', '.join(str(p.pid) for p in processes)})", flush=True)
    while not stopping and all(p.is_alive() for p in processes):
        multiprocessing.connection.wait([p.sentinel for p in processes], timeout=1.0)
    failed = not stopping
    if failed:  # (after a signal, stop() already ran: calling it again would cut the drain short)
        stop()
    for p in processes:
        p.join((limits or ServerLimits()).drain_timeout_s + 5)
    if failed:
        print("volga serve: a worker exited unexpectedly; stopped the others", file=sys.stderr, flush=True)
        return 1
    return 0
