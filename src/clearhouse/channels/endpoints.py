"""Routing rules and channel health over HTTP: parse, call the routing service in one
transaction, render."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request, Response
from sqlalchemy.orm import Session

from clearhouse.channels import routing
from clearhouse.channels.protocol import ChannelSet, UnknownChannel
from clearhouse.channels.schemas import (
    BreakerOut,
    ChannelOut,
    ChannelsOut,
    CostOut,
    RoutePlanOut,
    RoutePreviewIn,
    RuleCreate,
    RuleOut,
    RuleUpdate,
)
from clearhouse.identity import service as identity
from clearhouse.identity.permissions import actor_of, principal_of, requires
from clearhouse.kit import clock
from clearhouse.kit.api import ModeFilter, Page, PrefixRouter
from clearhouse.kit.db import transact
from clearhouse.kit.errors import NotFound, ValidationFailed

router = PrefixRouter(prefix="/v1", tags=["routing"])
_READ = [requires("routing:read")]
_WRITE = [requires("routing:write")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "Writing a rule: a merchant caller tried to change a platform-wide rule "
          "(`platform_rule_read_only`)"},
    404: {"description": "Unknown, or another merchant's (`routing_rule_not_found`, `unknown_channel`, "
          "`not_found` for a merchant)"},
    422: {"description": "A rule is broken (`validation_error`, `unknown_rule_channel`, `duplicate_rule_channel`, "
          "`rule_channel_unsupported`, `unknown_currency`, `invalid_country`, `invalid_card_bin_prefix`, "
          "`invalid_amount_range`; a preview: `validation_error` with `mode_not_allowed` when a key asks for "
          "the other mode)"},
}


def _engine(request: Request) -> Any:
    return request.app.state.engine


def _channels(request: Request) -> ChannelSet:
    return request.app.state.channels


def _router(request: Request) -> routing.Router:
    return request.app.state.router


@router.get("/routing/rules", response_model=Page[RuleOut], dependencies=_READ)
def list_rules(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
    merchant_id: Annotated[str | None, Query(max_length=40, pattern=r"^[A-Za-z0-9_\-]+$",
                                              description="Platform callers: one merchant's")] = None,
    scope: Annotated[str | None, Query(pattern="^platform$", description="`platform`: platform-wide only")] = None,
    livemode: ModeFilter = None,
) -> Page[RuleOut]:
    """Rules in creation order. Merchant callers see their own and the platform-wide ones."""
    principal = principal_of(request)
    rows, more = transact(_engine(request), lambda s: routing.list_rules(
        s, principal, merchant_id=merchant_id, platform_only=scope == "platform", limit=limit,
        starting_after=starting_after, livemode=livemode))
    return Page(data=[RuleOut(**routing.rule_dict(r)) for r in rows], has_more=more,
                next_cursor=rows[-1].id if more else None)


@router.post("/routing/rules", status_code=201, response_model=RuleOut, responses=_ERRORS, dependencies=_WRITE)
def create_rule(body: RuleCreate, request: Request) -> RuleOut:
    """Write a rule. Platform callers write platform-wide rules (``merchant_id`` null) or any
    merchant's; merchant callers write their own."""
    principal, actor, channels = principal_of(request), actor_of(request), _channels(request)
    fields = body.model_dump(exclude={"merchant_id"})

    def work(session: Session) -> RuleOut:
        row = routing.create_rule(session, channels, actor, principal, merchant_id=body.merchant_id, fields=fields)
        return RuleOut(**routing.rule_dict(row))

    return transact(_engine(request), work)


@router.get("/routing/rules/{rule_id}", response_model=RuleOut, responses=_ERRORS, dependencies=_READ)
def get_rule(rule_id: str, request: Request) -> RuleOut:
    principal = principal_of(request)
    return transact(_engine(request), lambda s: RuleOut(**routing.rule_dict(routing.get_rule(s, principal, rule_id))))


