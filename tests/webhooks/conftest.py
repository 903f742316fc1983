"""Fixtures for the webhook tests: settings that allow loopback receivers (the app of
tests/conftest.py is built from them), and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from clearhouse.kit.settings import Settings
from tests.conftest import TEST_MASTER_KEY
from tests.webhooks.support import Receiver


class LoopbackSettings(Settings):
    """The receivers in these tests listen on 127.0.0.1 over plain http, which production
    refuses; the operator's switch for development is this setting."""

    webhook_allow_private_networks: bool = True


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return LoopbackSettings(database_url=database_url, master_key=TEST_MASTER_KEY, master_key_file=None,
                            sandbox_dir=tmp_path / "sandbox", webhook_timeout_seconds=2.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running
