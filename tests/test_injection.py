"""Injection-shaped strings (SQL, HTML and script, path traversal, 10 KB strings, control
characters, NUL) in every string field of every operation of the served OpenAPI document,
in every string query parameter and every path parameter.

Each answer is below 500; a 4xx is problem+json with a ``code``; a 2xx that shows the field
shows it byte for byte, and so does a later GET of the object it made; afterwards the
ledger and the audit trail still verify, every table still answers, and no ledger account
appeared that the API did not report creating.

Bodies are built from the document (``injection_support.example``), so a new endpoint is
walked the day it is added; ``OVERRIDES`` below says only what a schema cannot know.
``test_every_operation_is_reached`` fails when a new endpoint's generated body does not get
through to its route, so the walk never silently tests nothing but 422s.

One payload of each family (``FAMILIES``) runs always; the rest are marked slow, so the
slow run together with the fast one walks every payload.

Requests that move money (payments, refunds, top-ups, orders) go through the sandbox
channels for real; the ledger accounts money opens are opened before counting. A channel's
notification is a body no schema describes: unsigned, whatever it holds, it must answer
400 ``notification_invalid``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import pytest
from sqlalchemy import func, select

from clearhouse.kit.models import Base
from clearhouse.kit.settings import Settings
from tests.conftest import CARD_EXP_YEAR, TEST_MASTER_KEY
from tests.identity.people_support import create_user, new_password
from tests.injection_support import (
    NEW_KEY,
    PAYLOADS,
    Operation,
    Schemas,
    all_slots,
    at,
    example,
    in_url,
    json_bytes,
    operations,
    path_with,
    schema_slots,
    served_document,
    short,
    shown_literally,
    slot_label,
    unique,
    with_payload,
)

DOCUMENT = served_document()
OPERATIONS = operations(DOCUMENT)
SCHEMAS = Schemas(DOCUMENT)
CARD = {"number": "4242424242424242", "exp_month": 12, "exp_year": CARD_EXP_YEAR, "cvc": "123", "holder_name": "Li Lei"}
"""A card the sandbox approves at once."""
CHANNEL = "sandbox_card"
RECON_HEADER = "our_ref,channel_ref,kind,status,amount,fee,currency,booked_on,value_on,description"
WEBHOOK_URL = "https://shop.example.com/hooks"
DROP = object()
"""In an override: leave this generated field out of the base body."""


@pytest.fixture
def settings(database_url: str, tmp_path) -> Settings:
    """The login rate limit (10 a minute per address, every TestClient being one address) would
    answer the walk's sign-ins with 429 before any payload reached the credential check."""
    return Settings(database_url=database_url, master_key=TEST_MASTER_KEY, master_key_file=None,
                    sandbox_dir=tmp_path / "sandbox", login_rate_limit_per_minute=1_000_000)


# --- the objects the walk needs --------------------------------------------------------------


