"""Prometheus metrics of a client: its jobs, its online store writes, its feature server.

``metrics_for(client)`` attaches (once) a :class:`VolgaMetrics` whose registry the
feature server (``/metrics``) and ``volga run --metrics-port`` expose.

Cost on the streaming hot path is kept to a few calls per micro-batch, never per row:
job counters (rows in/out, late, rejected), watermarks, lags and freshness are read from
the jobs' own bookkeeping when Prometheus scrapes (a custom collector); only the
operator timing (one histogram observation per step per micro-batch) and the online
store write timing (one per write, plus the newest timestamp written) run inline.

>>> import volga
>>> from prometheus_client import generate_latest
>>> m = metrics_for(volga.Client(data_dir=__import__("tempfile").mkdtemp()))
>>> b"volga_online_store_write_seconds" in generate_latest(m.registry)
True
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from volga.catalog import definitions_of, sources_of
from volga.runtime.local.stage import FINISHED_WM, NO_WM

# Micro-batch steps and store writes: 50 µs .. 10 s.
FAST_BUCKETS = (5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def metrics_for(client: Any) -> VolgaMetrics:
    """The client's metrics, created and attached on first use."""
    existing = getattr(client, "_volga_metrics", None)
    if existing is None:
        existing = VolgaMetrics(client)
        client._volga_metrics = existing
    return existing


class VolgaMetrics:
    """Metric objects and the scrape-time collector for one client."""

    def __init__(self, client: Any, registry: CollectorRegistry | None = None) -> None:
        self.client = client
        self.registry = registry if registry is not None else CollectorRegistry()
        self.operator_seconds = Histogram(
            "volga_operator_batch_seconds", "Time one engine step takes on one micro-batch",
            ["job", "step", "operator"], registry=self.registry, buckets=FAST_BUCKETS,
        )
        self.store_write_seconds = Histogram(
            "volga_online_store_write_seconds", "Time of one online store write (one micro-batch of a pipeline)",
            ["pipeline"], registry=self.registry, buckets=FAST_BUCKETS,
        )
        self.requests = Counter(
            "volga_serving_requests", "Feature server requests by feature and HTTP status",
            ["feature", "status"], registry=self.registry,
        )
        self.request_seconds = Histogram(
            "volga_serving_request_seconds", "Feature server request latency (all features of a request)",
            registry=self.registry, buckets=FAST_BUCKETS,
        )
        self.newest_written_us: dict[str, int] = {}  # pipeline -> newest event time written online
        self.registry.register(_JobCollector(self))
        self._wrap_store_writes()
        client.plan_observers.append(self.instrument_plan)

    # -- inline instruments --------------------------------------------------------------
    def _wrap_store_writes(self) -> None:
        store = self.client.online_store
        write = store.write
        histogram, newest = self.store_write_seconds, self.newest_written_us

        def timed_write(name: str, schema: Any, rows: Any, **options: Any) -> Any:
            started = time.perf_counter()
            result = write(name, schema, rows, **options)
            histogram.labels(name).observe(time.perf_counter() - started)
            if rows.height:
                ts = rows[schema.timestamp].dt.epoch("us").max()
                if ts is not None and ts > newest.get(name, NO_WM):
                    newest[name] = ts
            return result

        store.write = timed_write  # an instance attribute: the store's class is untouched

    def instrument_plan(self, plan: Any) -> None:
        """Time each step of an embedded job (Ray jobs run elsewhere and are not timed)."""
        if self.client.runtime is not None:
            return
        job = "+".join(plan.outputs)
        for step in plan.steps:
            if step.spec is not None:
                plan.timers[step.id] = self.operator_seconds.labels(job, str(step.id), step.kind).observe

    def observe_request(self, method: str, path: str, body: bytes, status: int, seconds: float) -> None:
        """The feature server's observer: one call per request."""
        if path != "/features" or method != "POST":
            return
        self.request_seconds.observe(seconds)
        features = _targets(body) or ["(unreadable request)"]
        for feature in features:
            self.requests.labels(feature, str(status)).inc()


