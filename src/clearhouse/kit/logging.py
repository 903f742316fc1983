"""Structured logging (structlog), JSON in production, readable on a terminal.

Every line is scrubbed before it is written (kit/masking.py): card numbers lose their
middle digits, secrets become ``***``. structlog lines pass ``scrub_event`` just before the
renderer; stdlib lines (uvicorn, SQLAlchemy, libraries) pass ``ScrubFilter`` on the root
handler and on uvicorn's own loggers, which do not propagate to the root.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import IO, Any

import structlog

from clearhouse.kit.ids import new_id
from clearhouse.kit.masking import mask_value, scrub


def scrub_event(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: mask card numbers and secrets in every value, and the values of
    keys named like secrets (``password=...``, ``api_secret=...``)."""
    return mask_value(event_dict)


class ScrubFilter(logging.Filter):
    """Scrubs a stdlib record's message (with its arguments merged in) and its traceback.

    SQLAlchemy puts statement parameters in messages and in exception text, uvicorn
    request lines carry paths and headers: both are scrubbed before any handler formats them.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_clearhouse_scrubbed", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not lose the line
            message = f"{record.msg!r} {record.args!r}"
        scrubbed = scrub(message)
        if scrubbed != message:
            # Scrub the parts first: formatters such as uvicorn's access log read record.args.
            # When a secret only shows once merged (an object's repr), keep the merged text.
            msg = scrub(record.msg) if isinstance(record.msg, str) else record.msg
            args = mask_value(record.args) if record.args else record.args
            try:
                merged = msg % args if args else str(msg)
            except Exception:  # noqa: BLE001
                merged = None
            if merged is not None and scrub(merged) == merged:
                record.msg, record.args = msg, args
            else:
                record.msg, record.args = scrubbed, None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub(record.exc_text)
        if record.stack_info:
            record.stack_info = scrub(record.stack_info)
        record._clearhouse_scrubbed = True
        return True


class _CurrentStream:
    """The stream structlog writes to, looked up at each write: loggers bound before a
    later ``configure_logging`` (structlog caches them) follow the new stream too."""

    target: IO[str] = sys.stderr

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        self.target.flush()


_stream = _CurrentStream()
_scrub_filter = ScrubFilter()


def configure_logging(level: str = "INFO", json: bool = False, stream: IO[str] | None = None) -> None:
    """Configure structlog and the stdlib root logger; ``stream`` defaults to stderr."""
    stream = stream or sys.stderr
    _stream.target = stream
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    logging.basicConfig(format="%(message)s", stream=stream, level=level.upper(), force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_scrub_filter)
        if json:
            # One JSON object per line for the libraries' lines too (SQLAlchemy, httpx, asyncio),
            # with the level, the logger's name and the time, as structlog's own lines have.
            handler.setFormatter(structlog.stdlib.ProcessorFormatter(
                foreign_pre_chain=[structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name,
                                   structlog.processors.TimeStamper(fmt="iso", utc=True)],
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                            structlog.processors.format_exc_info, scrub_event, renderer]))
    # uvicorn's loggers keep their own handlers and do not propagate: filter them where records start.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if _scrub_filter not in logger.filters:
            logger.addFilter(_scrub_filter)
    # Alembic and uvicorn narrate every step at INFO, httpx every request it sends (webhook URLs,
    # which may carry tokens, and the sandbox's notifications); operators want their warnings only.
    for noisy in ("alembic", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(_stream),
        cache_logger_on_first_use=True,
    )


def install_request_logging(app: Any) -> None:
    """Give every request an id (``X-Request-Id``, taken from the caller when it is sane),
    bind it to every log line written while the request runs, log one line per request and
    count and time it in the Prometheus metrics (``kit.metrics.observe_request``)."""
    app.add_middleware(_RequestLog)


class _RequestLog:
    """Pure ASGI (Starlette's ``BaseHTTPMiddleware`` cost about 0.2 ms of CPU a request). One
    layer times the request and notes its status for both the log line and the metrics."""

    _sane = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
    _log = structlog.get_logger("clearhouse.http")

    def __init__(self, app: Any):
        from clearhouse.kit.metrics import observe_request

        self.app = app
        self._observe = observe_request

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((value for name, value in scope["headers"] if name == b"x-request-id"), b"").decode("latin-1")
        request_id = given if self._sane.match(given) else new_id("req")
        header = (b"x-request-id", request_id.encode())
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises

        async def with_request_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [pair for pair in message.get("headers", ()) if pair[0].lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        try:
            await self.app(scope, receive, with_request_id)
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or _route_template(scope)
            self._observe(scope["method"], route or "unmatched", status, seconds)
            self._log.info("request", method=scope["method"], route=route or scope["path"], status=status,
                           ms=round(seconds * 1000, 2))


def _route_template(scope: Any) -> str | None:
    """The template of the route a request was for, when a middleware answered it before
    routing (a replayed ``Idempotency-Key``, a refused signature): the metrics then count it
    under its route, not ``unmatched``. None when no documented route has that path."""
    app = scope.get("app")
    if app is None or not hasattr(app, "openapi"):
        return None
    patterns = getattr(app.state, "route_patterns", None)
    if patterns is None:
        patterns = app.state.route_patterns = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$"), template)
            for template in app.openapi()["paths"]
        ]
    return next((template for pattern, template in patterns if pattern.match(scope["path"])), None)


def operator_console() -> Any:
    """Where commands speak to the operator: stderr, lines never wrapped (an error stays
    one line for whoever greps it), stdout kept for the JSON a command prints."""
    from rich.console import Console

    return Console(stderr=True, soft_wrap=True)
