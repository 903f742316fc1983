"""The payments benchmark: the command's JSON contract and the checks that make a fast wrong answer fail.

Speed is never asserted here (docs/benchmarks.md): only that the benchmark measures what
it says (latency from the schedule, so queueing counts), checks its own answer, and
reports in the agreed shape.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import orjson
import pytest

from clearhouse.bench.payments import OPEN_LOOP_RATE, Load, SignedHttp, check_database, payment_amount
from tests.conftest import BACKENDS, POSTGRES_URL


class TestCommand:
    @pytest.mark.slow  # it starts `clearhouse serve --workers <cores>` once per database: about 25 s each
    def test_quick_json_run_checks_its_answer_and_reports_the_contract_shape(self, tmp_path):
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        env.pop("CLEARHOUSE_BENCH_POSTGRES_URL", None)
        # SQLite always; PostgreSQL when asked (CLEARHOUSE_TEST_BENCH_POSTGRES=1): the run holds
        # both cores for its length, which the rest of the suite pays for. The bench's database
        # check is tested on both databases below either way.
        with_postgresql = "postgresql" in BACKENDS and os.environ.get("CLEARHOUSE_TEST_BENCH_POSTGRES") == "1"
        command = [sys.executable, "-c", "from clearhouse.cli import main; main()", "bench", "payments",
                   "--quick", "--json"]
        if with_postgresql:
            command += ["--postgres", POSTGRES_URL]
        finished = subprocess.run(command, capture_output=True, text=True, env=env, timeout=240)
        data = json.loads(finished.stdout.strip().splitlines()[-1])

        assert data["failures"] == [], finished.stdout[-3000:]
        assert data["ok"] is True
        assert finished.returncode == 0
        assert data["name"] == "payments"
        assert data["sizes"]["open_loop_rate"] == OPEN_LOOP_RATE
        assert data["sizes"]["server_workers"] == os.cpu_count()
        labels = ["sqlite"] + (["postgresql"] if with_postgresql else [])
        figures = {f["figure"]: f for f in data["figures"]}
        expected = {}
        for label in labels:
            expected[f"{label}_payments_per_s"] = (f"{label}_healthz_per_s", "1/s")
            expected[f"{label}_p99_ms_at_500_per_s"] = (f"{label}_healthz_p99_ms_at_500_per_s", "ms")
        assert set(figures) == set(expected)
        for name, (baseline, unit) in expected.items():
            figure = figures[name]
            assert set(figure) == {"figure", "value", "unit", "baseline", "baseline_value", "ratio"}
            assert (figure["baseline"], figure["unit"]) == (baseline, unit)
            assert figure["value"] > 0 and figure["baseline_value"] > 0
        rate = figures["sqlite_payments_per_s"]
        assert rate["ratio"] == pytest.approx(rate["value"] / rate["baseline_value"], abs=0.002)
        p99 = figures["sqlite_p99_ms_at_500_per_s"]
        assert p99["ratio"] == pytest.approx(p99["baseline_value"] / p99["value"], abs=0.002)
        assert "payments sent in all" in data["notes"]["sqlite_client"]


class Answering:
    """Stands in for ``SignedHttp``: ``answer(body, n)`` -> (status, JSON) decides each answer (the
    server's side is what the slow test above and TestSignedHttp exercise; here only the client's
    judgement of answers is under test)."""

    def __init__(self, answer):
        self.answer = answer
        self.requests: list[tuple[str, str, bytes, dict]] = []

    async def request(self, method, path, body=b"", headers=None):
        self.requests.append((method, path, body, headers or {}))
        status, answer = self.answer(orjson.loads(body), len(self.requests) - 1)
        return status, orjson.dumps(answer)


def _payment(body: dict, n: int, **changes) -> tuple[int, dict]:
    answer = {"id": f"pay_{n}", "status": "succeeded", "amount": body["amount"], "currency": body["currency"]}
    return 201, {**answer, **changes}


def _load(answer) -> Load:
    return Load(Answering(answer), lambda _line: None)


class TestAnswerJudgement:
    def test_a_succeeded_payment_is_counted_and_each_request_has_a_fresh_idempotency_key(self):
        load = _load(_payment)
        assert asyncio.run(self._send(load, 3)) == [True, True, True]
        assert load.payment_ids == ["pay_0", "pay_1", "pay_2"]
        requests = load.http.requests
        assert {(method, path) for method, path, _body, _headers in requests} == {("POST", "/v1/payments")}
        assert len({headers["idempotency-key"] for _m, _p, _b, headers in requests}) == 3
        bodies = [orjson.loads(body) for _m, _p, body, _h in requests]
        assert [b["amount"] for b in bodies] == [payment_amount(n) for n in range(3)]
        assert bodies[0]["payment_details"]["card"]["number"] == "4242424242424242"

    @pytest.mark.parametrize("wrong", [
        {"status": "processing"},
        {"status": "failed"},
        {"amount": 1},
        {"currency": "USD"},
    ])
    def test_a_payment_that_did_not_succeed_as_sent_is_a_failure(self, wrong):
        load = _load(lambda body, n: _payment(body, n, **wrong))
        assert asyncio.run(self._send(load, 2)) == [False, False]
        assert load.payment_ids == []
        assert sum(load.failures.values()) == 2
        assert load.examples

    def test_a_problem_answer_is_a_failure_named_by_its_code(self):
        problem = {"type": "about:blank", "status": 409, "code": "idempotency_key_reused"}
        load = _load(lambda _body, _n: (409, problem))
        assert asyncio.run(self._send(load, 1)) == [False]
        assert load.failures == {"payment 409 idempotency_key_reused": 1}

    @staticmethod
    async def _send(load: Load, count: int) -> list[bool]:
        return [await load.payment() for _ in range(count)]


class TestSignedHttp:
    """The bench's own HTTP client against the real server: signed as ``ClearhouseAuth`` signs."""

    def test_signed_requests_are_accepted_and_a_wrong_secret_is_refused(self, live_server, platform_key):
        port = int(live_server.rsplit(":", 1)[1])

        async def scenario() -> list[tuple[int, dict]]:
            http = SignedHttp("127.0.0.1", port, platform_key.key_id, platform_key.secret)
            forged = SignedHttp("127.0.0.1", port, platform_key.key_id, platform_key.secret + "x")
            body = orjson.dumps({"type": "asset", "currency": "CNY", "code": "bench"})
            try:
                answers = [
                    await http.request("GET", "/healthz"),
                    await http.request("POST", "/v1/ledger/accounts", body, {"content-type": "application/json"}),
                    await http.request("POST", "/v1/ledger/accounts", body, {"content-type": "application/json"}),
                    await forged.request("GET", "/v1/ledger/accounts"),
                ]
            finally:
                await http.close()
                await forged.close()
            return [(status, orjson.loads(content)) for status, content in answers]

        healthz, first, second, refused = asyncio.run(scenario())
        assert healthz == (200, {"status": "ok"})
        assert first[0] == second[0] == 201  # the kept-alive connection carries the second request
        assert first[1]["id"] != second[1]["id"] and first[1]["currency"] == "CNY"
        assert refused[0] == 401 and refused[1]["code"]


