"""100 buyers racing over real HTTP for the last 10 codes: exactly 10 deliveries, the other
90 refused (``out_of_stock``) or refunded, no code sold twice, the ledger balanced."""

from __future__ import annotations

import threading
from collections import Counter

import httpx
import pytest

from tests.payments.orders.support import code_rows, make_product, order_body
from tests.payments.support import balances, ledger_verifies

pytestmark = pytest.mark.slow

BUYERS = 100
THREADS = 12
STOCK = 10


class TestRaceForTheLastCodes:
    def test_100_buyers_for_10_codes_get_10_deliveries_and_no_code_twice(self, app, live_server,
                                                                          merchant_client_factory):
        client, merchant_id = merchant_client_factory()
        stocked = [f"LAST-{n:02d}" for n in range(STOCK + 5)]
        product = make_product(client, stocked, amount=990)
        # five are sold first, so the race is for the last ten
        for _ in range(5):
            assert client.post("/v1/orders", json=order_body(product["id"])).json()["status"] == "delivered"

        answers: list[tuple[int, dict]] = []
        escaped: list[BaseException] = []
        lock = threading.Lock()
        start = threading.Barrier(THREADS)

        def buyer(thread: int) -> None:
            try:
                with httpx.Client(base_url=live_server, timeout=60, auth=client.auth) as http:
                    start.wait()
                    for _ in range(thread, BUYERS, THREADS):
                        response = http.post("/v1/orders", json=order_body(product["id"]))
                        with lock:
                            answers.append((response.status_code, response.json()))
            except BaseException as error:  # noqa: BLE001 - reported by the main thread
                escaped.append(error)

        threads = [threading.Thread(target=buyer, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not escaped, escaped
        assert len(answers) == BUYERS

        outcomes = Counter(body.get("status") if status == 201 else body.get("code") for status, body in answers)
        assert outcomes["delivered"] == STOCK, outcomes
        assert set(outcomes) <= {"delivered", "out_of_stock", "refunded"}, outcomes
        assert outcomes["out_of_stock"] + outcomes["refunded"] == BUYERS - STOCK

        sold = [code for status, body in answers if status == 201 for code in body.get("codes") or []]
        assert len(sold) == len(set(sold)) == STOCK
        rows = code_rows(app, product["id"])
        assert Counter(row.status for row in rows) == {"delivered": STOCK + 5}
        assert len({row.order_id for row in rows}) == STOCK + 5  # one order per code, each code once
        assert client.get(f"/v1/products/{product['id']}").json()["stock"] == {
            "available": 0, "reserved": 0, "delivered": STOCK + 5, "defective": 0}
        # 15 sales of 9.90, 0.6 % fee each (0.06, rounded half up): the merchant is owed 15 x 9.84
        assert balances(app, merchant_id)["merchant"] == (STOCK + 5) * (990 - 6)
        ledger_verifies(app)