def _targets(body: bytes) -> list[str]:
    from volga.serving import codec

    try:
        targets = codec.loads(body).get("target_features")
    except Exception:
        return []
    return [t for t in targets if isinstance(t, str)] if isinstance(targets, list) else []


class _JobCollector(Collector):
    """Reads every job of the client at scrape time: nothing runs per row or per batch."""

    def __init__(self, metrics: VolgaMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Any:
        client = self.metrics.client
        now_us = time.time_ns() // 1000
        rows_in = Tally[str]()
        late = Tally[str]()
        rejected = Tally[str]()
        rows_out = Tally[str]()
        lag: dict[str, float] = {}
        source_wm: dict[str, int] = {}
        backlog: dict[str, float] = {}
        running = 0
        for job in list(client.jobs):
            rows_in.update(job.metrics.rows_in)
            late.update(job.metrics.late)
            rows_out.update(job.metrics.rows_out)
            rejected.update(r.source for r in job.rejected)
            if not job.running:
                continue
            running += 1
            for name, stage in getattr(job, "_stages", {}).items():  # embedded runtime only
                if stage.max_seen != NO_WM:
                    lag[name] = max(0.0, (now_us - stage.max_seen) / 1e6)
                if NO_WM < stage.watermark < FINISHED_WM:
                    source_wm[name] = stage.watermark
                try:
                    behind = stage.reader.backlog()
                except Exception:  # a reader closing under us: no figure this scrape
                    behind = None
                if behind is not None:
                    backlog[name] = float(behind)
        families = [
            _counter("volga_source_rows", "Rows read from each source", "source", rows_in),
            _counter("volga_source_rejected", "Rows set aside (invalid, or a row function raised)", "source", rejected),
            _counter("volga_source_late", "Rows older than their source's watermark, set aside", "source", late),
            _gauge("volga_source_event_lag_seconds", "Now minus the newest event time read (running jobs)", "source", lag),
            _gauge("volga_source_backlog_messages", "Records waiting in the source (Kafka: offsets behind the high-water marks)",
                   "source", backlog),
            _counter("volga_pipeline_rows", "Rows each pipeline wrote to its stores", "pipeline", rows_out),
        ]
        defs = definitions_of(client) if source_wm or self.metrics.newest_written_us else {}
        watermark = {}
        for name in rows_out:
            wms = [source_wm[s] for s in sources_of(name, defs) if s in source_wm]
            if wms:
                watermark[name] = min(wms) / 1e6
        families.append(_gauge("volga_pipeline_watermark_seconds", "Event-time watermark (Unix seconds) of running pipelines",
                               "pipeline", watermark))
        freshness = {name: max(0.0, (now_us - us) / 1e6) for name, us in self.metrics.newest_written_us.items()}
        families.append(_gauge("volga_pipeline_freshness_seconds", "Now minus the newest event time written online",
                               "pipeline", freshness))
        checkpointed = [job.metrics for job in client.jobs if getattr(job.metrics, "checkpoints", 0)]
        if checkpointed:
            m = max(checkpointed, key=lambda m: m.checkpoint_unix or 0.0)  # the newest checkpoint of this process
            families.append(_plain(CounterMetricFamily, "volga_checkpoints", "Checkpoints written",
                                   sum(c.checkpoints for c in checkpointed)))
            families.append(_plain(GaugeMetricFamily, "volga_checkpoint_duration_seconds",
                                   "Snapshot and write time of the last checkpoint", m.checkpoint_seconds or 0.0))
            families.append(_plain(GaugeMetricFamily, "volga_checkpoint_size_bytes", "Bytes written by the last checkpoint",
                                   float(m.checkpoint_bytes or 0)))
            families.append(_plain(GaugeMetricFamily, "volga_checkpoint_age_seconds", "Seconds since the last checkpoint completed",
                                   max(0.0, time.time() - (m.checkpoint_unix or time.time()))))
        jobs = GaugeMetricFamily("volga_jobs_running", "Jobs of this process that are running")
        jobs.add_metric([], running)
        families.append(jobs)
        return families


def _plain(kind: Any, name: str, doc: str, value: float) -> Any:
    family = kind(name, doc)
    family.add_metric([], value)
    return family


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _gauge(name: str, doc: str, label: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=[label])
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family
