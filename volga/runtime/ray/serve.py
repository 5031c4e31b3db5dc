"""``volga serve app.py --ray --replicas N``: N feature-server replicas as Ray actors.

Each replica is an actor that imports the app module itself and serves it from a
background thread, listening on the same port with ``SO_REUSEPORT`` (the kernel spreads
connections over the replicas on this machine). Like ``--workers``, this only answers
consistently when the online store is shared between processes (Redis): the in-memory
store is refused. The driver waits for SIGINT/SIGTERM, watches the replicas, and stops
them all when one dies (exit code 1) or when told to stop (exit code 0).
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

from volga._optional import optional_import


class _Replica:
    """One server replica (a Ray actor)."""

    def start(self, spec: str, host: str, port: int, auth_token: str | None, max_body_bytes: int) -> str:
        from volga.serving.http import serve_in_thread
        from volga.serving.run import load_app

        client = load_app(spec)
        self.server = serve_in_thread(
            client._on_demand, host=host, port=port, auth_token=auth_token, max_body_bytes=max_body_bytes, reuse_port=True
        )
        return str(self.server.url)

    def pid(self) -> int:
        return os.getpid()


def absolute_spec(spec: str) -> str:
    """``app.py[:name]`` with an absolute path, so replicas find it from any directory."""
    target, sep, attr = spec.partition(":")
    if target.endswith(".py") or Path(target).exists():
        target = str(Path(target).resolve())
    return f"{target}{sep}{attr}"


def serve_on_ray(
    spec: str, *, host: str, port: int, replicas: int, auth_token: str | None, max_body_bytes: int, address: str | None = None
) -> int:
    """Serve until SIGINT/SIGTERM; returns the process exit code."""
    from volga.serving.run import AppError, load_app
    from volga.storage import MemoryOnlineStore

    ray = optional_import("ray", extra="ray", what="volga serve --ray")
    if replicas < 1:
        raise AppError(f"volga serve: --replicas must be >= 1, got {replicas}")
    spec = absolute_spec(spec)
    client = load_app(spec)  # fail here, with the app's own error, before starting any actor
    if isinstance(client.online_store, MemoryOnlineStore):
        raise AppError(
            f"volga serve --ray: the replicas are separate processes and need an online store they share "
            f"(such as Redis), but {spec} uses the in-memory store, which lives inside one process"
        )
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    replica_cls = ray.remote(num_cpus=0)(_Replica)
    actors: list[Any] = []
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        url = ""
        for _ in range(replicas):
            actor = replica_cls.remote()
            actors.append(actor)
            url = ray.get(actor.start.remote(spec, host, port, auth_token, max_body_bytes))
            port = int(url.rsplit(":", 1)[1])  # port 0: the first replica picked one; the others join it
        pids = ray.get([a.pid.remote() for a in actors])
        print(f"volga: serving on {url} ({replicas} Ray replicas, pids {', '.join(map(str, pids))})", flush=True)
        while not stopping.wait(1.0):
            try:
                ray.get([a.pid.remote() for a in actors], timeout=30)
            except Exception as e:  # a replica died: stop the rest rather than serve partially
                print(f"volga serve --ray: a replica failed ({type(e).__name__}); stopping", flush=True)
                return 1
        return 0
    finally:
        for actor in actors:
            ray.kill(actor)
        if started_ray:
            ray.shutdown()
