"""server/metrics.py: the plain counters and histograms the hot paths bump, and their
Prometheus text, with the hubs' state read at scrape time (stand-in hubs here)."""

from __future__ import annotations

import pytest

from myko_django.server import metrics
from myko_django.server.metrics import Histogram


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it():
    h = Histogram((0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        h.observe(value)
    assert h.counts == [2, 2, 1]  # an upper bound is inclusive, as Prometheus' "le"
    assert h.count == 5 and h.sum == pytest.approx(8.65)
    assert h.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]


class _Sequencer:
    def __init__(self, applied: int) -> None:
        self.applied = applied
        self.log_reads = 4


class _Engine:
    def stats(self) -> dict[str, int]:
        return {"subscriptions": 7, "live_results": 3}


class _Hub:
    """What the collector reads of a hub."""

    def __init__(self) -> None:
        self.sinks = {"c1": None, "c2": None}
        self.engine = _Engine()
        self.sequencer = _Sequencer(applied=42)
        self.first_position = 40

    def lag(self) -> int:
        return 5


@pytest.fixture
def counts(monkeypatch):
    fresh = metrics.Counts()
    monkeypatch.setattr(metrics, "COUNTS", fresh)
    return fresh


def samples(text: str) -> dict[str, float]:
    """{series with labels: value} of Prometheus' text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def test_the_scrape_has_every_series_the_operations_need(counts):
    counts.frames_out, counts.bytes_out = 12, 3400
    counts.gap_repairs = 2
    counts.doorbell_ring_failures = 1
    counts.commands["ok"].observe(0.004)
    counts.commands["ok"].observe(0.2)
    counts.commands["error"].observe(0.001)
    counts.fanout_seconds.observe(0.003)
    body, content_type = metrics.render([_Hub()], draining=True)
    assert content_type.startswith("text/plain")
    found = samples(body.decode())
    assert found["myko_connections"] == 2
    assert found["myko_subscriptions"] == 7
    assert found["myko_live_results"] == 3
    assert found["myko_events_applied_total"] == 2  # 42 applied, from 40
    assert found["myko_applied_position"] == 42
    assert found["myko_fanout_lag_positions"] == 5
    assert found["myko_fanout_lag_seconds_count"] == 1
    assert found['myko_fanout_lag_seconds_bucket{le="0.0025"}'] == 0
    assert found['myko_fanout_lag_seconds_bucket{le="0.005"}'] == 1
    assert found["myko_gap_repairs_total"] == 2
    assert found["myko_log_reads_total"] == 4
    assert found['myko_doorbell_failures_total{direction="ring"}'] == 1
    assert found['myko_doorbell_failures_total{direction="listen"}'] == 0
    assert found['myko_command_duration_seconds_count{outcome="ok"}'] == 2
    assert found['myko_command_duration_seconds_count{outcome="error"}'] == 1
    assert found['myko_command_duration_seconds_bucket{le="0.005",outcome="ok"}'] == 1
    assert found["myko_frames_sent_total"] == 12
    assert found["myko_bytes_sent_total"] == 3400
    assert found["myko_draining"] == 1
    assert "process_resident_memory_bytes" in found  # the process, for free


def test_without_a_hub_the_scrape_says_zero(counts):
    found = samples(metrics.render([])[0].decode())
    assert found["myko_hubs"] == 0
    assert found["myko_connections"] == 0
    assert found["myko_events_applied_total"] == 0
    assert found["myko_fanout_lag_positions"] == 0


def test_rendering_without_prometheus_client_says_which_extra(monkeypatch):
    monkeypatch.setattr(metrics, "CollectorRegistry", None)
    assert not metrics.available()
    with pytest.raises(RuntimeError, match=r"myko-django\[metrics\]"):
        metrics.render([])
