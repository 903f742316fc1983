"""Alembic environment: the schema is made only by these migrations."""

from alembic import context
from sqlalchemy import pool

import clearhouse.audit.models  # noqa: F401  (each import registers its tables)
import clearhouse.channels.models  # noqa: F401
import clearhouse.identity.models  # noqa: F401
import clearhouse.kit.crypto  # noqa: F401
import clearhouse.kit.idempotency  # noqa: F401
import clearhouse.ledger.models  # noqa: F401
import clearhouse.payments.models  # noqa: F401
import clearhouse.payments.orders.models  # noqa: F401
import clearhouse.reconciliation.models  # noqa: F401
import clearhouse.vault.models  # noqa: F401
import clearhouse.webhooks.models  # noqa: F401
from clearhouse.kit.db import make_engine
from clearhouse.kit.models import Base

target_metadata = Base.metadata


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    engine = make_engine(url, pool_size=1)
    with engine.connect():
        pass  # the dialect learns the server's version (a batch table copy on SQLite reflects with it)
    engine.pool.dispose()
    engine.pool = pool.NullPool(engine.pool._creator)  # type: ignore[attr-defined]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `clearhouse db upgrade`")
run_migrations_online()
