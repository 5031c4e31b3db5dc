"""The web console (``volga ui``, ``/ui`` on the feature server) and the HTTP server that
``volga ui`` and ``volga run --metrics-port`` use. Assets ship in ``static/``: no CDN."""

from volga.console.app import ConsoleApp
from volga.console.server import ConsoleServer

__all__ = ["ConsoleApp", "ConsoleServer"]
