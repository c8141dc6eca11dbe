"""Prometheus metrics for the server: a collector that reads the core's counters at scrape time.

The serving loop never touches prometheus_client: it keeps plain counters, and this collector
turns a snapshot of them into metric families when Prometheus asks (from the HTTP thread).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from udp_price.server.core import QuoteServer

LABELLED = {
    "status.": ("udp_price_replies_by_status", "Replies sent, by status", "status"),
    "malformed.": ("udp_price_malformed", "Datagrams that could not be decoded, by reason", "reason"),
    "rate_limited.": ("udp_price_rate_limited", "Requests over their source's rate, by what was done", "action"),
    "reloads.": ("udp_price_reloads", "Catalog reloads, by result", "result"),
    "refused.": (
        "udp_price_refused",
        "Datagrams never answered: from a reflecting service's port (source_port) or not a request kind",
        "reason",
    ),
}
PLAIN = {
    "requests": "Datagrams received",
    "replies": "Replies sent",
    "cache_hits": "Retransmitted requests answered from the reply cache",
    "cache_evictions": "Reply cache entries evicted for size or age",
    "dropped": "Datagrams answered with silence",
    "send_errors": "Replies the kernel refused to send",
    "internal_errors": "Datagrams (or duties) that raised an unexpected exception; the server went on",
    "bytes_received": "Bytes of datagrams received",
    "bytes_sent": "Bytes of datagrams sent; never more than bytes_received",
}


class ServerCollector(Collector):
    def __init__(self, server: QuoteServer) -> None:
        self.server = server

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = self.server.counters()  # one C-level dict copy: safe against the serving thread
        for key, help_text in PLAIN.items():
            yield CounterMetricFamily(f"udp_price_{key}", help_text, value=counters.get(key, 0))
        for prefix, (name, help_text, label) in LABELLED.items():
            family = CounterMetricFamily(name, help_text, labels=[label])
            for key, value in sorted(counters.items()):
                if key.startswith(prefix):
                    family.add_metric([key[len(prefix) :]], value)
            yield family
        catalog = self.server.catalog
        yield GaugeMetricFamily("udp_price_catalog_items", "Items in the catalog being served", value=len(catalog))
        yield GaugeMetricFamily(
            "udp_price_catalog_version", "Version of the catalog being served", value=catalog.version
        )
        cache = self.server.cache
        yield GaugeMetricFamily("udp_price_cache_entries", "Replies in the cache", value=len(cache) if cache else 0)


def start_metrics(server: QuoteServer, port: int, host: str = "127.0.0.1") -> str:
    """Serve /metrics on host:port (loopback by default) from a daemon thread; returns 'host:port'."""
    registry = CollectorRegistry()
    registry.register(ServerCollector(server))
    httpd, _ = start_http_server(port, addr=host, registry=registry)
    bound_port = httpd.server_address[1]
    return f"{host}:{bound_port}"