class World:
    """What valid requests refer to, made through the API on first use."""

    def __init__(self, app, client, merchant_client_factory, user_client_factory):
        self.app = app
        self.platform = client
        self._merchant_client_factory = merchant_client_factory
        self._user_client_factory = user_client_factory

    def _ok(self, response, *statuses: int) -> dict[str, Any]:
        assert response.status_code in (statuses or (200, 201)), response.text
        return response.json()

    # callers
    @cached_property
    def merchant_pair(self) -> tuple[Any, str]:
        return self._merchant_client_factory("Injection Shop")

    @property
    def merchant(self):
        return self.merchant_pair[0]

    @property
    def own_merchant_id(self) -> str:
        return self.merchant_pair[1]

    @cached_property
    def admin(self):
        return self._user_client_factory("admin")

    def operator(self):
        """A new operator signed in (TOTP optional for that role): for routes that change
        or spend the session's own credentials, one per request."""
        return self._user_client_factory("operator")

    def operator_setting_up_totp(self):
        session = self.operator()
        self._ok(session.post("/v1/auth/totp/setup"))
        return session

    @cached_property
    def anonymous(self):
        from fastapi.testclient import TestClient

        return TestClient(self.app, raise_server_exceptions=False)

    def caller(self, kind: str):
        return {
            "platform": lambda: self.platform,
            "merchant": lambda: self.merchant,
            "admin": lambda: self.admin,
            "anonymous": lambda: self.anonymous,
            "operator": self.operator,
            "totp_setup": self.operator_setting_up_totp,
        }[kind]()

    # ledger
    def _account(self, kind: str) -> str:
        return self._ok(self.platform.post("/v1/ledger/accounts", json={
            "id": unique("inj_acct"), "type": kind, "currency": "CNY", "code": f"walk {kind}"}))["id"]

    @cached_property
    def account_a(self) -> str:
        return self._account("asset")

    @cached_property
    def account_b(self) -> str:
        return self._account("liability")

    def transfer_body(self, **extra: Any) -> dict[str, Any]:
        return {"id": unique("inj_tr"), "debit_account_id": self.account_a, "credit_account_id": self.account_b,
                "amount": 100, "currency": "CNY", "code": "walk-code", "reference": "walk-reference",
                "metadata": {"note": "walk"}, **extra}

    @cached_property
    def transfer(self) -> str:
        return self._ok(self.platform.post("/v1/ledger/transfers", json=self.transfer_body()))["id"]

    def pending_transfer(self) -> str:
        return self._ok(self.platform.post("/v1/ledger/transfers", json=self.transfer_body(pending=True)))["id"]

    # merchants, keys, approvals, people
    @cached_property
    def merchant_id(self) -> str:
        return self._ok(self.platform.post("/v1/merchants", json={"name": "Injection Merchant"}))["id"]

    @cached_property
    def merchant_key_id(self) -> str:
        return self._ok(self.platform.post(f"/v1/merchants/{self.merchant_id}/api_keys",
                                           json={"name": "walk"}))["id"]

    def held_approval(self) -> str:
        """A platform key request held for a second person (made by the platform key, so the
        admin may decide it)."""
        return self._ok(self.platform.post("/v1/api_keys", json={"name": "walk", "scopes": ["ledger:read"]}),
                        202)["id"]

    @cached_property
    def user_id(self) -> str:
        return self._ok(self.admin.post("/v1/users", json={
            "email": f"{unique('walk')}@example.com", "role": "auditor", "password": new_password()}))["id"]

    def login_user(self):
        return create_user(self.app.state.engine, "operator")

    # vault
    @cached_property
    def card_id(self) -> str:
        return self._ok(self.merchant.post("/v1/vault/cards", json={
            "number": "4242424242424242", "exp_month": 12, "exp_year": CARD_EXP_YEAR}))["id"]

    @cached_property
    def live_card_id(self) -> str:
        """Vaulted by the platform, as the payments that charge it are made: live (identity.md, "Test and live")."""
        return self._ok(self.platform.post("/v1/vault/cards", json={
            "number": "4242424242424242", "exp_month": 12, "exp_year": CARD_EXP_YEAR,
            "merchant_id": self.own_merchant_id}))["id"]

    @cached_property
    def bank_account_id(self) -> str:
        return self._ok(self.merchant.post("/v1/vault/bank_accounts", json={
            "account_number": "6222020200112233", "holder_name": "Li Lei", "country": "CN"}))["id"]

    # payments, refunds, wallets (made for the merchant of ``merchant``, by the platform key)
    def payment_body(self, **extra: Any) -> dict[str, Any]:
        return {"amount": 1000, "currency": "CNY", "method": "card", "merchant_id": self.own_merchant_id,
                "payment_details": {"card": dict(CARD)}, **extra}

    def new_payment(self, **extra: Any) -> str:
        payment = self._ok(self.platform.post("/v1/payments", json=self.payment_body(**extra)), 201)
        assert payment["status"] in ("succeeded", "requires_capture"), payment
        return payment["id"]

    @cached_property
    def payment_id(self) -> str:
        return self.new_payment()

    def held_payment(self) -> str:
        """An authorization held for capture: what capture and cancel act on, one per request."""
        return self.new_payment(capture_method="manual")

    @cached_property
    def refund_id(self) -> str:
        return self._ok(self.platform.post(f"/v1/payments/{self.payment_id}/refunds", json={"amount": 100}),
                        201)["id"]

    @cached_property
    def wallet_id(self) -> str:
        return self._ok(self.platform.post("/v1/wallets", json={
            "customer_id": "cus_walk", "currency": "CNY", "merchant_id": self.own_merchant_id}), 201)["id"]

    # card-code orders
    @cached_property
    def product_id(self) -> str:
        product = self._ok(self.merchant.post("/v1/products", json={
            "name": "Walk key", "price": {"amount": 500, "currency": "CNY"}}), 201)["id"]
        self._ok(self.merchant.post(f"/v1/products/{product}/codes", json={
            "codes": [unique("walk-code") for _ in range(300)]}), 201)
        return product

    def order_body(self) -> dict[str, Any]:
        return {"product_id": self.product_id, "quantity": 1,
                "customer": {"id": "cus_walk", "email": "buyer@example.com"},
                "payment": {"method": "card", "payment_details": {"card": dict(CARD)}}}

    @cached_property
    def order_id(self) -> str:
        order = self._ok(self.merchant.post("/v1/orders", json=self.order_body()), 201)
        assert order["status"] == "delivered", order
        return order["id"]

    # routing
    def rule_body(self) -> dict[str, Any]:
        return {"merchant_id": self.own_merchant_id, "priority": 1, "method": "card", "currency": "CNY",
                "min_amount": 0, "max_amount": 1_000_000, "country": "CN", "card_bin_prefix": "4242",
                "channels": ["sandbox_card"], "strategy": "ordered", "enabled": True}

    @cached_property
    def rule_id(self) -> str:
        return self._ok(self.platform.post("/v1/routing/rules", json=self.rule_body()), 201)["id"]

    # webhooks
    def new_webhook_endpoint(self) -> str:
        return self._ok(self.platform.post("/v1/webhook_endpoints", json={
            "url": WEBHOOK_URL, "event_types": ["*"], "merchant_id": self.own_merchant_id}), 201)["id"]

    @cached_property
    def webhook_endpoint_id(self) -> str:
        return self.new_webhook_endpoint()

    @cached_property
    def event_id(self) -> str:
        from clearhouse.kit.db import transact
        from clearhouse.webhooks.service import emit

        self.webhook_endpoint_id  # noqa: B018 - so the event has a delivery to show and redo
        return transact(self.app.state.engine, lambda s: emit(
            s, livemode=True, merchant_id=self.own_merchant_id, event_type="payment.succeeded", data={"walk": True}))

    # reconciliation
    def new_case(self) -> str:
        """A fresh case (a statement line we never booked): resolving one spends it."""
        line = f"{unique('pat_walk')},,payment,succeeded,100,0,CNY,2026-11-23,,"
        run = self._ok(self.platform.post("/v1/reconciliations", data={
            "format": "csv", "channel": "walk_channel", "mapping": "clearhouse_v1", "statement_date": "2026-11-23"},
            files={"file": ("walk.csv", f"{RECON_HEADER}\n{line}\n".encode(), "text/csv")}), 201)
        self.reconciliation_ids.append(run["id"])
        return self._ok(self.platform.get(f"/v1/reconciliations/{run['id']}/cases"), 200)["data"][0]["id"]

    @cached_property
    def case_id(self) -> str:
        return self.new_case()

    @cached_property
    def reconciliation_ids(self) -> list[str]:
        return []

    @cached_property
    def reconciliation_id(self) -> str:
        self.case_id  # noqa: B018
        return self.reconciliation_ids[0]

    def ready_for_money(self) -> None:
        """The first payment and refund open the merchant's and the channel's ledger accounts
        (and the first order its own): made before counting, so the walk's count stays exact."""
        self.refund_id  # noqa: B018
        self.order_id  # noqa: B018

    def path_value(self, operation: Operation, name: str) -> str:
        if name == "key_id":
            return self.merchant_key_id if operation.path.startswith("/v1/merchants/") else "key_walk_missing"
        if name == "merchant_id" and operation.permission.startswith("vault"):
            return self.own_merchant_id
        return {
            "account_id": lambda: self.account_a,
            "transfer_id": lambda: self.transfer,
            "merchant_id": lambda: self.merchant_id,
            "approval_id": self.held_approval,
            "user_id": lambda: self.user_id,
            "card_id": lambda: self.card_id,
            "bank_account_id": lambda: self.bank_account_id,
            "payment_id": lambda: self.payment_id,
            "refund_id": lambda: self.refund_id,
            "wallet_id": lambda: self.wallet_id,
            "product_id": lambda: self.product_id,
            "order_id": lambda: self.order_id,
            "rule_id": lambda: self.rule_id,
            "channel": lambda: CHANNEL,
            "endpoint_id": lambda: self.webhook_endpoint_id,
            "event_id": lambda: self.event_id,
            "reconciliation_id": lambda: self.reconciliation_id,
            "case_id": lambda: self.case_id,
        }[name]()


