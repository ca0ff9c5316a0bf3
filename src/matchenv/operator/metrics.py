"""Prometheus metrics of the operator."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

RESYNCS = Counter("matchenv_resyncs_total", "Resync passes over all environments.")
RESYNC_ERRORS = Counter("matchenv_resync_errors_total", "Resync passes that failed (e.g. API server down).")
RESYNC_SECONDS = Histogram("matchenv_resync_duration_seconds", "Time one resync pass took.")
MANAGEMENT_CALLS = Gauge("matchenv_resync_management_calls",
                         "RabbitMQ management-API calls made by the last resync pass.")
ENVIRONMENTS = Gauge("matchenv_environments", "MatchEnvironments seen by the last resync pass.")
STATUS_CHANGES = Counter("matchenv_status_changes_total", "Status writes made by resync passes.")
WRITES = Counter("matchenv_writes_total", "Writes this operator made, by target (kubernetes, broker).", ["target"])
FENCED_WRITES = Counter("matchenv_fenced_writes_total",
                        "Writes refused because this operator was no longer sure to lead.")
BROKER_EVENTS = Counter("matchenv_broker_events_total",
                        "Deletions the broker reported (rabbitmq_event_exchange) that the operator looked at.")
DRIFT_REPAIRS = Counter("matchenv_drift_repairs_total", "Converges started by a broker event.")
BACKLOG_WAKES = Counter("matchenv_backlog_wakes_total",
                        "Converges started by the backlog probe: an autoscaled queue's ready count asked for more "
                        "workers between two resyncs.")
CONVERGE_SECONDS = Histogram("matchenv_converge_duration_seconds", "Time one environment's converge took.",
                             buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
LEADING = Gauge("matchenv_leader", "1 while this operator replica leads (holds the Lease and converges), else 0.")
ARCHIVE_MAX_AGE = Gauge("matchenv_archive_max_age_seconds",
                        "How long the archive keeps a match (MATCHENV_ARCHIVE_MAX_AGE): a backfill reaches no further "
                        "back; 0 without an archive.")


class ManagementCallsCollector(Collector):
    """``matchenv_management_calls_total``: every management-API call the operator made, handlers and passes alike
    (the clients count them; a burst's calls per environment are its increase over the environments added)."""

    def __init__(self, total: Callable[[], int]) -> None:
        self.total = total

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("matchenv_management_calls",
                                     "RabbitMQ management-API calls this operator made (handlers, resyncs, repairs).")
        family.add_metric([], float(self.total()))
        yield family
