"""Tables of the channels domain: routing rules.

A rule is data, not code: operators and merchants change routing without a deploy. The
conditions are all optional (a rule with none matches every payment of its owner); the
candidate channels are an ordered JSON list of connector names, checked against the
registry when the rule is written and again when it is used, since a connector may be
removed from a later release.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text, true
from sqlalchemy.orm import Mapped, mapped_column

from clearhouse.channels.protocol import METHODS
from clearhouse.kit.models import Base, sql_list
from clearhouse.kit.types import UTCDateTime

STRATEGIES = ("score", "ordered")
"""How a rule's candidates are ranked: by score (the default) or in the rule's own order."""


class RoutingRule(Base):
    __tablename__ = "routing_rules"
    __table_args__ = (
        CheckConstraint(f"method IS NULL OR method IN ({sql_list(METHODS)})", name="method"),
        CheckConstraint(f"strategy IN ({sql_list(STRATEGIES)})", name="strategy"),
        CheckConstraint("min_amount IS NULL OR min_amount >= 0", name="min_amount"),
        CheckConstraint("min_amount IS NULL OR max_amount IS NULL OR min_amount <= max_amount", name="amount_range"),
        # Selection reads the enabled rules of one merchant plus the platform's, in priority order.
        Index("ix_routing_rules_owner", "merchant_id", "enabled", "priority"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    merchant_id: Mapped[str | None] = mapped_column(String(40), ForeignKey("merchants.id"))
    """None: a platform-wide rule, tried after every rule of the merchant."""
    livemode: Mapped[bool] = mapped_column(Boolean, server_default=true())
    """False: made with a test key, seen only by test keys (identity.md, "Test and live")."""
    priority: Mapped[int] = mapped_column(Integer)
    """Lower is tried first (1 before 10); equal priorities go in creation order."""
    method: Mapped[str | None] = mapped_column(String(16))
    currency: Mapped[str | None] = mapped_column(String(3))
    min_amount: Mapped[int | None] = mapped_column(BigInteger)
    """Minor units, inclusive."""
    max_amount: Mapped[int | None] = mapped_column(BigInteger)
    """Minor units, inclusive."""
    country: Mapped[str | None] = mapped_column(String(2))
    """The customer's country, ISO 3166-1 alpha-2."""
    card_bin_prefix: Mapped[str | None] = mapped_column(String(8))
    """1 to 8 leading digits of the card number."""
    channels_json: Mapped[str] = mapped_column(Text)
    """The candidate channels, a JSON list of connector names in the rule's order."""
    strategy: Mapped[str] = mapped_column(String(16))
    enabled: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(String(64))
    """The API key or person that wrote the rule (the audit trail has every change)."""
