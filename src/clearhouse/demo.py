"""Demo data: the platform's chart of accounts in CNY and a day of card payments.

Follows docs/accounting.md recipe 1 (payment succeeds) and 4 (the channel pays us).
Every id is fixed, so loading twice changes nothing.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from clearhouse.ledger import service as ledger
from clearhouse.ledger.service import CREDIT, DEBIT, EntryRequest, PostingRequest

ACCOUNTS = [
    ("acct_demo_channel_clearing_card", "asset", "channel_clearing:card", {}),
    ("acct_demo_bank_main", "asset", "bank:main", {}),
    ("acct_demo_merchant_pending_m1", "liability", "merchant_pending:mch_demo",
     {"debits_must_not_exceed_credits": True}),
    ("acct_demo_merchant_available_m1", "liability", "merchant_available:mch_demo", {}),
    ("acct_demo_fee_revenue", "revenue", "fee_revenue", {}),
    ("acct_demo_channel_cost_card", "expense", "channel_cost:card", {}),
    ("acct_demo_customer_wallet_c1", "liability", "customer_wallet:cus_demo", {"debits_must_not_exceed_credits": True}),
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


def load(session: Session) -> int:
    """Create the demo accounts and entries; returns how many entries were new."""
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
