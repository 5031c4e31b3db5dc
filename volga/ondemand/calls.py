"""Calling an on-demand function: the rules shared by serving and training.

A call gets its dependencies' values positionally, then the per-request arguments, the
key fields it names, and ``now`` (the request time) if it takes it. Whatever it raises,
and a result that is not its output entity (or None), becomes a ``FeatureFunctionError``
naming the feature and the key. ``async def`` functions are awaited on one background
event loop, the calls of a batch concurrently (at most ``concurrency`` at once), each
within the function's ``timeout``; a timeout is a ``FeatureFunctionError`` too.
"""

from __future__ import annotations

import asyncio
import datetime
import inspect
import threading
from collections.abc import Sequence
from typing import Any

from volga.api.on_demand import OnDemandDef
from volga.api.types import to_utc
from volga.ondemand.errors import FeatureFunctionError

Call = tuple[tuple[Any, ...], list[Any], dict[str, Any]]  # (key, positional values, keyword arguments)


def call_kwargs(node: Any, key: tuple[Any, ...], kwargs: dict[str, Any], now: datetime.datetime | None) -> dict[str, Any]:
    """A call's keyword arguments: request arguments, key fields it names, ``now`` (the
    request time, aware UTC with ``datetime.timezone.utc``)."""
    if not node.key_params and not node.definition.takes_now:
        return kwargs
    out = {**kwargs, **{param: key[pos] for param, pos in node.key_params}}
    if node.definition.takes_now:
        out["now"] = None if now is None else to_utc(now)
    return out


def call_all(defn: OnDemandDef, calls: Sequence[Call], *, concurrency: int = 256, capture: bool = False) -> list[Any]:
    """The function's results for ``calls``, in order. ``capture``: a call that fails gives
    its ``FeatureFunctionError`` in its place instead of raising it."""
    if not calls:
        return []
    if not inspect.iscoroutinefunction(defn.fn):
        return [
            _guarded(capture, lambda key=key, values=values, kwargs=kwargs: _checked(defn, key, _call_sync(defn, key, values, kwargs)))
            for key, values, kwargs in calls
        ]
    future = asyncio.run_coroutine_threadsafe(_gather(defn, calls, concurrency, capture), _background_loop())
    results = future.result()
    return [r if isinstance(r, FeatureFunctionError) else _guarded(capture, lambda r=r, key=key: _checked(defn, key, r))
            for (key, _, _), r in zip(calls, results)]


def _guarded(capture: bool, call: Any) -> Any:
    if not capture:
        return call()
    try:
        return call()
    except FeatureFunctionError as e:
        return e


def _call_sync(defn: OnDemandDef, key: tuple[Any, ...], values: list[Any], kwargs: dict[str, Any]) -> Any:
    try:
        return defn.fn(*values, **kwargs)
    except Exception as e:  # the user's function: report it with the key
        raise _wrapped(defn, key, e) from e


async def _gather(defn: OnDemandDef, calls: Sequence[Call], concurrency: int, capture: bool = False) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(key: tuple[Any, ...], values: list[Any], kwargs: dict[str, Any]) -> Any:
        async with gate:
            try:
                return await asyncio.wait_for(defn.fn(*values, **kwargs), defn.timeout_s)
            except asyncio.TimeoutError:
                raise _wrapped(defn, key, TimeoutError(f"no answer within {defn.timeout_s:g}s (timeout=)")) from None
            except Exception as e:
                raise _wrapped(defn, key, e) from e

    return list(await asyncio.gather(*(one(*call) for call in calls), return_exceptions=capture))


def _checked(defn: OnDemandDef, key: tuple[Any, ...], result: Any) -> Any:
    if result is not None and not isinstance(result, defn.output):
        raise _wrapped(defn, key, TypeError(f"returned {type(result).__name__}, expected {defn.output.__name__} or None"))
    return result


def _wrapped(defn: OnDemandDef, key: tuple[Any, ...], error: BaseException) -> FeatureFunctionError:
    out = FeatureFunctionError.wrap(defn.name, error)
    names = defn.schema.keys
    out.message = f"{out.message} (key {dict(zip(names, key))!r})"
    out.args = (out.message,)
    return out


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _background_loop() -> asyncio.AbstractEventLoop:
    """One event loop thread for every async on-demand call in the process (a sync caller,
    even one running inside another event loop, waits on it without nesting loops)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="volga-on-demand-async", daemon=True).start()
    return _loop
