"""Payments: payments, their events and attempts, refunds, fee plans, inbound channel notifications, wallets.

Revision ID: 0006_payments
Revises: 0005_vault
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.models import sql_list
from clearhouse.kit.types import UTCDateTime
from clearhouse.payments.models import ATTEMPT_STATUSES, METHODS, STATUSES

revision = "0006_payments"
down_revision = "0005_vault"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "channel_notifications",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("channel", sa.String(length=40), nullable=False),
        sa.Column("notification_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reference", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("payload_json", sa.Text(), nullable=False),
        sa.Column("outcome", sa.String(length=200), nullable=False),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channel_notifications")),
        sa.UniqueConstraint("channel", "notification_id", name="uq_channel_notifications_channel_notification"),
    )
    op.create_index("ix_channel_notifications_reference", "channel_notifications", ["reference"], unique=False)
    op.create_table(
        "fee_rules",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("scope_key", sa.String(length=80), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=True),
        sa.Column("method", sa.String(length=16), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("percent", sa.String(length=24), nullable=False),
        sa.Column("fixed", sa.BigInteger(), nullable=False),
        sa.Column("minimum", sa.BigInteger(), nullable=False),
        sa.Column("refund_fee_policy", sa.String(length=16), nullable=False),
        sa.Column("refund_cost_bearer", sa.String(length=16), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(
            "refund_cost_bearer IN ('platform', 'merchant')", name=op.f("ck_fee_rules_refund_cost_bearer")
        ),
        sa.CheckConstraint(
            "refund_fee_policy IN ('proportional', 'none')", name=op.f("ck_fee_rules_refund_fee_policy")
        ),
        sa.CheckConstraint("fixed >= 0 AND minimum >= 0", name=op.f("ck_fee_rules_non_negative")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_fee_rules_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fee_rules")),
        sa.UniqueConstraint("scope_key", name="uq_fee_rules_scope_key"),
    )
    op.create_index("ix_fee_rules_merchant", "fee_rules", ["merchant_id"], unique=False)
    op.create_table(
        "payments",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("capture_method", sa.String(length=12), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("channel", sa.String(length=40), nullable=True),
        sa.Column("reference", sa.String(length=40), nullable=True),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("merchant_order_id", sa.String(length=128), nullable=True),
        sa.Column("description", sa.String(length=500), nullable=True),
        sa.Column("customer_json", sa.Text(), nullable=False),
        sa.Column("card_id", sa.String(length=40), nullable=True),
        sa.Column("wallet_id", sa.String(length=40), nullable=True),
        sa.Column("return_url", sa.Text(), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("amount_captured", sa.BigInteger(), nullable=False),
        sa.Column("amount_refunded", sa.BigInteger(), nullable=False),
        sa.Column("amount_refund_pending", sa.BigInteger(), nullable=False),
        sa.Column("fee_amount", sa.BigInteger(), nullable=False),
        sa.Column("channel_cost", sa.BigInteger(), nullable=False),
        sa.Column("fees_json", sa.Text(), nullable=False),
        sa.Column("fee_rule_json", sa.Text(), nullable=False),
        sa.Column("next_action_json", sa.Text(), nullable=True),
        sa.Column("ledger_entry_id", sa.String(length=64), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("failure_message", sa.String(length=500), nullable=True),
        sa.Column("authorization_expires_at", UTCDateTime, nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("capture_method IN ('automatic', 'manual')", name=op.f("ck_payments_capture_method")),
        sa.CheckConstraint(f"method IN ({sql_list(METHODS)})", name=op.f("ck_payments_method")),
        sa.CheckConstraint("purpose IN ('merchant_sale', 'wallet_top_up')", name=op.f("ck_payments_purpose")),
        sa.CheckConstraint(
            f"status IN ({sql_list(STATUSES)})",
            name=op.f("ck_payments_status"),
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_payments_amount_positive")),
        sa.CheckConstraint(
            "amount_captured >= 0 AND amount_captured <= amount", name=op.f("ck_payments_captured_within_amount")
        ),
        sa.CheckConstraint(
            "amount_refunded >= 0 AND amount_refunded + amount_refund_pending <= amount_captured",
            name=op.f("ck_payments_refunds_within_captured"),
        ),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_payments_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payments")),
    )
    op.create_index("ix_payments_merchant", "payments", ["merchant_id", "id"], unique=False)
    op.create_index("ix_payments_status", "payments", ["status", "updated_at"], unique=False)
    op.create_table(
        "wallets",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("customer_id", sa.String(length=128), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("account_id", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_wallets_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_wallets")),
        sa.UniqueConstraint("merchant_id", "customer_id", "currency", name="uq_wallets_customer"),
    )
    op.create_table(
        "payment_attempts",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=40), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=False),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("message", sa.String(length=500), nullable=True),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("latency_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime, nullable=True),
        sa.CheckConstraint(
            f"status IN ({sql_list(ATTEMPT_STATUSES)})",
            name=op.f("ck_payment_attempts_status"),
        ),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_payment_attempts_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_attempts")),
        sa.UniqueConstraint("payment_id", "seq", name="uq_payment_attempts_payment_seq"),
    )
    op.create_index("ix_payment_attempts_status", "payment_attempts", ["status", "created_at"], unique=False)
    op.create_table(
        "payment_events",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("type", sa.String(length=40), nullable=False),
        sa.Column("from_status", sa.String(length=20), nullable=True),
        sa.Column("to_status", sa.String(length=20), nullable=True),
        sa.Column("detail_json", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_payment_events_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_events")),
    )
    op.create_index("ix_payment_events_payment", "payment_events", ["payment_id", "id"], unique=False)
    op.create_table(
        "refunds",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("payment_id", sa.String(length=40), nullable=False),
        sa.Column("merchant_id", sa.String(length=40), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("reason", sa.String(length=500), nullable=True),
        sa.Column("channel", sa.String(length=40), nullable=True),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("fee_refunded", sa.BigInteger(), nullable=False),
        sa.Column("channel_cost_charged", sa.BigInteger(), nullable=False),
        sa.Column("ledger_entry_id", sa.String(length=64), nullable=True),
        sa.Column("failure_code", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name=op.f("ck_refunds_status")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_refunds_amount_positive")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_refunds_merchant_id_merchants")),
        sa.ForeignKeyConstraint(["payment_id"], ["payments.id"], name=op.f("fk_refunds_payment_id_payments")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_refunds")),
    )
    op.create_index("ix_refunds_payment", "refunds", ["payment_id"], unique=False)
    op.create_index("ix_refunds_status", "refunds", ["status", "updated_at"], unique=False)


def downgrade() -> None:
    for table in (
        "wallets",
        "refunds",
        "payment_attempts",
        "payment_events",
        "payments",
        "fee_rules",
        "channel_notifications",
    ):
        op.drop_table(table)
