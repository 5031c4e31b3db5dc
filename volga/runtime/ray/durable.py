"""Checkpoints of a Ray job: what each actor contributes, how the pieces fit the embedded
runtime's checkpoint files, and when a checkpoint cannot be restored.

**How a consistent snapshot is taken.** The driver decides when sources read (one
micro-batch per ``poll_source`` call), so it pauses them: it issues no new poll, waits
for the polls in flight, then waits, stage by stage in topological order, until every
batch sent between actors has been processed (``flush``) and every output batch has been
written. At that point no batch is in flight anywhere, and every actor is between two
calls: snapshotting each actor's operators, input buffers and source position then gives
the state of one cut through the job, the one aligned barriers would give, with empty
channels. (A barrier pass lets later batches overtake the cut; here the sources wait for
the drain instead, which costs one pipeline flush per checkpoint, measured by
``benchmarks/ray_checkpoints.py``.)

**The checkpoint** is one :data:`~volga.ops.protocol.State` tree written by
:class:`volga.runtime.checkpoint.CheckpointStore` (Arrow IPC files and a JSON manifest
renamed last, the last K kept, local or S3 URL), with the plan fingerprint of the
embedded runtime::

    runtime: "ray"
    stages/<stage id>/parallelism, stages/<stage id>/partitions/<p>/
        operators/<step id>   the operator's snapshot()
        inputs/<edge id>      rows held waiting for the senders' watermarks, and those watermarks
        source                the source stage (held rows, watermarks, reader position)
        next_seq, released    arrival numbers (processing-order ties) handed out so far
        metrics               the actor's counters
    outputs/<pipeline>        output rows the driver holds back for the partitions' watermarks
    counters, sink            as in the embedded runtime (rows written per pipeline, memory store)

A checkpoint is restored by a Ray job of the same definition. With another
``parallelism``, keyed state is redistributed by key (:mod:`.rescale`); state that cannot
be is refused (:class:`RescaleRefused`), as is a checkpoint taken by the embedded runtime
(the layouts differ: per stage partition here, per step there).

>>> import polars as pl
>>> packed = pack({"a": {"rows": pl.DataFrame({"x": [1, 2]})}, "n": 3})
>>> unpack(packed)["a"]["rows"]["x"].to_list(), unpack(packed)["n"]
([1, 2], 3)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import polars as pl

from volga.ops.protocol import State
from volga.runtime.checkpoint import Checkpoint
from volga.runtime.local.checkpointing import Checkpointer, CheckpointOptions, latest_of_this_definition
from volga.runtime.local.executors import Metrics
from volga.runtime.ray.exchange import from_wire, to_wire
from volga.runtime.ray.topology import Topology

log = logging.getLogger("volga.checkpoint")

RUNTIME = "ray"


class RescaleRefused(ValueError):
    """A checkpoint was taken with other actor counts than the job restoring it."""


class _Frame(bytes):
    """A frame inside a packed State: its Arrow IPC stream (``exchange.to_wire``), which
    carries Python-object columns too (pickle of a polars frame does not)."""


def pack(state: Any) -> Any:
    """``state`` with every frame and Python-object series as :class:`_Frame` bytes, so it
    crosses Ray's serialisation whatever its columns hold."""
    if isinstance(state, dict):
        return {k: pack(v) for k, v in state.items()}
    if isinstance(state, pl.DataFrame):
        return _Frame(to_wire(state))
    if isinstance(state, pl.Series) and state.dtype == pl.Object:
        return ("series", _Frame(to_wire(state.to_frame())))
    return state


def unpack(state: Any) -> Any:
    """The State :func:`pack` packed."""
    if isinstance(state, dict):
        return {k: unpack(v) for k, v in state.items()}
    if isinstance(state, _Frame):
        return from_wire(bytes(state))
    if isinstance(state, tuple) and len(state) == 2 and state[0] == "series":
        frame = from_wire(bytes(state[1]))
        assert frame is not None
        return frame.to_series(0)
    return state


def restorable(checkpoint: Checkpoint, topology: Topology, url: str) -> Checkpoint:
    """``checkpoint`` laid out for ``topology`` (keyed state redistributed when a stage's
    actor count changed: :mod:`.rescale`), or a clear error if it cannot be restored."""
    from volga.runtime.ray.rescale import Unsupported, rescale

    state = checkpoint.state
    if state.get("runtime") != RUNTIME:
        raise ValueError(
            f"checkpoint {checkpoint.id} in {url} was taken by the embedded runtime; a Ray job cannot restore it "
            "(the state is laid out per step there, per stage partition here). Resume it with the embedded runtime, "
            "or use a new checkpoint_dir"
        )
    saved = state["stages"]
    changed = [(s, saved[str(s.id)]["parallelism"]) for s in topology.stages if saved[str(s.id)]["parallelism"] != s.parallelism]
    if not changed:
        return checkpoint
    try:
        rescaled = rescale(state, topology)
    except Unsupported as e:
        stage, old = changed[0]
        raise RescaleRefused(
            f"checkpoint {checkpoint.id} in {url} was taken with parallelism {old} for "
            f"{stage.label(topology.plan)}; this job runs it with parallelism {stage.parallelism}, and its state "
            f"cannot be redistributed: {e} is not rescalable. Run with parallelism {old} "
            "(RayRuntime(parallelism=...) or set_parallelism), or use a new checkpoint_dir"
        ) from None
    log.info("checkpoint %d rescaled: %s", checkpoint.id,
             ", ".join(f"stage {s.id} from {old} to {s.parallelism} actors" for s, old in changed))
    return dataclasses.replace(checkpoint, state=rescaled)


class RayCheckpointer(Checkpointer):
    """The embedded runtime's checkpointer (timing, background writes, figures), with the
    snapshot collected from the job's actors by the driver (``collect``)."""

    def __init__(self, topology: Topology, options: CheckpointOptions) -> None:
        super().__init__(topology.plan, {}, {}, options)  # operators and sources live in the actors
        # actor states arrive as new memory every time (from Ray's object store): remembering
        # it would only keep the last checkpoint's arrays alive, pinned there, for nothing
        options.store.reuse_memory = False
        self.topology = topology
        self.collect: Callable[[Metrics], State] | None = None
        self.rebuild = False  # the definition changed and the job starts over from the sources' history

    def snapshot(self, metrics: Metrics) -> State:
        assert self.collect is not None, "the driver sets collect before checkpointing"
        return self.collect(metrics)

    def load(self) -> Checkpoint | None:
        """The latest checkpoint, checked against this job (definition, actor counts); None
        when there is none, or the definition changed and ``on_definition_change="rebuild"``
        starts the job over (the stores' outputs dropped; sources are rewound by the driver).
        Prepares the stores either way."""
        latest, self.rebuild = latest_of_this_definition(self.options, self.fingerprint)
        return None if latest is None else restorable(latest, self.topology, self.options.store.url)

    def latest_for_restart(self) -> Checkpoint | None:
        """After a failure: the newest complete checkpoint (a write in flight is finished first)."""
        try:
            self.wait_written()
        except Exception:  # a write that failed leaves the previous checkpoint in force
            log.exception("checkpoint write failed")
        latest = self.options.store.latest()
        return None if latest is None else restorable(latest, self.topology, self.options.store.url)