# --- what a schema cannot know ---------------------------------------------------------------


@dataclass
class Override:
    caller: str | None = None
    bodies: list[Callable[[World, Any], dict[str, Any]]] | None = None
    """Whole base bodies, for operations whose document schema cannot be followed."""
    patch: Callable[[World, Any], dict[str, Any]] | None = None
    """Changes to the generated body (DROP leaves a field out)."""
    path: Callable[[World], dict[str, str]] | None = None
    """Fresh path parameters for each request (the request spends the object)."""
    reached: tuple[int, ...] = (200, 201, 202, 204)
    """What a valid request answers."""
    answers: tuple[int, ...] | None = None
    """What every request with a payload in its body must answer (None: anything below 500)."""
    answer_code: str | None = None
    """The problem code every request with a payload in its body must answer with."""


def _batch_created(response_json: Any, slot: tuple) -> list[tuple[str, tuple]]:
    """A batch answers with results, not transfers: look at each transfer it made."""
    if slot[:1] != ("transfers",) or len(slot) < 3:
        return []
    result = response_json["results"][slot[1]]
    return [(f"/v1/ledger/transfers/{result['id']}", slot[2:])] if result["status"] == "created" else []


OVERRIDES: dict[str, Override] = {
    # The document's oneOf names TransferCreate, EntryCreate and TransferBatch, which are not in
    # its components (see TestTheDocument): the three shapes are written out here.
    "POST /v1/ledger/transfers": Override(bodies=[
        lambda w, c: w.transfer_body(),
        lambda w, c: {"id": unique("inj_entry"), "code": "walk-code", "reference": "walk-reference",
                      "metadata": {"note": "walk"}, "postings": [
                          {"account_id": w.account_a, "direction": "debit", "amount": 100, "currency": "CNY"},
                          {"account_id": w.account_b, "direction": "credit", "amount": 100, "currency": "CNY"}]},
        lambda w, c: {"transfers": [w.transfer_body()]},
    ]),
    "POST /v1/ledger/transfers/{transfer_id}/post": Override(
        path=lambda w: {"transfer_id": w.pending_transfer()}, patch=lambda w, c: {"amount": DROP}),
    "POST /v1/ledger/transfers/{transfer_id}/void": Override(path=lambda w: {"transfer_id": w.pending_transfer()}),
    "POST /v1/ledger/accounts": Override(patch=lambda w, c: {"type": "asset", "owner_id": "owner-walk"}),
    "PATCH /v1/merchants/{merchant_id}": Override(patch=lambda w, c: {"status": "active", "kyc_status": DROP}),
    "POST /v1/merchants/{merchant_id}/api_keys": Override(patch=lambda w, c: {"scopes": ["vault:read"]}),
    "POST /v1/merchants/{merchant_id}/api_keys/{key_id}/revoke": Override(
        path=lambda w: {"merchant_id": w.merchant_id, "key_id": w._ok(w.platform.post(
            f"/v1/merchants/{w.merchant_id}/api_keys", json={"name": "walk"}))["id"]}),
    # Only a held live key's secret is collected here; every test key's was shown at once.
    "POST /v1/merchants/{merchant_id}/api_keys/{key_id}/secret": Override(reached=(404, 409)),
    "POST /v1/api_keys/{key_id}/revoke": Override(reached=(404,)),
    "POST /v1/api_keys/{key_id}/secret": Override(reached=(404,)),
    "POST /v1/api_keys": Override(patch=lambda w, c: {"scopes": ["ledger:read"]}),
    "POST /v1/approvals/{approval_id}/approve": Override(path=lambda w: {"approval_id": w.held_approval()}),
    "POST /v1/approvals/{approval_id}/reject": Override(path=lambda w: {"approval_id": w.held_approval()}),
    "POST /v1/auth/login": Override(
        # A new person each time: five wrong passwords lock an account, and every later
        # payload would meet the lock instead of the credential check.
        bodies=[lambda w, c: (lambda user: {"email": user.email, "password": user.password})(w.login_user())]),
    "POST /v1/auth/totp/confirm": Override(caller="totp_setup", reached=(401, 422)),
    "POST /v1/auth/password": Override(
        caller="operator",
        bodies=[lambda w, c: {"current_password": c.user.password, "new_password": new_password()}]),
    "POST /v1/users": Override(patch=lambda w, c: {"role": "auditor", "merchant_id": DROP}),
    "POST /v1/users/{user_id}/role": Override(patch=lambda w, c: {"role": "operator"}),
    "POST /v1/vault/cards": Override(patch=lambda w, c: {"merchant_id": w.own_merchant_id}),
    "POST /v1/vault/bank_accounts": Override(bodies=[
        lambda w, c: {"account_number": "6222020200112233", "bank_code": "ICBC-001", "holder_name": "Li Lei",
                      "country": "CN", "currency": "CNY", "merchant_id": w.own_merchant_id},
        lambda w, c: {"iban": "DE89370400440532013000", "bank_code": "COBADEFF", "holder_name": "Li Lei",
                      "country": "DE", "currency": "EUR", "merchant_id": w.own_merchant_id},
    ]),
}


