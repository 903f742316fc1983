"""Card-code orders: products, their encrypted codes, orders and their saga steps.

Revision ID: 0009_orders
Revises: 0008_routing
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

from clearhouse.kit.models import sql_list
from clearhouse.kit.types import UTCDateTime
from clearhouse.payments.orders.models import CODE_STATUSES, HELD_BY_ORDER, ORDER_STATUSES, STEP_STATUSES

revision = "0009_orders"
down_revision = "0008_routing"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "products",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("price_amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint("price_amount > 0", name=op.f("ck_products_price_positive")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_products_merchant_id_merchants")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_products")),
    )
    op.create_index("ix_products_merchant", "products", ["merchant_id", "id"])
    op.create_table(
        "orders",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("merchant_id", sa.String(40), nullable=False),
        sa.Column("product_id", sa.String(40), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("payment_method", sa.String(16), nullable=False),
        sa.Column("payment_id", sa.String(40), nullable=False),
        sa.Column("refund_id", sa.String(40), nullable=True),
        sa.Column("customer_json", sa.Text(), nullable=False),
        sa.Column("delivery_token_digest", sa.String(64), nullable=False),
        sa.Column("failure_code", sa.String(64), nullable=True),
        sa.Column("failure_message", sa.String(500), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("delivered_at", UTCDateTime, nullable=True),
        sa.CheckConstraint(f"status IN ({sql_list(ORDER_STATUSES)})", name=op.f("ck_orders_status")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_orders_quantity_positive")),
        sa.CheckConstraint("amount > 0", name=op.f("ck_orders_amount_positive")),
        sa.ForeignKeyConstraint(["merchant_id"], ["merchants.id"], name=op.f("fk_orders_merchant_id_merchants")),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_orders_product_id_products")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
    )
    op.create_index("ix_orders_merchant", "orders", ["merchant_id", "id"])
    op.create_index("ix_orders_status", "orders", ["status", "updated_at"])
    op.create_table(
        "product_codes",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("product_id", sa.String(40), nullable=False),
        sa.Column("batch_id", sa.String(40), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("code_encrypted", sa.Text(), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("order_id", sa.String(40), nullable=True),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"status IN ({sql_list(CODE_STATUSES)})", name=op.f("ck_product_codes_status")),
        sa.CheckConstraint(HELD_BY_ORDER, name=op.f("ck_product_codes_held_by_order")),
        sa.ForeignKeyConstraint(["product_id"], ["products.id"], name=op.f("fk_product_codes_product_id_products")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_product_codes_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_codes")),
        sa.UniqueConstraint("product_id", "fingerprint", name="uq_product_codes_product_fingerprint"),
    )
    op.create_index("ix_product_codes_stock", "product_codes", ["product_id", "status", "id"])
    op.create_index("ix_product_codes_order", "product_codes", ["order_id"])
    op.create_table(
        "order_steps",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("order_id", sa.String(40), nullable=False),
        sa.Column("step", sa.String(24), nullable=False),
        sa.Column("status", sa.String(12), nullable=False),
        sa.Column("detail_json", sa.Text(), nullable=False),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.CheckConstraint(f"status IN ({sql_list(STEP_STATUSES)})", name=op.f("ck_order_steps_status")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_order_steps_order_id_orders")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_steps")),
    )
    op.create_index("ix_order_steps_order", "order_steps", ["order_id", "id"])


def downgrade() -> None:
    op.drop_table("order_steps")
    op.drop_table("product_codes")
    op.drop_table("orders")
    op.drop_table("products")
