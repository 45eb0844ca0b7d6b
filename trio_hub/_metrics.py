"""Prometheus metrics of a served hub, read from its statistics at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Final

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["CONTENT_TYPE", "HubCollector", "open_registry", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
BACKEND_STATES: Final = ("connected", "disconnected", "local")


class HubCollector(Collector):
    """Turns one :meth:`Hub.statistics` snapshot into metric families, per scrape.

    Nothing is counted per message: the hub keeps its counters anyway, and a
    scrape reads them once.
    """

    def __init__(
        self,
        hub: Hub,
        refusals: Callable[[], Mapping[str, int]],
        connections: Callable[[], int],
        requests: Callable[[], Mapping[tuple[str, int], int]],
    ) -> None:
        self._hub = hub
        self._refusals = refusals
        self._connections = connections
        self._requests = requests

    def collect(self) -> Iterator[Metric]:
        stats = self._hub.statistics()
        yield _gauge("clients", "WebSocket clients registered now.", stats.clients)
        yield _gauge(
            "topics", "Topics with at least one local subscriber.", len(stats.clients_per_topic)
        )
        yield _gauge(
            "connections",
            "TCP connections open now: clients, handshakes and HTTP requests.",
            self._connections(),
        )
        messages = CounterMetricFamily(
            "trio_hub_messages",
            "Messages handed to the hub, by kind: broadcast, published, sent (to one "
            "client) and received (from other nodes).",
            labels=["kind"],
        )
        messages.add_metric(["broadcast"], stats.messages_broadcast)
        messages.add_metric(["published"], stats.messages_published)
        messages.add_metric(["sent"], stats.messages_sent)
        messages.add_metric(["received"], stats.messages_received)
        yield messages
        yield _counter("deliveries", "Messages written to a client's connection.", stats.deliveries)
        yield _counter("drops", "Messages a drop policy discarded (full queue).", stats.drops)
        yield _counter("evictions", "Clients closed for being slow.", stats.evictions)
        yield _counter(
            "keepalive_timeouts",
            "Clients closed for not answering a ping.",
            stats.keepalive_timeouts,
        )
        yield _counter(
            "discarded", "Messages still queued when their client left.", stats.discarded
        )
        yield _counter("errors", "Clients ended by an exception.", stats.errors)
        yield _counter("registrations", "Clients registered since the start.", stats.registrations)
        yield _gauge("queued_messages", "Messages accepted and not yet written, now.", stats.queued)
        yield _gauge(
            "queued_bytes", "Encoded size of the queued messages, now.", stats.queued_bytes
        )
        yield _gauge(
            "unsent_bytes",
            "Bytes the served connections took and their sockets did not, now.",
            stats.unsent_bytes,
        )
        yield _gauge(
            "intake_paused", "1 while intake is paused (overload).", float(stats.intake_paused)
        )
        yield _counter("intake_pauses", "Times intake paused (overload).", stats.intake_pauses)

        backend = stats.backend
        state = GaugeMetricFamily(
            "trio_hub_backend_state",
            "1 for the backend's current state, 0 for the others.",
            labels=["backend", "state"],
        )
        for name in BACKEND_STATES:
            state.add_metric([backend.name, name], 1.0 if backend.state == name else 0.0)
        yield state
        yield _counter(
            "backend_published", "Publications handed to the backend.", backend.published
        )
        yield _counter(
            "backend_publish_failures",
            "Publications that never reached the backend.",
            backend.publish_failures,
        )
        yield _counter(
            "backend_received", "Publications from other nodes delivered here.", backend.received
        )
        yield _counter("backend_outages", "Times the backend connection was lost.", backend.outages)

        refusals = CounterMetricFamily(
            "trio_hub_handshake_refusals",
            "Connections refused or dropped before becoming a client, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(self._refusals().items()):
            refusals.add_metric([reason], count)
        yield refusals
        requests = CounterMetricFamily(
            "trio_hub_http_requests",
            "Plain HTTP requests answered, by endpoint and status.",
            labels=["endpoint", "status"],
        )
        for (endpoint, status), count in sorted(self._requests().items()):
            requests.add_metric([endpoint, str(status)], count)
        yield requests


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"trio_hub_{name}", documentation, value=value)


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"trio_hub_{name}", documentation, value=value)


def open_registry(collector: HubCollector) -> CollectorRegistry:
    """A registry of the server's own (never the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of ``registry``."""
    return generate_latest(registry)
