"""Prometheus metrics: request counters and latency, plus domain counters."""

from __future__ import annotations

from fastapi import Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

http_requests = Counter(
    "clearhouse_http_requests_total", "HTTP requests answered", ["method", "route", "status"]
)
http_latency = Histogram(
    "clearhouse_http_request_seconds",
    "HTTP request latency",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
ledger_transfers = Counter(
    "clearhouse_ledger_transfers_total", "Ledger transfers by outcome", ["outcome"]
)


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count and time one answered request (``kit.logging``'s request layer calls this, so a
    request is timed and its status noted once, for its log line and its metrics alike).
    ``route`` is the route template, never the raw path: ids in paths would explode cardinality."""
    http_latency.labels(method, route).observe(seconds)
    http_requests.labels(method, route, str(status)).inc()


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