def _payment_bodies() -> list[Callable[[World, Any], dict[str, Any]]]:
    """A card by number and a vaulted card, with every optional field given."""
    extra = {"capture_method": "automatic", "merchant_order_id": "walk-order", "description": "walk payment",
             "customer": {"id": "cus_walk", "email": "buyer@example.com", "ip": "203.0.113.9", "country": "CN"},
             "return_url": "https://shop.example.com/return", "metadata": {"note": "walk"}}
    return [
        lambda w, c: w.payment_body(**extra),
        lambda w, c: w.payment_body(**extra, payment_details={"card": {"card_id": w.live_card_id, "cvc": "123"}}),
    ]


def _notification(w: World, c: Any) -> dict[str, Any]:
    """Shaped like a channel's notification, but signed by nobody."""
    return {"notification_id": "ntf_walk", "kind": "payment", "reference": "att_walk", "status": "approved",
            "external_id": "ext_walk", "amount": 1000, "currency": "CNY"}


OVERRIDES.update({
    "POST /v1/payments": Override(bodies=_payment_bodies()),
    "POST /v1/payments/{payment_id}/capture": Override(path=lambda w: {"payment_id": w.held_payment()}),
    "POST /v1/payments/{payment_id}/cancel": Override(path=lambda w: {"payment_id": w.held_payment()}),
    "POST /v1/payments/{payment_id}/refunds": Override(path=lambda w: {"payment_id": w.new_payment()}),
    # Public, signed by the channel: an unsigned body, whatever it holds, is refused before use.
    "POST /v1/channels/{channel}/notifications": Override(
        bodies=[_notification], reached=(400,), answers=(400,), answer_code="notification_invalid"),
    "PUT /v1/fee_plans/{merchant_id}": Override(patch=lambda w, c: {"rules": [
        {"method": "card", "currency": "CNY", "percent": "0.6", "fixed": 0, "minimum": 0,
         "refund_fee_policy": "proportional", "refund_cost_bearer": "platform"}]}),
    "POST /v1/wallets": Override(patch=lambda w, c: {"merchant_id": w.own_merchant_id}),
    "POST /v1/wallets/{wallet_id}/top_ups": Override(patch=lambda w, c: {
        "method": "card", "payment_details": {"card": dict(CARD)}, "return_url": "https://shop.example.com/return"}),
    "POST /v1/products": Override(patch=lambda w, c: {"merchant_id": w.own_merchant_id}),
    "POST /v1/products/{product_id}/codes": Override(bodies=[lambda w, c: {"codes": [unique("walk-code")]}]),
    "POST /v1/orders": Override(bodies=[lambda w, c: w.order_body()]),
    # The token is shown once, to the buyer: without it the page is not found.
    "GET /orders/{order_id}/delivery": Override(reached=(404,)),
    "POST /v1/routing/rules": Override(bodies=[lambda w, c: w.rule_body()]),
    "PATCH /v1/routing/rules/{rule_id}": Override(bodies=[lambda w, c: {
        k: v for k, v in w.rule_body().items() if k != "merchant_id"}]),
    "DELETE /v1/routing/rules/{rule_id}": Override(path=lambda w: {"rule_id": w._ok(w.platform.post(
        "/v1/routing/rules", json=w.rule_body()), 201)["id"]}),
    "POST /v1/routing/preview": Override(patch=lambda w, c: {
        "merchant_id": w.own_merchant_id, "method": "card", "currency": "CNY", "country": "CN", "card_bin": "424242"}),
    "POST /v1/webhook_endpoints": Override(patch=lambda w, c: {
        "url": WEBHOOK_URL, "event_types": ["payment.succeeded"], "merchant_id": w.own_merchant_id}),
    "PATCH /v1/webhook_endpoints/{endpoint_id}": Override(patch=lambda w, c: {
        "url": WEBHOOK_URL, "event_types": ["payment.succeeded"]}),
    "DELETE /v1/webhook_endpoints/{endpoint_id}": Override(path=lambda w: {"endpoint_id": w.new_webhook_endpoint()}),
    "POST /v1/events/{event_id}/redeliver": Override(patch=lambda w, c: {"endpoint_id": w.webhook_endpoint_id}),
    "PUT /v1/recon_rules/{channel}": Override(patch=lambda w, c: {"rules": {"date_window_days": 1}, "mapping": DROP}),
    "PATCH /v1/recon_cases/{case_id}": Override(patch=lambda w, c: {"state": "investigating"}),
    "POST /v1/recon_cases/{case_id}/resolve": Override(
        path=lambda w: {"case_id": w.new_case()}, patch=lambda w, c: {"action": "accept", "account": "suspense"}),
    # A statement is multipart (tests/reconciliation/test_api.py walks its fields): as JSON it is refused whole.
    "POST /v1/recon_rules/{channel}/dry_run": Override(reached=(422,), answer_code="validation_error"),
})
MONEY_PATHS = ("/v1/payments", "/v1/refunds", "/v1/wallets", "/v1/products", "/v1/orders", "/orders/")
"""Operations whose requests may move money: the walk opens the ledger accounts money needs first."""
BATCH_BODY_INDEX = 2
"""The third base body of POST /v1/ledger/transfers is a batch (its answer holds results)."""


