"""A small threaded HTTP server for the console and ``/metrics`` (``volga ui``, ``volga run
--metrics-port``). The feature server mounts the same :class:`ConsoleApp` instead."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from volga.console.app import ConsoleApp


class ConsoleServer:
    """Serve ``app`` (``/ui``, ``/metrics``, ``/health``) from a background thread.

    >>> import tempfile, urllib.request, volga
    >>> server = ConsoleServer(ConsoleApp(volga.Client(data_dir=tempfile.mkdtemp())), port=0).start()
    >>> urllib.request.urlopen(server.url + "/health").read()
    b'ok'
    >>> server.stop()
    """

    def __init__(self, app: ConsoleApp, *, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("Handler", (_Handler,), {"app": app})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self.host, self.port = str(self.httpd.server_address[0]), int(self.httpd.server_address[1])
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="volga-console", daemon=True)

    def start(self) -> ConsoleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(5)


class _Handler(BaseHTTPRequestHandler):
    app: ConsoleApp
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/health":
            self._answer(200, b"ok", b"Content-Type: text/plain\r\n")
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._answer(*self.app.handle("GET", self.path, headers, b""))

    def do_POST(self) -> None:  # noqa: N802 - the sign-in form
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(min(length, 1 << 16))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self._answer(*self.app.handle("POST", self.path, headers, body))

    def _answer(self, status: int, body: bytes, extra: bytes) -> None:
        self.send_response(status)
        for line in extra.decode("latin-1").split("\r\n"):
            if ":" in line:
                name, value = line.split(":", 1)
                self.send_header(name.strip(), value.strip())
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: stderr is for the job's log
        pass
