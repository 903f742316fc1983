"""Fee plans: which rule applies to a payment, the fee it gives, and what a refund returns.

A rule is a percentage (Decimal text: ``0.6`` is 0.6 %) plus a fixed amount, never below a
minimum, for a method and currency (NULL: any). The merchant's own rules come before the
platform's; with none, ``DEFAULT_RULE`` applies. The rule used is stored on the payment,
so a later change of plan never rewrites what a payment cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import bindparam, delete, insert, or_, select
from sqlalchemy.orm import Session

from clearhouse.kit import clock
from clearhouse.kit.ids import new_id
from clearhouse.kit.money import rate_of
from clearhouse.payments.errors import InvalidFeePlan
from clearhouse.payments.models import COST_BEARERS, REFUND_FEE_POLICIES, FeeRule

rules = FeeRule.__table__
_HUNDRED = Decimal(100)
MAX_PERCENT_DECIMALS = 6
"""A percentage is stored as text of at most 6 decimals (``0.000001`` %): finer is ``invalid_fee_plan``."""
_RULES_FOR = select(rules).where(  # every payment asks: built once
    or_(rules.c.merchant_id == bindparam("merchant_id"), rules.c.merchant_id.is_(None)),
    or_(rules.c.method == bindparam("method"), rules.c.method.is_(None)),
    or_(rules.c.currency == bindparam("currency"), rules.c.currency.is_(None)),
)


@dataclass(frozen=True)
class Rule:
    percent: str = "0.6"
    fixed: int = 0
    minimum: int = 0
    refund_fee_policy: str = "proportional"
    """``proportional``: a refund returns the same share of the fee; ``none``: the fee is kept."""
    refund_cost_bearer: str = "platform"
    """Who bears what the channel keeps on a refund: the platform, or the merchant."""
    method: str | None = None
    currency: str | None = None

    def fee(self, amount: int) -> int:
        """The fee on ``amount``: percentage plus fixed, rounded half-up, at least the minimum,
        never more than the amount itself."""
        return min(amount, max(self.minimum, rate_of(amount, Decimal(self.percent) / _HUNDRED, self.fixed)))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


DEFAULT_RULE = Rule()
"""The platform's plan when neither the merchant nor the platform has a rule: 0.6 %."""


def _check(rule: dict[str, Any]) -> Rule:
    try:
        percent = Decimal(str(rule.get("percent", "0")))
    except InvalidOperation as error:
        raise InvalidFeePlan("percent must be a decimal number such as 0.6") from error
    if not percent.is_finite() or not Decimal(0) <= percent <= _HUNDRED:
        raise InvalidFeePlan("percent must be between 0 and 100")
    if percent.normalize().as_tuple().exponent < -MAX_PERCENT_DECIMALS:  # type: ignore[operator]
        raise InvalidFeePlan(f"percent has at most {MAX_PERCENT_DECIMALS} decimals, not {rule.get('percent')}")
    for name in ("fixed", "minimum"):
        value = rule.get(name, 0)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
            raise InvalidFeePlan(f"{name} must be a non-negative integer amount in minor units")
    if rule.get("refund_fee_policy", "proportional") not in REFUND_FEE_POLICIES:
        raise InvalidFeePlan(f"refund_fee_policy is one of {', '.join(REFUND_FEE_POLICIES)}")
    if rule.get("refund_cost_bearer", "platform") not in COST_BEARERS:
        raise InvalidFeePlan(f"refund_cost_bearer is one of {', '.join(COST_BEARERS)}")
    return Rule(percent=format(percent.normalize(), "f") if percent else "0", fixed=rule.get("fixed", 0),
                minimum=rule.get("minimum", 0),
                refund_fee_policy=rule.get("refund_fee_policy", "proportional"),
                refund_cost_bearer=rule.get("refund_cost_bearer", "platform"),
                method=rule.get("method"), currency=rule.get("currency"))


def _scope_key(merchant_id: str | None, method: str | None, currency: str | None) -> str:
    return f"{merchant_id or '*'}|{method or '*'}|{currency or '*'}"


def replace_plan(session: Session, merchant_id: str | None, lines: list[dict[str, Any]]) -> list[Rule]:
    """Replace a merchant's (or, with None, the platform's) rules with ``lines``."""
    checked = [_check(line) for line in lines]
    keys = [_scope_key(merchant_id, r.method, r.currency) for r in checked]
    if len(set(keys)) != len(keys):
        raise InvalidFeePlan("two rules for the same method and currency")
    condition = rules.c.merchant_id == merchant_id if merchant_id else rules.c.merchant_id.is_(None)
    session.execute(delete(rules).where(condition))
    now = clock.now()
    for key, rule in zip(keys, checked, strict=True):
        session.execute(insert(rules).values(
            id=new_id("fr"), scope_key=key, merchant_id=merchant_id, method=rule.method, currency=rule.currency,
            percent=rule.percent, fixed=rule.fixed, minimum=rule.minimum, refund_fee_policy=rule.refund_fee_policy,
            refund_cost_bearer=rule.refund_cost_bearer, created_at=now,
        ))
    return checked


def plan_of(session: Session, merchant_id: str | None) -> list[Rule]:
    condition = rules.c.merchant_id == merchant_id if merchant_id else rules.c.merchant_id.is_(None)
    rows = session.execute(select(rules).where(condition).order_by(rules.c.scope_key)).all()
    return [_rule(row) for row in rows]


def _rule(row: Any) -> Rule:
    return Rule(percent=row.percent, fixed=row.fixed, minimum=row.minimum, refund_fee_policy=row.refund_fee_policy,
                refund_cost_bearer=row.refund_cost_bearer, method=row.method, currency=row.currency)


def rule_for(session: Session, merchant_id: str, method: str, currency: str) -> Rule:
    """The most specific rule: the merchant's before the platform's, then an exact method and
    currency before a wildcard."""
    rows = session.connection().execute(
        _RULES_FOR, {"merchant_id": merchant_id, "method": method, "currency": currency}).all()
    if not rows:
        return DEFAULT_RULE
    best = max(rows, key=lambda r: (r.merchant_id is not None, r.method is not None, r.currency is not None))
    return _rule(best)
