"""As-of (point-in-time) join (DESIGN.md "Join").

Each left row at time t gets the latest right row of the same key with ts <= t (among
equal timestamps, the one that arrived last). Both inputs arrive in event-time order and
are buffered until the runtime says how far it is safe to go (``release(bound)``: every
row with ts < bound; ``None`` = everything). State between calls is only the latest
right row per key.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import polars as pl

from volga.api import nodes
from volga.api.entity import Schema
from volga.ops.frames import epoch_us, pick
from volga.ops.protocol import FINISHED_WM, BufferedOperator, Input, OperatorSpec, State
from volga.ops.rescaling import split_join
from volga.ops.routing import SEQ

_RTS = "__volga_right_ts"
_MATCH = "__volga_matched"


@dataclasses.dataclass(frozen=True)
class JoinShape:
    """What an as-of join needs of its inputs and output: an Entity API ``JoinNode``'s
    (``of``), or one a DataStream join builds for its prepared inputs."""

    schema: Schema
    left: Schema
    right: Schema
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    how: str  # "left" | "inner"
    right_columns: tuple[tuple[str, str], ...]  # right column -> output column

    @classmethod
    def of(cls, node: nodes.JoinNode) -> JoinShape:
        return cls(node.schema, node.left.schema, node.right.schema, node.left_on, node.right_on, node.how, node.right_columns)


class AsOfJoinOp(BufferedOperator):
    def __init__(self, node: nodes.JoinNode | JoinShape) -> None:
        self.node = node = node if isinstance(node, JoinShape) else JoinShape.of(node)
        self.left_ts = node.left.timestamp
        self.right_ts = node.right.timestamp
        self.right_keys = list(node.right_on)
        self.left_keys = list(node.left_on)
        self.left_buffer: list[pl.DataFrame] = []
        self.right_buffer: list[pl.DataFrame] = []
        # right rows sorted by time: the latest per key up to the watermark, then every row
        self.latest = self._prepare_right(pl.DataFrame(schema=node.right.polars_schema()))
        self.uncollapsed = False

    def push(self, side: int, batch: pl.DataFrame) -> None:
        if batch.height:
            (self.left_buffer if side == 0 else self.right_buffer).append(batch)

    def snapshot(self) -> dict[str, object]:
        """Frames only (``ops.protocol``): the right-side state and each side's buffered rows."""
        return {
            "latest": self.latest,
            "uncollapsed": self.uncollapsed,
            "left": pl.concat(self.left_buffer) if self.left_buffer else None,
            "right": pl.concat(self.right_buffer) if self.right_buffer else None,
        }

    def restore(self, snap: dict[str, object]) -> None:
        self.latest = snap["latest"]  # type: ignore[assignment]  # frames are never changed in place
        self.uncollapsed = bool(snap["uncollapsed"])
        self.left_buffer = [snap["left"]] if snap["left"] is not None else []  # type: ignore[list-item]
        self.right_buffer = [snap["right"]] if snap["right"] is not None else []  # type: ignore[list-item]

    @property
    def buffered_rows(self) -> int:
        return sum(b.height for b in self.left_buffer) + sum(b.height for b in self.right_buffer)

    def release_at(self, bound: int, inputs: Sequence[Input]) -> pl.DataFrame:
        """Left rows wait only for the right input's watermark (see :meth:`release`)."""
        right_wm, right_idle = inputs[1][1]
        left_bound = None if right_idle or right_wm >= FINISHED_WM else right_wm
        return self.release(None if bound >= FINISHED_WM else bound, left_bound_us=left_bound)

    def release(self, bound_us: int | None, *, left_bound_us: int | None | object = ...) -> pl.DataFrame:
        """Join and return the buffered left rows with ts < ``left_bound_us``.

        ``bound_us`` is the operator's watermark (every future row on either input has
        ts >= it; None = the inputs are done). Left rows only need every right row at or
        before their time, so the runtime may pass the right input's watermark as
        ``left_bound_us`` (default: ``bound_us``), which releases the newest left row at
        once instead of after the next one arrives. Right rows are kept in full until
        ``bound_us`` passes them, then only the latest per key.
        """
        left = take_before(self.left_buffer, self.left_ts, bound_us if left_bound_us is ... else left_bound_us)  # type: ignore[arg-type]
        right = take_before(self.right_buffer, self.right_ts, None)
        if right is not None and right.height:
            # sorted again: after an idle period a right row may arrive older than the state
            both = pl.concat([self.latest, self._prepare_right(right)]).sort(_RTS, maintain_order=True)
            # equal (key, ts): the last arrival wins
            self.latest = both.unique(subset=[*self.right_keys, _RTS], keep="last", maintain_order=True)
            self.uncollapsed = True
        out = self._join(left, self.latest) if left is not None and left.height else None
        if self.uncollapsed:
            self._collapse(bound_us)
        if out is None:
            return pl.DataFrame(schema=self.node.schema.polars_schema())
        return out

    def _collapse(self, bound_us: int | None) -> None:
        """Keep only the latest right row per key among rows no future left row can miss."""
        cut = self.latest.height
        if bound_us is not None:
            cut = int(np.searchsorted(epoch_us(self.latest[_RTS]), bound_us, side="left"))
        old = self.latest.slice(0, cut).unique(subset=self.right_keys, keep="last", maintain_order=True)
        recent = self.latest.slice(cut)
        self.latest = pl.concat([old.sort(_RTS, maintain_order=True), recent])
        self.uncollapsed = recent.height > 0

    def _prepare_right(self, right: pl.DataFrame) -> pl.DataFrame:
        """Right rows as held in the state: ``_RTS`` (their event time), ``_MATCH`` and
        the columns ``node.right_columns`` carries, renamed to their output names. The
        right timestamp is carried only if ``right_columns`` names it (the Entity API does
        not; a DataStream join may)."""
        prepared = right.with_columns(pl.col(self.right_ts).alias(_RTS), pl.lit(True).alias(_MATCH))
        carried = dict(self.node.right_columns)
        if self.right_ts not in carried and self.right_ts not in self.right_keys:
            prepared = prepared.drop(self.right_ts)
        return prepared.rename({src: dst for src, dst in carried.items() if src != dst})

    def _join(self, left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
        right = right.rename({rk: lk for lk, rk in zip(self.left_keys, self.right_keys) if lk != rk})
        joined = left.join_asof(
            right, left_on=self.left_ts, right_on=_RTS, by=self.left_keys, strategy="backward", check_sortedness=False
        )
        if self.node.how == "inner":
            joined = joined.filter(pl.col(_MATCH).is_not_null())
        return pick(joined, self.node.schema.names)


def take_before(buffer: list[pl.DataFrame], ts_col: str, bound_us: int | None) -> pl.DataFrame | None:
    """Remove and return the buffered rows with ts < bound (rows arrive in ts order)."""
    if not buffer:
        return None
    rows = pl.concat(buffer) if len(buffer) > 1 else buffer[0]
    buffer.clear()
    if bound_us is None:
        return rows
    cut = int(np.searchsorted(epoch_us(rows[ts_col]), bound_us, side="left"))
    if cut < rows.height:
        buffer.append(rows.slice(cut))
    return rows.slice(0, cut)


class SeqJoin(AsOfJoinOp):
    """The as-of join carrying the sequence column: output rows keep their left row's.

    Right rows are pushed without the column (their order is settled before the push)."""

    def push(self, side: int, batch: pl.DataFrame) -> None:
        super().push(side, batch.drop(SEQ, strict=False) if side == 1 else batch)

    def _join(self, left: pl.DataFrame, right: pl.DataFrame) -> pl.DataFrame:
        right = right.rename({rk: lk for lk, rk in zip(self.left_keys, self.right_keys) if lk != rk})
        joined = left.join_asof(
            right, left_on=self.left_ts, right_on=_RTS, by=self.left_keys, strategy="backward",
            check_sortedness=False,
        )
        if self.node.how == "inner":
            joined = joined.filter(pl.col(_MATCH).is_not_null())
        return joined.select([*self.node.schema.names, SEQ])


@dataclasses.dataclass
class JoinSpec(OperatorSpec):
    """The as-of join of a ``JoinNode`` (left rows by ``left_on``, right rows by ``right_on``)."""

    node: nodes.JoinNode

    def build(self, *, sequenced: bool = False) -> AsOfJoinOp:
        return (SeqJoin if sequenced else AsOfJoinOp)(self.node)

    def input_keys(self) -> list[tuple[str, ...]]:
        return [tuple(self.node.left_on), tuple(self.node.right_on)]

    def fingerprint(self) -> list[str]:
        return [f"left_keys {list(self.node.left_on)!r}", f"right_keys {list(self.node.right_on)!r}", f"how {self.node.how}"]

    def rescale(self, states: list[State], routed: tuple[str, ...] | None, n: int) -> list[State]:
        return split_join(states, self.node, _RTS, n)
