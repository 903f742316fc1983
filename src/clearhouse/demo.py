"""Demo data: the platform's chart of accounts in CNY and a day of card payments.

Follows docs/accounting.md recipe 1 (payment succeeds) and 4 (the channel pays us).
Every id is fixed, so loading twice changes nothing.
"""

from __future__ import annotations

import json
import os
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session

from clearhouse.kit.db import transact
from clearhouse.ledger import service as ledger
from clearhouse.ledger.service import CREDIT, DEBIT, EntryRequest, PostingRequest

# The ledger tour's own accounts (README, "A tour of the API"): made by hand through the ledger, as a client
# of the ledger API would, with codes of their own ("tour:"). They used the chart's codes, so the demo merchant
# had two merchant_pending:mch_demo accounts: these and the one its payments post to (ledger/chart.py).
ACCOUNTS = [
    ("acct_demo_channel_clearing_card", "asset", "tour:channel_clearing:card", {}),
    ("acct_demo_bank_main", "asset", "tour:bank:main", {}),
    ("acct_demo_merchant_pending_m1", "liability", "tour:merchant_pending:mch_demo",
     {"debits_must_not_exceed_credits": True}),
    ("acct_demo_merchant_available_m1", "liability", "tour:merchant_available:mch_demo", {}),
    ("acct_demo_fee_revenue", "revenue", "tour:fee_revenue", {}),
    ("acct_demo_channel_cost_card", "expense", "tour:channel_cost:card", {}),
    ("acct_demo_customer_wallet_c1", "liability", "tour:customer_wallet:cus_demo",
     {"debits_must_not_exceed_credits": True}),
]


def _payment(n: int, amount: int) -> EntryRequest:
    """A card payment: merchant fee 0.6%, channel cost 0.38% (accounting.md recipe 1)."""
    fee = (amount * 6 + 500) // 1000
    cost = (amount * 38 + 5000) // 10000
    return EntryRequest(
        id=f"tr_demo_payment_{n:03d}",
        code="payment",
        reference=f"pay_demo_{n:03d}",
        postings=[
            PostingRequest("acct_demo_channel_clearing_card", DEBIT, amount - cost, "CNY"),
            PostingRequest("acct_demo_channel_cost_card", DEBIT, cost, "CNY"),
            PostingRequest("acct_demo_merchant_pending_m1", CREDIT, amount - fee, "CNY"),
            PostingRequest("acct_demo_fee_revenue", CREDIT, fee, "CNY"),
        ],
    )


DEMO_MERCHANT = "mch_demo"


def load(session: Session) -> int:
    """Create the demo merchant, accounts and entries; returns how many entries were new."""
    from clearhouse.audit.service import Actor
    from clearhouse.identity import service as identity
    from clearhouse.kit.errors import NotFound

    try:
        identity.get_merchant(session, None, DEMO_MERCHANT)
    except NotFound:
        identity.create_merchant(session, Actor(type="system", id="demo"), merchant_id=DEMO_MERCHANT,
                                 name="Demo Shop", country="CN", default_currency="CNY", timezone="Asia/Shanghai")
    for account_id, account_type, code, flags in ACCOUNTS:
        ledger.create_account(session, id=account_id, type=account_type, currency="CNY", code=code,
                              owner_id="mch_demo" if "merchant" in code else None, **flags)
    amounts = [10000, 2599, 49900, 1200, 88800, 3150, 19999, 500, 7300, 64000]
    requests = [_payment(n, amount) for n, amount in enumerate(amounts, start=1)]
    requests.append(EntryRequest.transfer(
        "acct_demo_bank_main", "acct_demo_channel_clearing_card", 99620, "CNY",
        id="tr_demo_channel_payout_001", code="channel_settlement", reference="stmt_demo_card_001",
    ))
    requests.append(EntryRequest.transfer(
        "acct_demo_merchant_pending_m1", "acct_demo_merchant_available_m1", 5000, "CNY",
        id="tr_demo_hold_001", code="payout_hold", pending=True, timeout_seconds=3600,
    ))
    outcomes = ledger.create_transfers(session, requests)
    return sum(1 for o in outcomes if o.status == "created")


def credentials_path(settings: Any) -> Path:
    database = settings.sqlite_path()
    return (database.parent if database is not None else Path("var")) / "demo-credentials.json"