@router.patch("/routing/rules/{rule_id}", response_model=RuleOut, responses=_ERRORS, dependencies=_WRITE)
def update_rule(rule_id: str, body: RuleUpdate, request: Request) -> RuleOut:
    """Change the fields given; a condition set to null no longer applies."""
    principal, actor, channels = principal_of(request), actor_of(request), _channels(request)
    changes = body.model_dump(include=body.model_fields_set)

    def work(session: Session) -> RuleOut:
        row = routing.update_rule(session, channels, actor, principal, rule_id, changes)
        return RuleOut(**routing.rule_dict(row))

    return transact(_engine(request), work)


@router.delete("/routing/rules/{rule_id}", status_code=204, responses=_ERRORS, dependencies=_WRITE)
def delete_rule(rule_id: str, request: Request) -> Response:
    principal, actor = principal_of(request), actor_of(request)
    transact(_engine(request), lambda s: routing.delete_rule(s, actor, principal, rule_id))
    return Response(status_code=204)


@router.post("/routing/preview", response_model=RoutePlanOut, responses=_ERRORS, dependencies=_READ)
def preview_route(body: RoutePreviewIn, request: Request) -> RoutePlanOut:
    """The route a payment like this would get now, every choice explained. Changes nothing:
    no half-open probe is taken. An empty ``candidates`` list is an answer, not an error."""
    principal = principal_of(request)
    merchant_id = body.merchant_id
    if principal.merchant_id is not None:
        if merchant_id is not None and merchant_id != principal.merchant_id:
            raise NotFound(f"no merchant {merchant_id}")
        merchant_id = principal.merchant_id
    routing.check_terms(body.currency, body.country)
    livemode = principal.creates_livemode if body.livemode is None else body.livemode
    if principal.livemode not in (None, livemode):
        raise ValidationFailed("a key previews payments of its own mode", errors=[
            {"loc": ["body", "livemode"], "type": "mode_not_allowed",
             "msg": f"a {principal.mode} key previews {principal.mode} payments only"}])

    def work(session: Session) -> routing.RoutePlan:
        if merchant_id is not None and principal.merchant_id is None:
            identity.get_merchant(session, None, merchant_id)  # 404 not_found, as a rule naming it
        return _router(request).preview(session, merchant_id=merchant_id, method=body.method,
                                        currency=body.currency, amount=body.amount, country=body.country,
                                        card_bin=body.card_bin, livemode=livemode)

    plan = transact(_engine(request), work)
    return RoutePlanOut(
        rule_id=plan.rule_id, evaluated_at=clock.now(),
        candidates=[{"channel": c.channel, "score": c.score, "reason": c.reason} for c in plan.candidates],
        skipped=[{"channel": s.channel, "reason": s.reason, "transient": s.transient} for s in plan.skipped],
    )


def _channel_out(request: Request, name: str) -> ChannelOut:
    connector = _channels(request)[name]
    router_ = _router(request)
    livemode = principal_of(request).creates_livemode  # a test key sees the test traffic's circuit and health
    health = router_.health(name, livemode)
    return ChannelOut(
        name=name, methods=list(connector.methods),
        currencies=list(connector.currencies) if connector.currencies is not None else None,
        cost=CostOut(rate=str(connector.cost.rate), fixed=connector.cost.fixed,
                     returned_on_refund=connector.cost.returned_on_refund),
        supports_manual_capture=bool(getattr(connector, "supports_manual_capture", False)),
        breaker=BreakerOut(**router_.breaker(name, livemode).snapshot()),
        outcomes=health.outcomes,
        success_rate=round(health.success_rate, 4) if health.success_rate is not None else None,
        mean_latency_ms=round(health.mean_latency_ms, 1) if health.mean_latency_ms is not None else None,
    )


@router.get("/channels", response_model=ChannelsOut, dependencies=_READ)
def list_channels(request: Request) -> ChannelsOut:
    """Every registered channel with its methods, currencies, cost and health as THIS server
    process sees it (breakers and rates are learned per process)."""
    return ChannelsOut(data=[_channel_out(request, name) for name in _channels(request).names()])


@router.get("/channels/{channel}", response_model=ChannelOut, responses=_ERRORS, dependencies=_READ)
def get_channel(channel: str, request: Request) -> ChannelOut:
    if channel not in _channels(request):
        raise UnknownChannel(f"no channel named {channel!r}")
    return _channel_out(request, channel)
