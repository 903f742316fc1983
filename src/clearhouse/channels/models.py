"""Tables of this domain (filled in by its owner)."""

from clearhouse.kit.models import Base  # noqa: F401
