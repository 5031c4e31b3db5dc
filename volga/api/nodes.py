"""Logical plan nodes: what a pipeline body and a DataStream builder build. Frozen data;
nothing runs here.

Every node knows its output ``Schema`` (inferred when the node is created, so mistakes
surface at definition time). This is the one node family of both APIs: the Entity API's
nodes are defined here, the DataStream nodes (``volga.stream.nodes``) subclass ``Node``,
and one compiler (``volga.plan.compile.compile_graph``) turns any graph of them into a
physical plan: the Entity nodes by their type, every other node through its ``lower()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, Union

import polars as pl

from volga.api.aggregates import Aggregate
from volga.api.entity import Schema

RowFn = Callable[[dict[str, Any]], Any]
Predicate = Union[RowFn, pl.Expr]


@dataclasses.dataclass(frozen=True, eq=False)
class Node:
    schema: Schema
    # how many partitions run the node's operator (a DataStream's set_parallelism(n));
    # None: the runtime's default
    parallelism: int | None = dataclasses.field(default=None, kw_only=True)

    @property
    def inputs(self) -> tuple[Node, ...]:
        return ()

    def label(self) -> str:
        return type(self).__name__.removesuffix("Node").lower()

    def lower(self) -> Any:
        """How a node the plan layer does not know compiles: a ``volga.plan.compile.Lowering``
        (its step kind and operator spec). None (the default): the compiler knows the node
        (the Entity API's nodes below) or cannot compile it."""
        return None


@dataclasses.dataclass(frozen=True, eq=False)
class SourceNode(Node):
    source: Any  # volga.api.decorators.SourceDef (kept untyped to avoid an import cycle)

    def label(self) -> str:
        return f"source[{self.source.name}]"


@dataclasses.dataclass(frozen=True, eq=False)
class UnaryNode(Node):
    input: Node

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.input,)


@dataclasses.dataclass(frozen=True, eq=False)
class FilterNode(UnaryNode):
    predicate: Predicate


@dataclasses.dataclass(frozen=True, eq=False)
class TransformNode(UnaryNode):
    """Row function (dict -> dict) or a list of polars expressions (``with_columns``).

    A row function must return exactly ``schema``'s columns (``exact_keys``, the inferred
    case) or at least them (an explicit ``schema=``: extra keys are ignored); any other
    row is rejected with a reason naming the extra/missing keys."""

    fn: RowFn | tuple[pl.Expr, ...]
    exact_keys: bool = True


@dataclasses.dataclass(frozen=True, eq=False)
class AssignNode(UnaryNode):
    column: str
    fn: RowFn | pl.Expr


@dataclasses.dataclass(frozen=True, eq=False)
class RenameNode(UnaryNode):
    mapping: tuple[tuple[str, str], ...]


@dataclasses.dataclass(frozen=True, eq=False)
class SelectNode(UnaryNode):
    """Keep these columns (also used by ``drop``); keys and timestamp always stay."""

    columns: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class DropNullNode(UnaryNode):
    columns: tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class AggregateNode(UnaryNode):
    keys: tuple[str, ...]
    aggregates: tuple[Aggregate, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class JoinNode(Node):
    left: Node
    right: Node
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: Literal["left", "inner"]
    # right column name -> output column name (collisions get the suffix)
    right_columns: tuple[tuple[str, str], ...]

    @property
    def inputs(self) -> tuple[Node, ...]:
        return (self.left, self.right)


# the stateless nodes: a compiler fuses runs of them into one chain operator
STATELESS = (FilterNode, TransformNode, AssignNode, RenameNode, SelectNode, DropNullNode)


def walk(roots: Node | Sequence[Node]) -> list[Node]:
    """Every node reachable from ``roots`` (one node or several), inputs before the nodes
    that use them; a node several roots reach comes once.

    >>> from volga.api.entity import Schema
    >>> leaf = Node(Schema("s", (), (), "ts"))
    >>> a, b = SelectNode(leaf.schema, leaf, ()), DropNullNode(leaf.schema, leaf, ())
    >>> [n.label() for n in walk([a, b])], walk(a) == [leaf, a]
    (['', 'select', 'dropnull'], True)
    """
    order: list[Node] = []
    seen: set[int] = set()

    def visit(node: Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for child in node.inputs:
            visit(child)
        order.append(node)

    for root in [roots] if isinstance(roots, Node) else roots:
        visit(root)
    return order
