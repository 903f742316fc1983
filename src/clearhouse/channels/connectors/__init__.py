"""The built-in channels: importing this package registers each with ``protocol.register``."""

from clearhouse.channels.connectors import sandbox_bank, sandbox_card, sandbox_qr  # noqa: F401
