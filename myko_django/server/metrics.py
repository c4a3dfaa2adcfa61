"""What a worker process counts for operations, and its Prometheus exposition.

The hub, the endpoint, the backend and the doorbell add to `COUNTS` on their paths: a few
int adds per flush of the hub, per command, per frame sent, never a lock or a call into a
metrics library. What is a state rather than a count (open connections, live
subscriptions, positions not yet applied) is read from the hubs when Prometheus scrapes.

prometheus-client (the `metrics` extra) is needed only by `render()`, which
`myko_django.views.metrics` serves when MYKO["METRICS"] is on; this is the only module that
imports it. No Django here either: what a worker counts must not depend on either.
"""

from __future__ import annotations

import asyncio
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

try:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
        generate_latest,
    )
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
    )
except ImportError:  # the `metrics` extra is not installed: counting still works
    CollectorRegistry = None

# Seconds: a command from the socket to its transaction's end (commit or rollback).
COMMAND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
# Seconds: a commit to the frames of the updates it causes handed to this worker's sockets.
FANOUT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Histogram:
    """Observations counted in fixed buckets (upper bounds, inclusive) and summed: a bisect
    and two adds each, no lock (observed on the event loop)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus' buckets: (upper bound, observations at or below it), +Inf last."""
        buckets, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        return buckets


class Counts:
    """The process's counters (one instance: `COUNTS`). Plain attributes: `+=` on them is
    all the hot paths pay."""

    __slots__ = (
        "frames_out",
        "bytes_out",
        "connections_opened",
        "gap_repairs",
        "doorbell_ring_failures",
        "doorbell_listen_failures",
        "doorbell_refused",
        "commands",
        "fanout_seconds",
        "queued_bytes",
        "slow_reader_closes",
        "db_waiting",
    )

    def __init__(self) -> None:
        self.frames_out = 0  # WebSocket messages handed to the server, every kind
        self.bytes_out = 0  # their payload: bytes, or characters of a text frame
        self.connections_opened = 0
        self.gap_repairs = 0  # times the hub read the log to fill a gap in the positions
        self.doorbell_ring_failures = 0  # rings the channel layer refused
        self.doorbell_listen_failures = 0  # times the listener lost the layer
        self.doorbell_refused = 0  # channel-layer messages dropped: no valid signature
        self.commands = {"ok": Histogram(COMMAND_BUCKETS), "error": Histogram(COMMAND_BUCKETS)}
        self.fanout_seconds = Histogram(FANOUT_BUCKETS)
        # Bytes of frames held for clients whose sockets' buffers are full (a state, kept
        # here by the endpoint's Outbox), and connections closed with 1013 for it.
        self.queued_bytes = 0
        self.slow_reader_closes = 0
        self.db_waiting = 0  # database jobs queued for the hub's threads (server/hub.py)


COUNTS = Counts()


def available() -> bool:
    """Whether prometheus-client is installed (`pip install myko-django[metrics]`)."""
    return CollectorRegistry is not None