def caller_kind(operation: Operation) -> str:
    override = OVERRIDES.get(operation.label)
    if override and override.caller:
        return override.caller
    if operation.permission == "public":
        return "anonymous"
    if operation.permission == "session" or operation.permission.startswith(("users:", "approvals:decide")):
        return "admin"
    if operation.permission.startswith("vault:"):
        return "merchant"
    return "platform"


def base_bodies(world: World, operation: Operation, caller) -> list[dict[str, Any]] | None:
    schema = operation.body_schema()
    override = OVERRIDES.get(operation.label, Override())
    if override.bodies:  # also for a body the document cannot describe (a channel's notification)
        return [make(world, caller) for make in override.bodies]
    if schema is None:
        return None
    body = example(SCHEMAS, schema)
    if not isinstance(body, dict):
        return [body]
    for key, value in (override.patch(world, caller) if override.patch else {}).items():
        if value is DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return [body]


def path_values(world: World, operation: Operation) -> dict[str, str]:
    override = OVERRIDES.get(operation.label, Override())
    if override.path:
        return override.path(world)
    return {p["name"]: world.path_value(operation, p["name"]) for p in operation.parameters("path")}


# --- reading the answers ---------------------------------------------------------------------

GET_TEMPLATES = [re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", o.path) + "$")
                 for o in OPERATIONS if o.method == "GET"]


def readable(path: str) -> bool:
    return any(template.match(path) for template in GET_TEMPLATES)


OBJECT_HOMES = {"payment": "/v1/payments", "refund": "/v1/refunds", "wallet": "/v1/wallets",
                "product": "/v1/products", "order": "/v1/orders"}
"""Where an answer's ``object`` is read back."""


def objects_made(operation: Operation, concrete: str, response_json: Any, slot: tuple,
                 body_index: int) -> list[tuple[str, tuple]]:
    """Where to GET what the request made or changed, and where the field sits in it."""
    if operation.label == "POST /v1/ledger/transfers" and body_index == BATCH_BODY_INDEX:
        return _batch_created(response_json, slot)
    if not isinstance(response_json, dict) or "id" not in response_json:
        return []
    object_id = str(response_json["id"])
    home = OBJECT_HOMES.get(response_json.get("object"))
    if home is not None:  # a payment made under a wallet (a top-up) is read where payments are
        return [(f"{home}/{object_id}", slot)]
    # The object itself under the collection, the path just written (a PATCH, or a list the
    # new object joins), or the object an action under it changed (an approval's /reject).
    for candidate in (f"{concrete}/{object_id}", concrete, concrete.rsplit("/", 1)[0]):
        if readable(candidate):
            return [(candidate, slot)]
    return []


