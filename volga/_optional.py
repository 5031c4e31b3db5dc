"""Optional heavy dependencies (confluent-kafka, redis, psycopg...), imported when first used."""

from __future__ import annotations

import importlib
from types import ModuleType


def optional_import(module: str, *, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or fail saying which extra brings it.

    >>> optional_import("no_such_module_xyz", extra="kafka", what="KafkaSource")
    Traceback (most recent call last):
    ...
    ImportError: KafkaSource needs the Python package 'no_such_module_xyz', which is not installed; install it with: pip install 'volga[kafka]'
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(
            f"{what} needs the Python package {module.split('.')[0]!r}, which is not installed; "
            f"install it with: pip install 'volga[{extra}]'"
        ) from e
