"""Error types and the record of set-aside rows, shared by every layer."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A record that could not be processed, where, and why. Never fatal to a job."""

    source: str
    reason: str
    record: Any


class JobFailed(RuntimeError):
    """A job stopped because of an error; ``__cause__`` holds the original exception."""


class UnknownFeature(KeyError):
    """A feature (pipeline or on-demand function) name that nothing defines or stores."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0]) if self.args else "unknown feature"


class KeyMismatch(ValueError):
    """Lookup keys that do not match the feature's key fields (names or types)."""


class RequestTimeUnavailable(LookupError):
    """An online lookup ``at`` a time older than the events the store still holds for a key."""

    def __str__(self) -> str:  # LookupError would quote the message
        return str(self.args[0]) if self.args else "request time unavailable"


def naming_hint(name: object) -> str:
    """A hint for a Feast-style ``view:feature`` reference (Volga names ``pipeline.field``)."""
    if isinstance(name, str) and ":" in name:
        return f"; features are named 'pipeline.field': did you mean {name.replace(':', '.', 1)!r}?"
    return ""