@dataclass
class Walk:
    """Every request of one operation's walk and what was wrong with its answer."""

    operation: Operation
    failures: list[str] = field(default_factory=list)
    requests: int = 0
    accounts_created: int = 0

    def fail(self, where: str, payload_name: str, response, why: str) -> None:
        self.failures.append(f"{self.operation.label} {where} [{payload_name}] -> {response.status_code}: {why}: "
                             f"{short(response.text)}")

    def check(self, where: str, payload_name: str, response, allowed: tuple[int, ...] | None = None) -> bool:
        """The checks every answer gets; True when the answer is a success."""
        self.requests += 1
        status = response.status_code
        if status >= 500:
            self.fail(where, payload_name, response, "server error")
            return False
        if allowed is not None and status not in allowed:
            self.fail(where, payload_name, response, f"not one of {allowed}")
        if status >= 400:
            content_type = response.headers.get("content-type", "")
            if not content_type.startswith("application/problem+json"):
                self.fail(where, payload_name, response, f"not problem+json ({content_type})")
            elif not response.json().get("code"):
                self.fail(where, payload_name, response, "problem without a code")
            elif status == 401 and response.json()["code"] in ("signature_invalid", "authentication_required"):
                self.fail(where, payload_name, response, "the caller's own credentials were refused")
            return False
        if self.operation.label in ("POST /v1/ledger/accounts", "POST /v1/wallets") and status == 201:
            self.accounts_created += 1  # a wallet's balance is a ledger account of its own
        return True


# --- the walk --------------------------------------------------------------------------------


def send(caller, method: str, path: str, body: Any = None, **kwargs: Any):
    if body is not None:
        kwargs["content"] = json_bytes(body)
        kwargs["headers"] = {"Content-Type": "application/json"}
    return caller.request(method, path, **kwargs)


def as_sent(slot: tuple, payload: str) -> tuple[str, str]:
    """What goes into the field, and what the answer should show. An email's local part may
    hold almost anything (docs/people.md), so the payload goes there, and the address is
    shown as the service documents it: trimmed and lower-cased."""
    if slot and slot[-1] == "email":
        address = f"{payload}@example.com"
        return address, address.strip().lower()
    return payload, payload


def walk_body(world: World, walk: Walk, operation: Operation, payloads: list[tuple[str, str]]) -> None:
    """Each payload in each string slot of each base body."""
    kind = caller_kind(operation)
    override = OVERRIDES.get(operation.label, Override())
    answers, answer_code = override.answers, override.answer_code
    fresh_caller = kind in ("operator", "totp_setup")
    template_caller = world.caller(kind)
    templates = base_bodies(world, operation, template_caller)
    if templates is None:
        return
    for body_index, template in enumerate(templates):
        for slot in all_slots(SCHEMAS, operation.body_schema(), template):
            for name, raw in payloads:
                value, payload = as_sent(slot, raw)
                caller = world.caller(kind) if fresh_caller else template_caller
                body_template = base_bodies(world, operation, caller)[body_index]
                body = with_payload(body_template, slot, value)
                if body is None:
                    continue
                concrete = path_with(operation.path, path_values(world, operation))
                response = send(caller, operation.method, concrete, body)
                where = f"body#{body_index} {slot_label(slot)}"
                allowed = answers
                if operation.label == "POST /v1/auth/login" and slot in (("email",), ("password",)):
                    allowed = (401, 422, 429)  # issue #3: a wrong sign-in, a refused field or the rate limit
                success = walk.check(where, name, response, allowed)
                if answer_code is not None and response.status_code < 500 and (
                        not response.content or response.json().get("code") != answer_code):
                    walk.fail(where, name, response, f"not {answer_code}")
                if not success:
                    continue
                if response.status_code == 204 or not response.content:
                    continue
                shown = response.json()
                wrong = shown_literally(shown, slot, payload)
                if wrong is not None:
                    walk.fail(where, name, response, f"shown as {wrong}")
                    continue
                made = objects_made(operation, concrete, shown, slot, body_index)
                if held_for_approval(shown) and slot[:1] != (NEW_KEY,) and at(shown["payload"], slot)[0]:
                    # Held, not done: the approval shows the exact content a checker decides on.
                    slot = ("payload", *slot)
                    wrong = shown_literally(shown, slot, payload)
                    if wrong is not None:
                        walk.fail(where, name, response, f"held as {wrong}")
                        continue
                    made = [(f"/v1/approvals/{shown['id']}", slot)]
                elif not at(shown, slot)[0] and not (
                        operation.label == "POST /v1/ledger/transfers" and body_index == BATCH_BODY_INDEX):
                    continue
                for get_path, object_slot in made:
                    read = send(caller, "GET", get_path)
                    if not walk.check(f"{where} then GET {get_path}", name, read):
                        continue
                    wrong = _shown_in_object(read.json(), object_slot, payload, shown)
                    if wrong is not None:
                        walk.fail(f"{where} then GET {get_path}", name, read, f"shown as {wrong}")


def held_for_approval(shown: Any) -> bool:
    return isinstance(shown, dict) and shown.get("status") == "pending" and isinstance(shown.get("payload"), dict) \
        and "action" in shown


def _shown_in_object(read: Any, slot: tuple, payload: str, created: Any) -> str | None:
    """A GET of one object, or of a list holding it (found by id)."""
    listed = read.get("data") if isinstance(read, dict) else read
    if isinstance(listed, list) and isinstance(created, dict):
        matching = [item for item in listed if isinstance(item, dict) and item.get("id") == created.get("id")]
        if not matching:
            return None if isinstance(read, dict) and read.get("has_more") else "missing from its list"
        read = matching[0]
    return shown_literally(read, slot, payload) if at(read, slot)[0] else "missing from the object"


