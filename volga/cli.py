"""The ``volga`` command line.

    volga serve app.py [--host 127.0.0.1] [--port 8000] [--workers 1] [--auth-token TOKEN]
    volga serve app.py --ray --replicas N [--ray-address ray://host:10001]
    volga historical app.py --spine spine.parquet --features f1 f2.field --out train.parquet   (see volga.training.cli)

``app.py`` (or ``app.py:client``, or ``package.module:client``) defines the features and a
``volga.Client``; see :mod:`volga.serving.run`. The auth token may also come from the
``VOLGA_AUTH_TOKEN`` environment variable (safer than the command line, which other
users of the machine can read).

Operating commands (see :mod:`volga.operate`):

    volga run app.py [--pipelines P ...] [--metrics-port 9108] [--checkpoint-dir D --checkpoint-interval 10s]
    volga materialize app.py [--pipelines P ...] [--start T --end T]
    volga list app.py | volga describe app.py NAME
    volga ui app.py [--port 8080] [--run]
    volga init DIR
    volga --version
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from volga.serving.http import ServerLimits


def _parser() -> argparse.ArgumentParser:
    from volga import __version__

    parser = argparse.ArgumentParser(prog="volga", description="Volga: real-time features, one definition for batch, streaming and on-demand.")
    parser.add_argument("--version", action="version", version=f"volga {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve on-demand features over HTTP")
    serve.add_argument("app", help="the module defining the features and a volga.Client: app.py, app.py:client or pkg.mod:client")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serve.add_argument("--workers", type=int, default=1, help="server processes sharing the port (needs a shared online store)")
    serve.add_argument("--auth-token", default=None, help="require 'Authorization: Bearer TOKEN' (default: $VOLGA_AUTH_TOKEN)")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20, help="largest request body accepted (default 1 MiB)")
    serve.add_argument("--max-head-bytes", type=int, default=64 * 1024, help="largest request head (default 64 KiB)")
    serve.add_argument("--max-keys", type=int, default=10_000, help="most lookup keys in one request (default 10000)")
    serve.add_argument("--max-connections", type=int, default=4096, help="open connections per process; more get 503 (default 4096)")
    serve.add_argument("--head-timeout", type=float, default=10.0, help="seconds to receive a request head (default 10)")
    serve.add_argument("--body-timeout", type=float, default=30.0, help="seconds to receive a request body (default 30)")
    serve.add_argument("--keep-alive", type=float, default=60.0, help="seconds an idle connection stays open (default 60)")
    serve.add_argument("--drain-timeout", type=float, default=10.0, help="on SIGTERM: seconds to finish requests received (default 10)")
    serve.add_argument("--ray", action="store_true", help="run the servers as Ray actors (needs volga[ray] and a shared store)")
    serve.add_argument("--replicas", type=int, default=2, help="with --ray: server replicas behind the port (default 2)")
    serve.add_argument("--ray-address", default=None, help="with --ray: an existing Ray cluster (default: start one)")
    from volga.training.cli import add_parser as add_historical

    add_historical(commands)
    from volga.operate import add_parsers as add_operating

    add_operating(commands)
    return parser


_LIMIT_FLAGS = {  # ServerLimits field -> its `volga serve` flag
    "max_head_bytes": "max_head_bytes", "max_body_bytes": "max_body_bytes", "max_keys": "max_keys",
    "max_connections": "max_connections", "head_timeout_s": "head_timeout", "body_timeout_s": "body_timeout",
    "keep_alive_s": "keep_alive", "drain_timeout_s": "drain_timeout",
}


def _limits(args: argparse.Namespace) -> ServerLimits:
    from volga.serving.http import ServerLimits

    for flag in _LIMIT_FLAGS.values():
        value = getattr(args, flag)
        if value <= 0:
            raise ValueError(f"volga serve: --{flag.replace('_', '-')} must be positive, got {value}")
    return ServerLimits(**{field: getattr(args, flag) for field, flag in _LIMIT_FLAGS.items()})


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from volga.serving.run import AppError, serve_app

        token = args.auth_token or os.environ.get("VOLGA_AUTH_TOKEN") or None
        try:
            limits = _limits(args)
        except ValueError as e:
            print(e, file=sys.stderr)
            return 2
        try:
            if args.ray:
                from volga.runtime.ray.serve import serve_on_ray

                return serve_on_ray(
                    args.app, host=args.host, port=args.port, replicas=args.replicas, auth_token=token,
                    max_body_bytes=args.max_body_bytes, address=args.ray_address,
                )
            from volga.operate import server_hooks

            return serve_app(
                args.app, host=args.host, port=args.port, workers=args.workers, auth_token=token, limits=limits,
                hooks=lambda client: server_hooks(client, token),
            )
        except AppError as e:
            print(e, file=sys.stderr)
            return 2
    if args.command == "historical":
        from volga.training.cli import main as historical

        return historical(args)
    from volga.operate import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
