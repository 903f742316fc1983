"""The declarative base every domain's tables hang off (one MetaData for Alembic)."""

from sqlalchemy import MetaData
from sqlalchemy.orm import DeclarativeBase

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def sql_list(values: tuple[str, ...]) -> str:
    """``'a', 'b'`` for a CHECK constraint's ``IN (...)`` over fixed words (never user input)."""
    return ", ".join(f"'{v}'" for v in values)