def write_credentials(engine: Engine, settings: Any) -> tuple[Path, bool] | None:
    """The first time: a platform key (every scope), a test key for the demo merchant, and an
    admin and a merchant admin who can sign in (the admin sets up TOTP at first sign-in),
    written to ``demo-credentials.json`` (mode 0600) beside the database.

    None when the file holds this database's demo keys. A file whose keys this database does
    not hold (left by an earlier database: every request signed with it would be refused 401)
    is replaced: returns the path and True; the first time, the path and False."""
    import secrets

    from clearhouse.audit.service import Actor
    from clearhouse.identity import service as identity
    from clearhouse.identity.people import service as people
    from clearhouse.kit.crypto import FieldCipher, load_master_keys

    path = credentials_path(settings)
    cipher = FieldCipher.open(engine, load_master_keys(settings))
    stale = path.exists()
    if stale and _holds_keys_of(engine, cipher, path):
        return None
    actor = Actor(type="system", id="demo")

    def work(session: Session) -> dict[str, Any]:
        platform, platform_secret = identity.create_api_key(
            session, cipher, actor, merchant_id=None, mode="platform", name="demo", created_by="demo")
        merchant, merchant_secret = identity.create_api_key(
            session, cipher, actor, merchant_id=DEMO_MERCHANT, mode="test", name="demo", created_by="demo")
        users = {}
        for role, email, merchant_id in (("admin", "admin@demo.clearhouse.dev", None),
                                         ("merchant_admin", "owner@demo.clearhouse.dev", DEMO_MERCHANT)):
            password: str | None = f"Demo-{secrets.token_urlsafe(12)}"
            try:
                people.create_user(session, actor, email=email, role=role, merchant_id=merchant_id, password=password)
            except people.EmailTaken:  # made with credentials since lost: its password is not known here
                password = None
            users[role] = {"email": email, "password": password}
        return {
            "platform": {"api_key_id": platform.id, "api_secret": platform_secret},
            "merchant": {"merchant_id": DEMO_MERCHANT, "api_key_id": merchant.id, "api_secret": merchant_secret},
            "users": users,
        }

    credentials = transact(engine, work)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside the file, then renamed over it: never a moment with a half-written file,
    # and the secrets are never readable by others (0600 from the start).
    written = path.with_name(f".{path.name}.{os.getpid()}")
    descriptor = os.open(written, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump(credentials, handle, indent=2)
    os.replace(written, path)
    return path, stale


def _holds_keys_of(engine: Engine, cipher: Any, path: Path) -> bool:
    """Whether both API keys in the credentials file at ``path`` are keys of this database, with
    the secrets it stores for them."""
    from clearhouse.identity import service as identity

    try:
        credentials = json.loads(path.read_text())
        keys = [(credentials[who]["api_key_id"], credentials[who]["api_secret"]) for who in ("platform", "merchant")]
    except (OSError, ValueError, KeyError, TypeError):
        return False

    def check(session: Session) -> bool:
        for key_id, secret in keys:
            key = identity.find_key(session, key_id) if isinstance(key_id, str) else None
            if key is None or identity.key_secret(cipher, key) != secret:
                return False
        return True

    return transact(engine, check)


def load_payments(runtime: Any) -> int:
    """Real payments through the sandbox channels, the first time: card sales, a partial
    refund, a held authorization, a decline, an Alipay QR code waiting for the customer, and
    a wallet topped up and spent. Returns how many payments were made (0 when they exist)."""
    from sqlalchemy import select

    from clearhouse.audit.service import Actor
    from clearhouse.channels.connectors.sandbox_card import CARD_DECLINED, sandbox_card
    from clearhouse.identity.permissions import MERCHANT_KEY_SCOPES, Principal
    from clearhouse.payments import service as payments
    from clearhouse.payments import wallets
    from clearhouse.payments.models import Payment

    table = Payment.__table__
    if transact(runtime.engine, lambda s: s.execute(
            select(table.c.id).where(table.c.merchant_id == DEMO_MERCHANT).limit(1)).first()) is not None:
        return 0
    principal = Principal(kind="api_key", id="demo", role="merchant_key", merchant_id=DEMO_MERCHANT,
                          permissions=MERCHANT_KEY_SCOPES, mode="test")  # as made with the demo's test key
    actor = Actor(type="system", id="demo")

    def pay(amount: int, method: str = "card", **extra: Any) -> dict[str, Any]:
        request = payments.NewPayment(amount=amount, currency="CNY", method=method,
                                      card=extra.pop("card", sandbox_card()) if method == "card" else None, **extra)
        return payments.create_payment(runtime, principal, actor, request)

    made = [pay(amount, merchant_order_id=f"demo-{n}") for n, amount in enumerate((12900, 4550, 99900), 1)]
    payments.refund(runtime, principal, made[0]["id"], 2900, "demo: one item returned")
    made.append(pay(25000, capture_method="manual", description="demo: held until shipped"))
    made.append(pay(3000, card=sandbox_card(CARD_DECLINED), description="demo: declined"))
    made.append(pay(6600, "alipay", description="demo: waiting for the customer to scan"))
    wallet, _created = transact(runtime.engine, lambda s: wallets.open_wallet(
        s, principal, customer_id="cus_demo", currency="CNY", merchant_id=None))
    made.append(pay(20000, purpose="wallet_top_up", wallet_id=wallet.id, customer={"id": "cus_demo"}))
    made.append(pay(7500, "wallet", customer={"id": "cus_demo"}, description="demo: paid from the wallet"))
    return len(made)


def load_sales(runtime: Any) -> tuple[int, dict[str, Any] | None]:
    """The demo payments (``load_payments``) and their day's card statement reconciled
    (``load_reconciliation``), the first time: (payments made, the run), or (0, None). The day
    is taken before the payments, so a first start just before midnight UTC reconciles the day
    they were made on, not the empty one after it."""
    from clearhouse.kit import clock

    day = clock.now().date()
    made = load_payments(runtime)
    return made, (load_reconciliation(runtime, day) if made else None)


def load_reconciliation(runtime: Any, day: date) -> dict[str, Any]:
    """``day``'s card statement, as the sandbox card channel writes it, reconciled against the
    demo's payments: a run and its clearing figures to look at."""
    import tempfile

    from clearhouse.reconciliation.service import reconcile_file

    statement = runtime.channels["sandbox_card"].statement(day)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / statement.filename
        path.write_bytes(statement.content)
        return reconcile_file(runtime.engine, channel="sandbox_card", path=path, fmt="csv",
                              statement_date=statement.day, mapping=statement.layout, actor="demo")

