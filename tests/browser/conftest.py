"""A real browser (Debian's Chromium, driven by Playwright) against a real server.

Each test gets the app behind uvicorn on its own loopback port, with
``public_base_url`` set to that port (so QR codes, challenge redirects and the
sandbox's notifications point at it), and the worker running beside it in a thread,
as ``clearhouse serve --demo`` runs it.

``make test`` installs Chromium (``scripts/chromium.sh``) and names it in
``CLEARHOUSE_TEST_CHROMIUM``; when that variable is set, a browser that does not start
is a failure. Run by hand without it, the tests use ``/usr/bin/chromium`` or are skipped.
The browser is started once per module.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from clearhouse.app import create_app
from clearhouse.kit.settings import Settings
from clearhouse.worker import build_runtime, start_in_thread
from tests.conftest import TEST_MASTER_KEY, Credentials, _free_port, make_merchant
from tests.payments.support import ledger_verifies

CHROMIUM_ENV = "CLEARHOUSE_TEST_CHROMIUM"
# What the machine notes say a headless Chromium needs here: no sandbox as root, and no
# background connections to hosts this closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _chromium() -> str:
    named = os.environ.get(CHROMIUM_ENV)
    if named:
        assert Path(named).is_file(), f"{CHROMIUM_ENV}={named} is not a file"
        return named
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.skip(f"no Chromium: `make test` installs it (scripts/chromium.sh), or set {CHROMIUM_ENV}")
    return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Module-scoped, not session-scoped: Playwright's synchronous API keeps an event loop running
    in this thread while it is started, and a later test in the same process that calls
    ``asyncio.run`` would fail ("cannot be called from a running event loop")."""
    from playwright.sync_api import sync_playwright

    executable = _chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(15_000)
    yield opened
    context.close()


@dataclass
class Site:
    """The running server, its app (for what the database holds) and a merchant's signed client."""

    base_url: str
    app: Any
    shop: httpx.Client
    merchant: Credentials

    def wait_for_payment(self, payment_id: str, status: str, timeout: float = 20) -> dict[str, Any]:
        """The payment once it reaches ``status``: the worker delivers the channel's notification
        over HTTP to this server, as in production."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.shop.get(f"/v1/payments/{payment_id}").json()
            if view["status"] == status or time.monotonic() > deadline:
                assert view["status"] == status, view
                return view
            time.sleep(0.1)


@pytest.fixture
def site(database_url: str, engine: Any, bookkeeping_engine: Any, tmp_path: Path) -> Iterator[Site]:
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    settings = Settings(database_url=database_url, master_key=TEST_MASTER_KEY, master_key_file=None,
                        sandbox_dir=tmp_path / "sandbox", public_base_url=base_url,
                        webhook_allow_private_networks=True)
    app = create_app(settings, engine=engine, bookkeeping_engine=bookkeeping_engine)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = threading.Thread(target=server.run, daemon=True)
    serving.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    worker, stop = start_in_thread(engine, 0.1, runtime=build_runtime(settings, engine))
    merchant = make_merchant(app, "Browser Shop")
    with httpx.Client(base_url=base_url, timeout=30, auth=merchant.auth) as shop:
        yield Site(base_url, app, shop, merchant)
    stop.set()
    worker.join(timeout=10)
    server.should_exit = True
    serving.join(timeout=10)
    ledger_verifies(app)