class _Collector:
    """Reads COUNTS and the hubs at scrape time (prometheus-client's custom collector)."""

    def __init__(self) -> None:
        self.hubs: Sequence[Any] = ()
        self.draining = False
        # (saga name, positions behind the log's head, parked events), read from the
        # database by the view: the same figures on every worker.
        self.sagas: Sequence[tuple[str, int, int]] = ()

    def collect(self) -> Iterable[Any]:
        counts, hubs = COUNTS, list(self.hubs)
        stats = [hub.engine.stats() for hub in hubs]

        def gauge(name: str, doc: str, value: float) -> Any:
            return GaugeMetricFamily(name, doc, value=value)

        def counter(name: str, doc: str, value: float) -> Any:
            return CounterMetricFamily(name, doc, value=value)

        yield gauge(
            "myko_hubs", "Hubs running in this process (one once a socket opened).", len(hubs)
        )
        yield gauge(
            "myko_draining", "1 while this worker drains after SIGTERM.", int(self.draining)
        )
        yield gauge(
            "myko_connections",
            "Open myko WebSocket connections.",
            sum(len(hub.sinks) for hub in hubs),
        )
        yield counter(
            "myko_connections_opened",
            "myko WebSocket connections opened.",
            counts.connections_opened,
        )
        yield gauge(
            "myko_subscriptions",
            "Live queries, views and reports of the open connections.",
            sum(s["subscriptions"] for s in stats),
        )
        yield gauge(
            "myko_live_results",
            "Distinct live results (item type and filter) the subscriptions share.",
            sum(s["live_results"] for s in stats),
        )
        yield gauge(
            "myko_applied_position",
            "The last event log position this worker applied.",
            max((hub.sequencer.applied for hub in hubs), default=0),
        )
        yield counter(
            "myko_events_applied",
            "Events of the log this worker applied to its live results.",
            sum(hub.sequencer.applied - hub.first_position for hub in hubs),
        )
        yield gauge(
            "myko_fanout_lag_positions",
            "Positions this worker has heard of (committed, rung, read) but not applied yet.",
            max((hub.lag() for hub in hubs), default=0),
        )
        yield _histogram(
            "myko_fanout_lag_seconds",
            "From a commit to the frames of its updates handed to this worker's sockets.",
            [((), counts.fanout_seconds)],
        )
        yield counter(
            "myko_gap_repairs",
            "Times a gap in the positions was read from the log.",
            counts.gap_repairs,
        )
        yield counter(
            "myko_log_reads",
            "Reads of the event log: gaps, polls, catch-ups, store loads.",
            sum(hub.sequencer.log_reads for hub in hubs),
        )
        failures = CounterMetricFamily(
            "myko_doorbell_failures",
            "Channel-layer failures: a ring not sent, the listener losing the layer, or a "
            "message refused for a missing or wrong signature.",
            labels=["direction"],
        )
        failures.add_metric(["ring"], counts.doorbell_ring_failures)
        failures.add_metric(["listen"], counts.doorbell_listen_failures)
        failures.add_metric(["refused"], counts.doorbell_refused)
        yield failures
        yield _histogram(
            "myko_command_duration_seconds",
            "Commands, from the socket to the end of their transaction, by outcome "
            "(its _count is the number of commands).",
            [((outcome,), h) for outcome, h in counts.commands.items()],
            labels=["outcome"],
        )
        if self.sagas:
            lag = GaugeMetricFamily(
                "myko_saga_lag_positions",
                "Log positions above a saga's checkpoint (manage.py myko_sagas).",
                labels=["saga"],
            )
            parked = GaugeMetricFamily(
                "myko_saga_parked_events",
                "Events a saga parked after its retries, not yet retried or skipped.",
                labels=["saga"],
            )
            for name, behind, waiting in self.sagas:
                lag.add_metric([name], behind)
                parked.add_metric([name], waiting)
            yield lag
            yield parked
        yield gauge(
            "myko_outgoing_queued_bytes",
            "Bytes of frames held for clients that read slower than they are sent to.",
            counts.queued_bytes,
        )
        yield counter(
            "myko_slow_reader_closes",
            "Connections closed with 1013: over MAX_QUEUED_BYTES waiting to be sent.",
            counts.slow_reader_closes,
        )
        yield gauge(
            "myko_db_jobs_waiting",
            "Database jobs (commands, event batches) waiting for one of the hub's threads.",
            counts.db_waiting,
        )
        yield gauge(
            "myko_asyncio_tasks",
            "asyncio tasks not yet done on the event loop that serves the sockets.",
            _tasks(),
        )
        yield counter("myko_frames_sent", "WebSocket messages sent.", counts.frames_out)
        yield counter(
            "myko_bytes_sent",
            "Payload of the WebSocket messages sent (a text frame counts its characters).",
            counts.bytes_out,
        )


def _tasks() -> int:
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (a scrape outside the hubs' loop)
        return 0


def _histogram(
    name: str, doc: str, series: list[tuple[tuple[str, ...], Histogram]], labels=None
) -> Any:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for label_values, histogram in series:
        family.add_metric(list(label_values), histogram.cumulative(), histogram.sum)
    return family


_collector: _Collector | None = None
_registry: Any = None


def render(
    hubs: Sequence[Any],
    *,
    draining: bool = False,
    sagas: Sequence[tuple[str, int, int]] = (),
) -> tuple[bytes, str]:
    """(body, content type) of a scrape: the counts, the state of `hubs`, the sagas'
    (name, lag, parked), and the process
    (CPU, memory, file descriptors, garbage collections). Call it on the hubs' event loop.
    Needs prometheus-client."""
    global _collector, _registry
    if CollectorRegistry is None:
        raise RuntimeError("metrics need prometheus-client: pip install 'myko-django[metrics]'")
    if _registry is None:
        _collector = _Collector()
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_collector)
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        _registry = registry
    _collector.hubs, _collector.draining, _collector.sagas = hubs, draining, sagas
    try:
        return generate_latest(_registry), CONTENT_TYPE_LATEST
    finally:
        _collector.hubs, _collector.sagas = (), ()
