"""Errors of on-demand requests, raised alike in process, in training and by :class:`OnDemandClient`.

Each carries an HTTP status, a message, and the request ``field`` at fault (a path like
``feature_keys.user_stats[0].user_id``). The server sends them as
``{"error": {"type", "status", "message", "field", ...}}``; the client raises the same
class again from that payload.

>>> e = BadRequest("n must be a positive int, got 0", field="query_args.n")
>>> e.status, e.payload()["field"]
(400, 'query_args.n')
"""

from __future__ import annotations

from typing import Any

from volga.errors import KeyMismatch, UnknownFeature

_ATOMS = (str, int, float, bool, type(None))


def describe(value: Any, limit: int = 120, depth: int = 3) -> str:
    """A short ``repr`` of client data for error messages: iterative (a value nested 10,000
    deep cannot exhaust the stack), at most ``depth`` levels shown and about ``limit``
    characters long.

    >>> describe({"a": [1, [2, [3, [4]]]]})
    "{'a': [1, [2, [...]]]}"
    >>> describe(list(range(100)), limit=20)
    '[0, 1, 2, 3, 4, 5, 6...'
    >>> import datetime
    >>> describe([datetime.date(2025, 1, 2)])
    '[datetime.date(2025, 1, 2)]'
    """
    if type(value) in _ATOMS:
        text = repr(value)
        return text if len(text) <= limit else text[:limit] + "..."
    out: list[str] = []
    size = 0
    # a stack of (value, depth) to render, or plain strings to emit as they are
    stack: list[Any] = [(value, 0)]
    while stack and size <= limit:
        item = stack.pop()
        if isinstance(item, str):
            text = item
        else:
            current, level = item
            if isinstance(current, (list, tuple)) and type(current) in (list, tuple):
                open_, close = ("[", "]") if type(current) is list else ("(", ")")
                if level >= depth and current:
                    text = f"{open_}...{close}"
                else:
                    text = open_
                    stack.append(close)
                    for i in range(len(current) - 1, -1, -1):
                        stack.append((current[i], level + 1))
                        if i:
                            stack.append(", ")
            elif type(current) is dict:
                if level >= depth and current:
                    text = "{...}"
                else:
                    text = "{"
                    stack.append("}")
                    entries = list(current.items())
                    for i in range(len(entries) - 1, -1, -1):
                        name, inner = entries[i]
                        stack.append((inner, level + 1))
                        stack.append(f"{describe(name, limit=40, depth=0)}: ")
                        if i:
                            stack.append(", ")
            elif type(current) in _ATOMS:
                text = repr(current)
            else:  # not from JSON (an in-process caller's object): its own repr, cut short
                try:
                    text = repr(current)[: limit + 1]
                except Exception:  # (a repr that fails or recurses says nothing useful)
                    text = f"<{type(current).__name__}>"
        out.append(text)
        size += len(text)
    text = "".join(out)
    return text if not stack and len(text) <= limit else text[:limit] + "..."


class ServingError(Exception):
    """Base class: a request the serving layer could not answer."""

    status = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return self.message

    def payload(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__, "status": self.status, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


class BadRequest(ServingError, ValueError):
    """The request is malformed: wrong shape, unknown or missing arguments, bad values."""

    status = 400


class InvalidKeys(BadRequest, KeyMismatch):
    """Lookup keys missing, with the wrong field names, or of the wrong types."""


class PayloadTooLarge(BadRequest):
    """The request body is larger than the server's ``max_body_bytes``."""

    status = 413


class FeatureNotFound(ServingError, UnknownFeature):
    """A target feature that no registered definition provides."""

    status = 404


class Unauthorized(ServingError):
    """The server requires ``Authorization: Bearer <token>`` and it was missing or wrong."""

    status = 401


class FeatureFunctionError(ServingError, RuntimeError):
    """An on-demand function raised (or returned something other than its output entity)."""

    def __init__(self, message: str, *, feature: str, exception: str, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.feature = feature
        self.exception = exception

    @classmethod
    def wrap(cls, feature: str, error: BaseException) -> FeatureFunctionError:
        kind = type(error).__name__
        out = cls(f"on-demand feature '{feature}' raised {kind}: {error}", feature=feature, exception=kind)
        out.__cause__ = error
        return out

    def payload(self) -> dict[str, Any]:
        return {**super().payload(), "feature": self.feature, "exception": self.exception}


class InternalError(ServingError):
    """The server failed for a reason that is not the request's fault (see its log)."""


_BY_NAME: dict[str, type[ServingError]] = {
    c.__name__: c
    for c in (ServingError, BadRequest, InvalidKeys, PayloadTooLarge, FeatureNotFound, Unauthorized, InternalError)
}


def error_from_payload(status: int, payload: Any) -> ServingError:
    """Rebuild the exception a server described in its JSON error body."""
    body = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(body, dict):
        return InternalError(f"HTTP {status}: {str(payload)[:500]}") if status >= 500 else BadRequest(f"HTTP {status}: {str(payload)[:500]}")
    message = str(body.get("message", f"HTTP {status}"))
    field = body.get("field")
    kind = body.get("type")
    if kind == "FeatureFunctionError":
        return FeatureFunctionError(message, feature=str(body.get("feature")), exception=str(body.get("exception")), field=field)
    cls = _BY_NAME.get(str(kind))
    if cls is None:
        cls = BadRequest if 400 <= status < 500 else InternalError
    error = cls(message, field=field)
    error.status = status
    return error