def unrouted(kind: str, payload: str) -> bool:
    """A path parameter holding ``/`` (once the test client has decoded it, twice) makes a path
    that matches no route, and an anonymous caller of an unknown path is asked to authenticate
    (401) before being told it does not exist: no route was reached, so nothing to check there."""
    from urllib.parse import unquote

    return kind == "anonymous" and "/" in unquote(payload)


def walk_parameters(world: World, walk: Walk, operation: Operation, payloads: list[tuple[str, str]]) -> None:
    kind = caller_kind(operation)
    caller = world.caller(kind)
    templates = base_bodies(world, operation, caller)
    body = templates[0] if templates else None
    in_urls = [(name, payload) for name, payload in payloads if in_url(payload)]
    for parameter in operation.parameters("path"):
        for name, payload in in_urls:
            values = path_values(world, operation)
            values[parameter["name"]] = payload
            response = send(caller, operation.method, path_with(operation.path, values), body)
            if unrouted(kind, payload) and response.status_code == 401 and response.headers.get(
                    "content-type", "").startswith("application/problem+json") and response.json().get(
                    "code") == "authentication_required":
                walk.requests += 1
                continue
            walk.check(f"path {parameter['name']}", name, response)
    for parameter in operation.parameters("query"):
        if not SCHEMAS.is_string(parameter.get("schema")):
            continue
        for name, payload in in_urls:
            concrete = path_with(operation.path, path_values(world, operation))
            response = send(caller, operation.method, concrete, params={parameter["name"]: payload})
            walk.check(f"query {parameter['name']}", name, response)


