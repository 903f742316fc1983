"""Prometheus metrics: request counters and latency, plus domain counters."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
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


def install_metrics(app: FastAPI) -> None:
    @app.middleware("http")
    async def _measure(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        # The route template, never the raw path: ids in paths would explode cardinality.
        name = getattr(route, "path", "unmatched")
        http_latency.labels(request.method, name).observe(time.perf_counter() - started)
        http_requests.labels(request.method, name, str(response.status_code)).inc()
        return response


def metrics_response() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
