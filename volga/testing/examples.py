"""Symbolic frames for trying Entity operators outside a pipeline (the docstring examples use them).

``orders`` and ``users`` are frames over the quickstart's ``Order`` and ``User`` entities,
as a ``@pipeline`` body receives them: operators check the schema and return new frames;
nothing runs and nothing is registered.

>>> orders.columns
['buyer_id', 'product_id', 'product_type', 'purchased_at', 'product_price']
>>> users.schema.keys
('user_id',)
"""

from __future__ import annotations

from typing import Any

from volga.api import nodes
from volga.api.decorators import SourceDef
from volga.api.frame import Entity
from volga.testing.quickstart import Order, User

__all__ = ["frame", "orders", "users"]


def frame(entity_cls: type, name: str) -> Entity:
    """A frame over ``entity_cls`` read from a source called ``name`` (never registered)."""

    def read() -> Any:
        raise RuntimeError(f"example source {name} cannot be read")

    read.__name__ = name
    source = SourceDef(read, entity_cls)
    return Entity(nodes.SourceNode(source.schema, source), f"example frame {name}")


orders = frame(Order, "orders")
users = frame(User, "users")
