"""Structured logging (structlog), JSON in production, readable on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure_logging(level: str = "INFO", json: bool = False) -> None:
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.basicConfig(format="%(message)s", stream=sys.stderr, level=level.upper(), force=True)
    # Alembic and uvicorn narrate every step at INFO; operators want their warnings only.
    for noisy in ("alembic", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


def install_request_logging(app: Any) -> None:
    """Give every request an id (``X-Request-Id``, taken from the caller when it is sane),
    bind it to every log line written while the request runs, and log one line per request."""
    import re
    import time

    from fastapi import Request

    from clearhouse.kit.ids import new_id

    log = structlog.get_logger("clearhouse.http")
    sane = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")

    @app.middleware("http")
    async def _request_context(request: Request, call_next: Any) -> Any:
        given = request.headers.get("x-request-id", "")
        request_id = given if sane.match(given) else new_id("req")
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-Id"] = request_id
        route = request.scope.get("route")
        log.info(
            "request",
            method=request.method,
            route=getattr(route, "path", request.url.path),
            status=response.status_code,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )
        return response