def table_counts(engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {table.name: connection.execute(select(func.count()).select_from(table)).scalar_one()
                for table in Base.metadata.sorted_tables}


def still_whole(world: World, walk: Walk, accounts_before: int) -> None:
    """The database still works: both chains verify, every table answers, and the ledger holds
    exactly the accounts the API said it made (``table_counts`` reads every table: a dropped
    one would raise)."""
    verify = world.platform.get("/v1/ledger/verify")
    assert verify.status_code == 200 and verify.json()["ok"], verify.text
    audit = world.platform.get("/v1/audit/verify")
    assert audit.status_code == 200 and audit.json()["ok"], audit.text
    counts = table_counts(world.app.state.engine)
    assert counts["ledger_accounts"] == accounts_before + walk.accounts_created, (counts, walk.accounts_created)


def walkable(operation: Operation) -> bool:
    return operation.body_schema() is not None or bool(operation.parameters("path")) or any(
        SCHEMAS.is_string(p.get("schema")) for p in operation.parameters("query"))


WALKED = [o for o in OPERATIONS if walkable(o)]


def run_walk(app, client, merchant_client_factory, user_client_factory, operation: Operation,
             payloads: list[tuple[str, str]]) -> None:
    world = World(app, client, merchant_client_factory, user_client_factory)
    # What the valid requests refer to is made before counting: it makes ledger accounts too.
    if operation.path.startswith(MONEY_PATHS):
        world.ready_for_money()
    base_bodies(world, operation, world.caller(caller_kind(operation)))
    path_values(world, operation)
    accounts_before = table_counts(app.state.engine)["ledger_accounts"]
    walk = Walk(operation)
    walk_body(world, walk, operation, payloads)
    walk_parameters(world, walk, operation, payloads)
    still_whole(world, walk, accounts_before)
    assert walk.requests > 0
    assert not walk.failures, "\n".join(walk.failures)


FAMILIES: dict[str, list[str]] = {
    "sql": ["sql_or", "sql_drop_ledger_accounts", "sql_drop_users"],
    "html": ["html_script", "html_attribute"],
    "traversal": ["path_traversal", "path_traversal_encoded"],
    "nul": ["nul", "percent_nul"],
    "control": ["terminal_escape", "header_injection", "rtl_override"],
    "emoji": ["emoji"],
    "long": ["multibyte_10k", "ascii_10k"],
    "template": ["template", "jndi"],
    "surrogate": ["lone_surrogate"],
}
"""Each payload's family; the first of each runs in every suite run, the rest in the slow one."""
FIRST_OF_FAMILY = [(name, payload) for name, payload in PAYLOADS if any(name == f[0] for f in FAMILIES.values())]
REST_OF_FAMILY = [(name, payload) for name, payload in PAYLOADS if (name, payload) not in FIRST_OF_FAMILY]


class TestInjectionShapedStrings:
    @pytest.mark.slow  # every operation on both databases: about 3 of the default run's 17 minutes (session 13)
    @pytest.mark.parametrize("operation", WALKED, ids=lambda o: o.label)
    def test_one_payload_of_each_family(self, app, client, merchant_client_factory, user_client_factory,
                                        operation):
        run_walk(app, client, merchant_client_factory, user_client_factory, operation, FIRST_OF_FAMILY)

    @pytest.mark.slow
    @pytest.mark.parametrize("operation", WALKED, ids=lambda o: o.label)
    def test_every_other_payload(self, app, client, merchant_client_factory, user_client_factory, operation):
        run_walk(app, client, merchant_client_factory, user_client_factory, operation, REST_OF_FAMILY)

    def test_every_payload_has_a_family(self):
        assert sorted(name for names in FAMILIES.values() for name in names) == sorted(name for name, _ in PAYLOADS)


class TestTheWalkReachesEveryRoute:
    def test_every_operation_with_input_is_walked(self):
        """Only the probes and the session-ending routes take no string input at all."""
        unwalked = {o.label for o in OPERATIONS} - {o.label for o in WALKED}
        assert unwalked <= {"GET /healthz", "GET /readyz", "GET /v1/ledger/verify", "GET /v1/audit/verify",
                            "GET /v1/api_keys", "POST /v1/auth/logout", "POST /v1/auth/logout_all",
                            "GET /v1/auth/me", "POST /v1/auth/totp/setup", "GET /v1/channels",
                            # multipart statement upload: its fields are walked in tests/reconciliation/
                            "POST /v1/reconciliations"}, unwalked

    @pytest.mark.slow  # a base request to every operation, on both databases: minutes; the walk checks itself
    @pytest.mark.parametrize("operation", WALKED, ids=lambda o: o.label)
    def test_every_operation_is_reached(self, app, client, merchant_client_factory, user_client_factory,
                                        operation):
        """The base request of each walk gets through to its route: a payload refused with 422
        then says the field's rule refused it, not that the rest of the body was wrong."""
        world = World(app, client, merchant_client_factory, user_client_factory)
        override = OVERRIDES.get(operation.label, Override())
        caller = world.caller(caller_kind(operation))
        bodies = base_bodies(world, operation, caller) or [None]
        for index in range(len(bodies)):
            if index:
                caller = world.caller(caller_kind(operation)) if caller_kind(operation) in (
                    "operator", "totp_setup") else caller
            body = (base_bodies(world, operation, caller) or [None])[index]
            concrete = path_with(operation.path, path_values(world, operation))
            response = send(caller, operation.method, concrete, body)
            assert response.status_code in override.reached, (index, body, response.status_code, response.text)
            if override.answer_code is not None:
                assert response.json()["code"] == override.answer_code, response.text


@pytest.mark.slow  # every path parameter over a real server
class TestOverRealHttp:
    """The test client decodes a path twice (``%2500`` reaches the app as a NUL), so path
    parameters are walked again through a real server, as a caller's HTTP library sends them;
    this also checks that a signature over an odd path still verifies."""

    def test_every_path_parameter(self, app, live_server, platform_key, user_client_factory):
        import httpx

        from clearhouse.identity.permissions import PLATFORM_KEY_SCOPES
        from tests.conftest import make_merchant

        opened: list[httpx.Client] = []

        def http_client(credentials) -> httpx.Client:
            opened.append(httpx.Client(base_url=live_server, timeout=30, auth=credentials.auth))
            return opened[-1]

        def merchant_factory(name: str):
            credentials = make_merchant(app, name)
            return http_client(credentials), credentials.merchant_id

        world = World(app, http_client(platform_key), merchant_factory, user_client_factory)
        walked = 0
        try:
            for operation in WALKED:
                kind = caller_kind(operation)
                if not operation.parameters("path"):
                    continue
                if kind not in ("platform", "merchant"):
                    if operation.permission not in PLATFORM_KEY_SCOPES:
                        continue
                    kind = "platform"
                walk = Walk(operation)
                caller = world.caller(kind)
                body = (base_bodies(world, operation, caller) or [None])[0]
                for parameter in operation.parameters("path"):
                    for name, payload in [(n, p) for n, p in PAYLOADS if in_url(p)]:
                        values = path_values(world, operation)
                        values[parameter["name"]] = payload
                        response = send(caller, operation.method, path_with(operation.path, values), body)
                        walk.check(f"path {parameter['name']} (real HTTP)", name, response)
                assert not walk.failures, "\n".join(walk.failures)
                walked += 1
        finally:
            for opened_client in opened:
                opened_client.close()
        assert walked >= 10


class TestIdempotencyKeyHeader:
    """The Idempotency-Key header is a string every POST reads and stores."""

    def test_injection_shaped_keys(self, client):
        walk = Walk(Operation("POST", "/v1/ledger/accounts", "ledger:write", {}))
        sent = 0
        for name, payload in PAYLOADS:
            body = {"type": "asset", "currency": "CNY", "code": "walk-code"}
            try:
                first = client.post("/v1/ledger/accounts", json=body, headers={"Idempotency-Key": payload})
            except (UnicodeEncodeError, ValueError):  # no HTTP library sends it: not a header value
                continue
            sent += 1
            if not walk.check("header Idempotency-Key", name, first):
                continue
            again = client.post("/v1/ledger/accounts", json=body, headers={"Idempotency-Key": payload})
            walk.check("header Idempotency-Key, repeated", name, again)
            if again.json() != first.json():
                walk.fail("header Idempotency-Key, repeated", name, again, "not the first answer")
        assert sent >= 10
        assert not walk.failures, "\n".join(walk.failures)


class TestTheDocument:
    def test_every_schema_reference_resolves(self):
        """The walk builds bodies from the document, so a reference leading nowhere is a body
        nobody (no client generator, no fuzzer, not this walk) can build."""
        schemas = Schemas(DOCUMENT)
        for operation in OPERATIONS:
            list(schema_slots(schemas, operation.body_schema()))
            for parameter in operation.spec.get("parameters", []):
                schemas.branches(parameter.get("schema"))
        assert schemas.dangling == set()
