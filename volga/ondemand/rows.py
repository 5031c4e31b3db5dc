"""Rows of on-demand answers: dicts of the output entity's fields that also read as attributes."""

from __future__ import annotations

from typing import Any


class Row(dict):  # type: ignore[type-arg]
    """A feature row: a plain dict of the output entity's fields (equal to any dict with the
    same items) whose fields also read as attributes.

    >>> row = Row(user_id="7", total_spent=3.0)
    >>> row.total_spent, row == {"user_id": "7", "total_spent": 3.0}
    (3.0, True)
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"row has no field {name!r} (its fields: {list(self)})") from None

    def to_dict(self) -> dict[str, Any]:
        """The row as a plain dict (as entity instances give it)."""
        return dict(self)