class TestOpenLoop:
    def test_latency_is_counted_from_the_schedule_so_queueing_counts(self):
        """A server that answers one request at a time in 10 ms cannot keep up with 500/s: by the
        100th request the queue is long, and the latencies must say so (timed from the send, they
        would all be about 10 ms)."""
        load = Load(None, lambda _line: None)
        one_at_a_time = asyncio.Semaphore(1)

        async def slow_send() -> bool:
            async with one_at_a_time:
                await asyncio.sleep(0.010)
            return True

        # No giving up here: on a busy machine a pause of this process (another test's work on
        # the same cores) would otherwise end the loop early, and this test is about the timing.
        result = asyncio.run(load.open_loop(slow_send, 0.2, OPEN_LOOP_RATE, "test", give_up_ms=60_000))
        latencies = result["latencies_ms"]
        assert result["requests"] == len(latencies) == 100
        # The last waits behind 99 others (at least 990 ms of service) and was scheduled 198 ms in.
        assert max(latencies) >= 990 - 198
        assert min(latencies) >= 10
        assert result["stopped_at"] is None

    def test_a_server_that_cannot_keep_up_stops_the_schedule_and_every_sent_request_is_awaited(self):
        load = Load(None, lambda _line: None)
        one_at_a_time = asyncio.Semaphore(1)
        answered = []

        async def slow_send() -> bool:
            async with one_at_a_time:
                await asyncio.sleep(0.010)
            answered.append(1)
            return True

        result = asyncio.run(load.open_loop(slow_send, 1.0, OPEN_LOOP_RATE, "test", give_up_ms=100))
        assert result["scheduled"] == 500
        assert result["stopped_at"] is not None and result["requests"] == result["stopped_at"] < 500
        assert len(answered) == len(result["latencies_ms"]) == result["requests"]
        assert max(result["latencies_ms"]) > 100


class TestDatabaseCheck:
    def test_answered_payments_that_are_not_stored_fail_the_run(self, database_url):
        from clearhouse.bench.payments import prepare

        merchant = prepare(database_url)
        failures = check_database(database_url, merchant.merchant_id, ["pay_a", "pay_a"], 2, "db")
        assert any("0 payments stored, 2 sent" in f for f in failures)
        assert any("answered payments not stored" in f and "pay_a" in f for f in failures)
        assert any("answered twice" in f for f in failures)

    def test_an_empty_run_on_a_fresh_database_checks_clean(self, database_url):
        from clearhouse.bench.payments import prepare

        merchant = prepare(database_url)
        assert check_database(database_url, merchant.merchant_id, [], 0, "db") == []


class TestConnectionFailures:
    def test_a_refused_connection_is_a_failure_that_says_which_connection(self):
        from clearhouse.bench import free_port

        http = SignedHttp("127.0.0.1", free_port(), "ck_test_x", "cks_x")  # nothing listens there
        load = Load(http, lambda _line: None)
        assert asyncio.run(load.healthz()) is False
        assert load.failures == {"healthz ConnectionRefusedError": 1}
        assert "opening a connection" in load.examples[0]

    def test_a_connection_closed_before_the_answer_is_a_failure_on_a_new_connection(self):
        async def scenario() -> Load:
            async def hang_up(reader, writer):
                await reader.readuntil(b"\r\n\r\n")
                writer.close()

            server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]
            load = Load(SignedHttp("127.0.0.1", port, "ck_test_x", "cks_x"), lambda _line: None)
            async with server:
                await load.payment()
            return load

        load = asyncio.run(scenario())
        assert load.failures == {"payment IncompleteReadError": 1}
        assert "on a new connection" in load.examples[0]
        assert load.sent_payments == 1 and load.payment_ids == []
