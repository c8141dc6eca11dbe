"""Prometheus metrics for the server: a collector that reads the core's counters at scrape time.

The serving loop never touches prometheus_client: it keeps plain counters (and, with metrics on,
a plain duration histogram), and this collector turns a snapshot of them into metric families
when Prometheus asks (from the HTTP thread). Conventions followed: ``_total`` counters, an info
metric for the catalog version (a version is a label, not a number to graph), every label value
the server can produce exported as 0 from the start (so rate() and alerts see the series before
the first event), and the default process_* and python_* collectors.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from udp_price.address import Address, format_address
from udp_price.server.timing import DurationHistogram
from udp_price.wire.messages import Status

if TYPE_CHECKING:
    from udp_price.server.core import QuoteServer

LABELLED = {
    "status.": ("udp_price_replies_by_status", "Replies sent, by status", "status"),
    "malformed.": ("udp_price_malformed", "Datagrams that could not be decoded, by reason", "reason"),
    "rate_limited.": ("udp_price_rate_limited", "Requests over their source's rate, by what was done", "action"),
    "reloads.": ("udp_price_reloads", "Catalog reloads, by result", "result"),
    "overload.": (
        "udp_price_overload",
        "Overload: replies marked OVERLOADED, socket drops (SO_RXQ_OVFL), wake-ups with a deep backlog",
        "event",
    ),
    "refused.": (
        "udp_price_refused",
        "Datagrams never answered: from a reflecting service's port (source_port) or not a request kind",
        "reason",
    ),
    "auth.dropped.": (
        "udp_price_auth_dropped",
        "Requests dropped unanswered by authentication (--keys), by reason",
        "reason",
    ),
}
KNOWN_LABELS = {
    "status.": tuple(s.name for s in Status),
    "malformed.": (
        "bad_length",
        "bad_checksum",
        "bad_magic",
        "parse_error",
        "reserved_not_zero",
        "empty_item",
        "nul_in_item",
        "item_not_canonical",
        "count_mismatch",
        "unexpected_kind",
    ),
    "rate_limited.": ("dropped", "busy", "new_sources_refused"),
    "reloads.": ("ok", "failed", "unchanged", "no_final_newline"),
    "refused.": ("source_port", "not_a_request"),
    "auth.dropped.": (
        "bad_length",
        "bad_checksum",
        "bad_header",
        "unknown_key",
        "bad_tag",
        "too_old",
        "too_new",
        "before_start",
        "replay",
        "replay_floor",
        "anonymous",
        "no_keys",
    ),
    "overload.": ("marked", "kernel_drops", "deep_backlog"),
}
"""Label values exported (as 0) before the first event; any other value the server counts is added."""
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
    "auth.verified": "Requests whose authentication tag, time and freshness checked out (--keys)",
}


class ServerCollector(Collector):
    def __init__(self, server: QuoteServer, timing: DurationHistogram | None = None) -> None:
        self.server = server
        self.timing = timing

    def collect(self) -> Iterator[Metric]:
        counters = self.server.counters()  # one C-level dict copy: safe against the serving thread
        for key, help_text in PLAIN.items():
            yield CounterMetricFamily(f"udp_price_{key.replace('.', '_')}", help_text, value=counters.get(key, 0))
        for prefix, (name, help_text, label) in LABELLED.items():
            family = CounterMetricFamily(name, help_text, labels=[label])
            values = dict.fromkeys(KNOWN_LABELS[prefix], 0)
            values.update({k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix)})
            for value_label, value in sorted(values.items()):
                family.add_metric([value_label], value)
            yield family
        catalog = self.server.catalog
        yield GaugeMetricFamily("udp_price_catalog_items", "Items in the catalog being served", value=len(catalog))
        yield InfoMetricFamily(
            "udp_price_catalog", "Version of the catalog being served", value={"version": str(catalog.version)}
        )
        cache = self.server.cache
        yield GaugeMetricFamily("udp_price_cache_entries", "Replies in the cache", value=len(cache) if cache else 0)
        if self.timing is not None:
            buckets, total_s = self.timing.cumulative()
            yield HistogramMetricFamily(
                "udp_price_request_handling_seconds",
                "Time to handle one datagram (decode, guards, lookup, encode; socket calls excluded)",
                buckets=buckets,
                sum_value=total_s,
            )


def start_metrics(server: QuoteServer, listen: Address, timing: DurationHistogram | None = None) -> str:
    """Serve /metrics on listen (loopback unless told otherwise) from a daemon thread; returns 'host:port'."""
    registry = CollectorRegistry()
    registry.register(ServerCollector(server, timing))
    for default in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(default)  # process_* and python_*, as every Prometheus client exports them
    httpd, _ = start_http_server(listen[1], addr=listen[0], registry=registry)
    return format_address((listen[0], int(httpd.server_address[1])))
