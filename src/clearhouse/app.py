"""Builds the ASGI app from the domains' routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, text

import clearhouse
from clearhouse import worker
from clearhouse.audit.endpoints import router as audit_router
from clearhouse.channels import connectors as _connectors  # noqa: F401  (registers the built-in channels)
from clearhouse.channels.endpoints import router as channels_router
from clearhouse.channels.protocol import ChannelSet
from clearhouse.channels.routing import Router
from clearhouse.channels.sandbox_endpoints import router as sandbox_router
from clearhouse.identity import service as identity_service
from clearhouse.identity.endpoints import router as identity_router
from clearhouse.identity.middleware import AuthenticationMiddleware
from clearhouse.identity.people.endpoints import router as people_router
from clearhouse.identity.permissions import PUBLIC, requires
from clearhouse.kit.api import HeadAsGet, install_input_guards
from clearhouse.kit.crypto import FieldCipher, load_master_keys
from clearhouse.kit.db import current_revision, head_revision, make_engine
from clearhouse.kit.errors import install_handlers
from clearhouse.kit.idempotency import IdempotencyMiddleware
from clearhouse.kit.logging import configure_logging, install_request_logging
from clearhouse.kit.metrics import metrics_response
from clearhouse.kit.settings import Settings, get_settings
from clearhouse.ledger.endpoints import BODY_MODELS as ledger_body_models
from clearhouse.ledger.endpoints import router as ledger_router
from clearhouse.openapi import complete_openapi
from clearhouse.payments.endpoints import router as payments_router
from clearhouse.payments.orders.endpoints import router as orders_router
from clearhouse.payments.service import Runtime as PaymentsRuntime
from clearhouse.reconciliation.endpoints import router as recon_router
from clearhouse.vault.endpoints import router as vault_router
from clearhouse.webhooks.endpoints import router as webhooks_router


def _readiness(status: str, description: str, **properties: dict[str, str]) -> dict[str, Any]:
    schema = {"type": "object", "required": ["status"],
              "properties": {"status": {"type": "string", "enum": [status]}, **properties}}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# What ``/readyz`` answers, for the OpenAPI document (the route returns its JSON itself).
_READINESS: dict[int | str, dict[str, Any]] = {
    200: _readiness("ready", "The database answers and its schema is at the expected revision",
                    schema={"type": "string", "description": "the schema revision"}),
    503: _readiness("unavailable", "The database does not answer, or its schema is at another revision",
                    detail={"type": "string", "description": "what failed: an error class or the two revisions"}),
}


def create_app(settings: Settings | None = None, *, engine: Engine | None = None,
               bookkeeping_engine: Engine | None = None, cipher: FieldCipher | None = None,
               run_worker: bool = False) -> FastAPI:
    """The ASGI app. Start-up stops here, with a clear ``CryptoConfigError``, when the master
    keys are missing or do not unwrap the database's data keys."""
    settings = settings or get_settings()
    if not structlog.is_configured():
        # Embedded (tests, another ASGI host): without this, structlog's default renderer
        # would print every frame's locals for each 500, slowly, inside the event loop.
        configure_logging(settings.log_level, settings.log_json)
    engine = engine or make_engine(settings.database_url, pool_size=settings.db_pool_size)
    owned_bookkeeping = bookkeeping_engine is None
    bookkeeping_engine = bookkeeping_engine or make_engine(settings.database_url, pool_size=4, durable=False)
    cipher = cipher or FieldCipher.open(engine, load_master_keys(settings))
    identity_service.use_cipher(cipher)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = None
        if run_worker:
            _thread, stop = worker.start_in_thread(engine, settings.worker_interval_seconds,
                                                   PaymentsRuntime.of(app))
        yield
        if stop is not None:
            stop.set()
        recorder = getattr(app.state, "request_recorder", None)
        if recorder is not None:
            await recorder.aclose()
        if owned_bookkeeping:
            bookkeeping_engine.dispose()

    app = FastAPI(
        title="Clearhouse",
        version=clearhouse.__version__,
        description="Payment and settlement platform. Money is integer minor units plus an ISO 4217 code; "
        "errors are RFC 9457 problem+json with a stable `code`.",
        lifespan=lifespan,
        # A path with a trailing slash is another path (404), not a redirect: a signed request followed to the
        # redirect's path failed its signature, which was made for the path sent.
        redirect_slashes=False,
    )
    app.state.engine = engine
    app.state.settings = settings
    app.state.cipher = cipher
    app.state.bookkeeping_engine = bookkeeping_engine
    app.state.channels = ChannelSet(settings)
    app.state.router = Router(app.state.channels)
    install_handlers(app)
    # Middleware added first runs innermost: a replayed answer costs no route work, and
    # is still counted and logged; authentication runs before idempotency, so a key is
    # scoped to its caller and strangers never reach the idempotency table.
    app.add_middleware(HeadAsGet, fastapi_app=app)  # innermost: a HEAD's signature is checked as sent, then it is a GET
    app.add_middleware(IdempotencyMiddleware, engine=engine, cipher=cipher, bookkeeping_engine=bookkeeping_engine)
    app.add_middleware(AuthenticationMiddleware, fastapi_app=app, engine=bookkeeping_engine, cipher=cipher,
                       settings=settings)
    install_input_guards(app)
    install_request_logging(app)
    app.include_router(ledger_router)
    app.include_router(identity_router)
    app.include_router(audit_router)
    app.include_router(people_router)
    app.include_router(vault_router)
    app.include_router(payments_router)
    app.include_router(orders_router)
    app.include_router(channels_router)
    app.include_router(webhooks_router)
    app.include_router(recon_router)
    app.include_router(sandbox_router)

    @app.get("/healthz", tags=["operations"], dependencies=[requires(PUBLIC)])
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    expected_revision = head_revision()

    @app.get("/readyz", tags=["operations"], dependencies=[requires(PUBLIC)], responses=_READINESS)
    def readyz(request: Request) -> Response:
        """The database answers and its schema is at the revision this code expects."""
        # The engine from the app, not from this closure: FastAPI keeps route functions in
        # module-level caches, and a closure over the engine would keep every engine alive.
        engine = request.app.state.engine
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            revision = current_revision(engine)
        except Exception as error:  # noqa: BLE001 - readiness reports any failure
            return JSONResponse({"status": "unavailable", "detail": type(error).__name__}, status_code=503)
        if revision != expected_revision:
            return JSONResponse(
                {"status": "unavailable", "detail": f"schema at {revision}, expected {expected_revision}"},
                status_code=503,
            )
        return JSONResponse({"status": "ready", "schema": revision})

    metrics_permission = PUBLIC if settings.metrics_public else "metrics:read"

    @app.get("/metrics", tags=["operations"], include_in_schema=False, dependencies=[requires(metrics_permission)])
    def metrics(request: Request) -> Response:
        return metrics_response()

    complete_openapi(app, extra_models=ledger_body_models, no_database=["/healthz"])
    return app
