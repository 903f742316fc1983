"""Two-phase (pending) transfers: reserve, post in full or in part, void, expire.

A pending transfer moves only the pending balances: the debited account's available
balance drops at once, the credited account sees nothing available until it is posted.
Posting or voiding writes a second entry that releases the reservation.
"""

from __future__ import annotations

from datetime import UTC, datetime

from clearhouse import worker
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.ledger import service
from clearhouse.ledger.service import EntryRequest, PostingRequest
from tests.ledger.support import (
    assert_problem,
    assert_refused_without_trace,
    assert_verified,
    balance,
    balances,
    open_account,
    race_behind_an_open_write,
    transfer,
)

T0 = datetime(2031, 5, 4, 10, 0, 0, tzinfo=UTC)


def post(client, transfer_id, **body):
    return client.post(f"/v1/ledger/transfers/{transfer_id}/post", json=body or None)


def void(client, transfer_id):
    return client.post(f"/v1/ledger/transfers/{transfer_id}/void")


def hold(client, debit, credit, amount, **fields):
    response = transfer(client, debit, credit, amount, pending=True, **fields)
    assert response.status_code == 201, response.text
    return response.json()


def open_wallet(client, amount=10000):
    """A customer wallet (never below zero) holding ``amount``, a merchant, and the bank."""
    bank = open_account(client, "asset", code="bank:B")
    wallet = open_account(
        client,
        "liability",
        code="customer_wallet:C",
        flags={"debits_must_not_exceed_credits": True},
    )
    merchant = open_account(client, "liability", code="merchant_pending:M")
    assert transfer(client, bank, wallet, amount).status_code == 201
    return bank, wallet, merchant


class TestReserve:
    def test_pending_transfer_reduces_available_and_leaves_posted_alone(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        assert (held["status"], held["pending"], held["amount"]) == ("pending", True, 3000)
        assert {p["kind"] for p in held["postings"]} == {"pending"}
        assert balance(client, wallet) == {
            "debits_posted": 0,
            "credits_posted": 10000,
            "debits_pending": 3000,
            "credits_pending": 0,
            "posted": 10000,
            "available": 7000,
        }
        # the incoming side is not available until it is posted
        assert balance(client, merchant) == {
            "debits_posted": 0,
            "credits_posted": 0,
            "debits_pending": 0,
            "credits_pending": 3000,
            "posted": 0,
            "available": 0,
        }
        assert_verified(client)

    def test_reservations_cannot_exceed_what_is_available(self, client):
        _bank, wallet, merchant = open_wallet(client)
        hold(client, wallet, merchant, 7000)
        before = balances(client, wallet, merchant)
        assert_refused_without_trace(
            client,
            transfer(client, wallet, merchant, 3001, pending=True),
            409,
            "insufficient_funds",
            before,
        )
        assert_refused_without_trace(
            client, transfer(client, wallet, merchant, 3001), 409, "insufficient_funds", before
        )
        hold(client, wallet, merchant, 3000)
        assert balance(client, wallet)["available"] == 0


class TestPost:
    def test_posting_in_full_moves_the_reserved_amount(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        response = post(client, held["id"])
        assert response.status_code == 200
        posted = response.json()
        assert (posted["id"], posted["status"]) == (held["id"], "posted")
        assert posted["resolved_by"]
        assert balance(client, wallet) == {
            "debits_posted": 3000,
            "credits_posted": 10000,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 7000,
            "available": 7000,
        }
        assert balance(client, merchant) == {
            "debits_posted": 0,
            "credits_posted": 3000,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 3000,
            "available": 3000,
        }
        resolution = client.get(f"/v1/ledger/transfers/{posted['resolved_by']}").json()
        assert (resolution["status"], resolution["pending_id"], resolution["resolution"]) == (
            "posted",
            held["id"],
            "post",
        )
        assert resolution["amount"] == 3000
        assert_verified(client)

    def test_posting_part_releases_the_remainder(self, client):
        """Hold CNY 30.00, capture CNY 12.00: the wallet pays 12.00 and gets 18.00 back."""
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        response = post(client, held["id"], amount=1200)
        assert response.status_code == 200
        assert response.json()["status"] == "posted"
        assert balance(client, wallet) == {
            "debits_posted": 1200,
            "credits_posted": 10000,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 8800,
            "available": 8800,
        }
        assert balance(client, merchant) == {
            "debits_posted": 0,
            "credits_posted": 1200,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 1200,
            "available": 1200,
        }
        resolution = client.get(f"/v1/ledger/transfers/{response.json()['resolved_by']}").json()
        assert resolution["amount"] == 1200
        # naming exactly the pending amount is a full post
        exact = hold(client, wallet, merchant, 800)
        assert post(client, exact["id"], amount=800).status_code == 200
        assert balance(client, wallet)["posted"] == 8800 - 800
        assert balance(client, merchant)["posted"] == 1200 + 800
        assert_verified(client)

    def test_post_with_an_id_replays_and_refuses_other_fields(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        first = post(client, held["id"], id="capture-1", amount=1200)
        assert first.status_code == 200
        after = balances(client, wallet, merchant)
        again = post(client, held["id"], id="capture-1", amount=1200)
        assert again.status_code == 200
        assert again.json() == first.json()
        assert balances(client, wallet, merchant) == after
        refused = post(client, held["id"], id="capture-1", amount=1300)
        assert_refused_without_trace(
            client, refused, 409, "transfer_exists_with_different_fields", after
        )

    def test_post_amount_larger_than_pending_is_422(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        before = balances(client, wallet, merchant)
        body = assert_refused_without_trace(
            client, post(client, held["id"], amount=3001), 422, "amount_exceeds_pending", before
        )
        assert "3000" in body["detail"]
        assert (
            post(client, held["id"], amount=3000).status_code == 200
        )  # still pending, still postable

    def test_post_amount_that_is_not_a_positive_int_is_422(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        before = balances(client, wallet, merchant)
        for amount in (0, -1, 1.5, 1000.0, "1000", True):
            response = post(client, held["id"], amount=amount)
            body = assert_refused_without_trace(client, response, 422, "validation_error", before)
            assert body["errors"][0]["loc"] == ["body", "amount"], amount


class TestVoid:
    def test_void_releases_the_whole_reservation(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        before = balances(client, wallet, merchant)
        partial = client.post(f"/v1/ledger/transfers/{held['id']}/void", json={"amount": 1000})
        assert_refused_without_trace(client, partial, 422, "validation_error", before)
        response = void(client, held["id"])
        assert response.status_code == 200
        assert response.json()["status"] == "voided"
        assert balance(client, wallet) == {
            "debits_posted": 0,
            "credits_posted": 10000,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 10000,
            "available": 10000,
        }
        assert balance(client, merchant) == {
            "debits_posted": 0,
            "credits_posted": 0,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 0,
            "available": 0,
        }
        resolution = client.get(f"/v1/ledger/transfers/{response.json()['resolved_by']}").json()
        assert (resolution["status"], resolution["resolution"]) == ("voided", "void")
        assert_verified(client)


class TestResolvedOnce:
    def test_a_posted_transfer_cannot_be_posted_again(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        post(client, held["id"])
        before = balances(client, wallet, merchant)
        for again in (post(client, held["id"]), post(client, held["id"], amount=1)):
            assert_refused_without_trace(
                client, again, 409, "pending_transfer_already_posted", before
            )

    def test_a_voided_transfer_cannot_be_posted(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        void(client, held["id"])
        before = balances(client, wallet, merchant)
        assert_refused_without_trace(
            client, post(client, held["id"]), 409, "pending_transfer_already_voided", before
        )
        assert_refused_without_trace(
            client, void(client, held["id"]), 409, "pending_transfer_already_voided", before
        )

    def test_a_posted_transfer_cannot_be_voided(self, client):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        post(client, held["id"], amount=1000)
        before = balances(client, wallet, merchant)
        assert_refused_without_trace(
            client, void(client, held["id"]), 409, "pending_transfer_already_posted", before
        )
        assert before[wallet]["posted"] == 9000

    def test_only_pending_transfers_can_be_posted_or_voided(self, client):
        _bank, wallet, merchant = open_wallet(client)
        plain = transfer(client, wallet, merchant, 100).json()
        before = balances(client, wallet, merchant)
        assert_refused_without_trace(
            client, post(client, plain["id"]), 409, "transfer_not_pending", before
        )
        assert_refused_without_trace(
            client, void(client, plain["id"]), 409, "transfer_not_pending", before
        )
        assert_problem(post(client, "tr_nope"), 404, "pending_transfer_not_found")
        assert_problem(void(client, "tr_nope"), 404, "pending_transfer_not_found")

    def test_a_post_that_queued_behind_another_post_is_409_not_500(self, http, engine, backend):
        _bank, wallet, merchant = open_wallet(http)
        held = hold(http, wallet, merchant, 3000)
        second = race_behind_an_open_write(
            engine,
            backend,
            lambda session: service.resolve_pending(session, held["id"], "post"),
            lambda: post(http, held["id"]),
        )
        assert_problem(second, 409, "pending_transfer_already_posted")
        assert balance(http, merchant)["posted"] == 3000
        assert balance(http, wallet)["posted"] == 7000
        assert_verified(http)


class TestTimeout:
    def test_timeout_sets_the_expiry_and_a_post_before_it_succeeds(self, client):
        with clock.frozen(T0) as frozen:
            _bank, wallet, merchant = open_wallet(client)
            held = hold(client, wallet, merchant, 3000, timeout_seconds=60)
            assert (held["timeout_seconds"], held["timeout_at"]) == (
                60,
                "2031-05-04T10:01:00.000000Z",
            )
            frozen.tick(seconds=59, microseconds=999999)
            assert post(client, held["id"]).status_code == 200
            assert balance(client, merchant)["posted"] == 3000

    def test_post_at_or_after_the_timeout_is_409_expired(self, client):
        with clock.frozen(T0) as frozen:
            _bank, wallet, merchant = open_wallet(client)
            held = hold(client, wallet, merchant, 3000, timeout_seconds=60)
            frozen.tick(seconds=60)
            before = balances(client, wallet, merchant)
            assert before[wallet]["available"] == 7000  # still reserved until someone voids it
            for late in (post(client, held["id"]), post(client, held["id"], amount=100)):
                assert_refused_without_trace(client, late, 409, "pending_transfer_expired", before)
            frozen.tick(days=3)
            assert_refused_without_trace(
                client, post(client, held["id"]), 409, "pending_transfer_expired", before
            )
            # a void is still allowed: it only gives the money back
            assert void(client, held["id"]).json()["status"] == "voided"
            assert balance(client, wallet)["available"] == 10000

    def test_worker_voids_expired_reservations_and_nothing_else(self, client, engine):
        with clock.frozen(T0) as frozen:
            _bank, wallet, merchant = open_wallet(client)
            expiring = hold(client, wallet, merchant, 3000, timeout_seconds=60)
            later = hold(client, wallet, merchant, 2000, timeout_seconds=3600)
            forever = hold(client, wallet, merchant, 1000)
            frozen.tick(seconds=59)
            assert worker.run_once(engine)["ledger.void_expired"] == 0
            frozen.tick(seconds=1)
            assert worker.run_once(engine)["ledger.void_expired"] == 1
            assert worker.run_once(engine)["ledger.void_expired"] == 0  # voided once only
            statuses = [
                client.get(f"/v1/ledger/transfers/{held['id']}").json()["status"]
                for held in (expiring, later, forever)
            ]
            assert statuses == ["voided", "pending", "pending"]
            assert balance(client, wallet)["available"] == 10000 - 2000 - 1000
            assert balance(client, merchant)["credits_pending"] == 3000
            before = balances(client, wallet, merchant)
            assert_refused_without_trace(
                client, post(client, expiring["id"]), 409, "pending_transfer_already_voided", before
            )

    def test_void_expired_service_voids_in_one_batch(self, client, engine):
        with clock.frozen(T0) as frozen:
            _bank, wallet, merchant = open_wallet(client)
            for _ in range(5):
                hold(client, wallet, merchant, 1000, timeout_seconds=10)
            assert balance(client, wallet)["available"] == 5000
            frozen.tick(seconds=10)
            assert transact(engine, service.void_expired) == 5
            assert balance(client, wallet)["available"] == 10000
            assert balance(client, merchant)["credits_pending"] == 0
            assert_verified(client)

    def test_timeout_must_be_a_positive_int_of_seconds(self, client):
        _bank, wallet, merchant = open_wallet(client)
        before = balances(client, wallet, merchant)
        for timeout in (0, -5, 1.5, "60"):
            response = transfer(
                client, wallet, merchant, 100, pending=True, timeout_seconds=timeout
            )
            assert_refused_without_trace(client, response, 422, "validation_error", before)


class TestMultiLegPending:
    """Recipe 2: a card authorization is the payment entry written as pending; a partial
    capture posts proportional parts, allocated by largest remainder."""

    def authorize_card_payment(self, client):
        """Authorize CNY 100.00, fee 0.6%, channel cost 0.38%."""
        clearing = open_account(client, "asset", code="channel_clearing:card")
        cost = open_account(client, "expense", code="channel_cost:card")
        merchant = open_account(client, "liability", code="merchant_pending:M")
        fee = open_account(client, "revenue", code="fee_revenue")
        response = client.post(
            "/v1/ledger/transfers",
            json={
                "pending": True,
                "postings": [
                    {
                        "account_id": clearing,
                        "direction": "debit",
                        "amount": 9962,
                        "currency": "CNY",
                    },
                    {"account_id": cost, "direction": "debit", "amount": 38, "currency": "CNY"},
                    {
                        "account_id": merchant,
                        "direction": "credit",
                        "amount": 9940,
                        "currency": "CNY",
                    },
                    {"account_id": fee, "direction": "credit", "amount": 60, "currency": "CNY"},
                ],
            },
        )
        assert response.status_code == 201, response.text
        return response.json(), (clearing, cost, merchant, fee)

    def test_capturing_60_of_100_allocates_each_leg_by_largest_remainder(self, client):
        # 60.00 of 100.00 is 60%:
        #   clearing 99.62 x 0.6 = 59.772 -> 59.77 (remainder .2)
        #   cost      0.38 x 0.6 =  0.228 ->  0.22 (remainder .8) -> +0.01 = 0.23
        #   debits: 59.77 + 0.23 = 60.00 (plain rounding gives 59.77 + 0.23 as well)
        #   merchant 99.40 x 0.6 = 59.64, fee 0.60 x 0.6 = 0.36 (exact)
        held, (clearing, cost, merchant, fee) = self.authorize_card_payment(client)
        assert balance(client, clearing)["debits_pending"] == 9962
        response = post(client, held["id"], amount=6000)
        assert response.status_code == 200
        assert [balance(client, a)["posted"] for a in (clearing, cost, merchant, fee)] == [
            5977,
            23,
            5964,
            36,
        ]
        for account in (clearing, cost, merchant, fee):
            assert balance(client, account)["debits_pending"] == 0
            assert balance(client, account)["credits_pending"] == 0
        resolution = client.get(f"/v1/ledger/transfers/{response.json()['resolved_by']}").json()
        posted = [
            (p["direction"], p["amount"]) for p in resolution["postings"] if p["kind"] == "posted"
        ]
        assert posted == [("debit", 5977), ("debit", 23), ("credit", 5964), ("credit", 36)]
        assert_verified(client)

    def test_capturing_33_33_rounds_both_small_legs_up(self, client):
        # 33.33 of 100.00:
        #   clearing 3320.3346 -> 3320, cost 12.6654 -> 13        (3320 + 13 = 3333)
        #   merchant 3313.002  -> 3313, fee  19.998  -> 20        (3313 + 20 = 3333)
        held, accounts = self.authorize_card_payment(client)
        post(client, held["id"], amount=3333)
        assert [balance(client, a)["posted"] for a in accounts] == [3320, 13, 3313, 20]
        assert_verified(client)

    def test_a_tie_in_the_remainders_goes_to_the_earlier_leg(self, client):
        # Three equal debits of 1.00 against one credit of 3.00; capture 1.00:
        # each leg is 0.3333..., floors 0.33 x 3 = 0.99, the missing cent goes to the first.
        a, b, c = (open_account(client, "asset", code=f"clearing:{n}") for n in "abc")
        merchant = open_account(client, "liability", code="merchant_pending:M")
        held = client.post(
            "/v1/ledger/transfers",
            json={
                "pending": True,
                "postings": [
                    {"account_id": a, "direction": "debit", "amount": 100, "currency": "CNY"},
                    {"account_id": b, "direction": "debit", "amount": 100, "currency": "CNY"},
                    {"account_id": c, "direction": "debit", "amount": 100, "currency": "CNY"},
                    {
                        "account_id": merchant,
                        "direction": "credit",
                        "amount": 300,
                        "currency": "CNY",
                    },
                ],
            },
        ).json()
        assert post(client, held["id"], amount=100).status_code == 200
        assert [balance(client, x)["posted"] for x in (a, b, c, merchant)] == [34, 33, 33, 100]
        assert_verified(client)

    def test_partial_post_of_a_two_currency_entry_is_refused_but_a_full_post_works(self, client):
        clearing_usd = open_account(client, "asset", currency="USD", code="channel_clearing:card")
        position_usd = open_account(client, "equity", currency="USD", code="fx_position:USD")
        position_cny = open_account(client, "equity", code="fx_position:CNY")
        merchant = open_account(client, "liability", code="merchant_pending:M")
        held = client.post(
            "/v1/ledger/transfers",
            json={
                "pending": True,
                "postings": [
                    {
                        "account_id": clearing_usd,
                        "direction": "debit",
                        "amount": 1000,
                        "currency": "USD",
                    },
                    {
                        "account_id": position_usd,
                        "direction": "credit",
                        "amount": 1000,
                        "currency": "USD",
                    },
                    {
                        "account_id": position_cny,
                        "direction": "debit",
                        "amount": 7100,
                        "currency": "CNY",
                    },
                    {
                        "account_id": merchant,
                        "direction": "credit",
                        "amount": 7100,
                        "currency": "CNY",
                    },
                ],
            },
        ).json()
        accounts = (clearing_usd, position_usd, position_cny, merchant)
        before = balances(client, *accounts)
        assert_refused_without_trace(
            client,
            post(client, held["id"], amount=500),
            422,
            "partial_post_requires_single_currency",
            before,
        )
        assert post(client, held["id"]).status_code == 200
        assert [balance(client, x)["posted"] for x in accounts] == [1000, 1000, -7100, 7100]


class TestInOneBatch:
    """Through the service: a batch may create a pending entry and resolve it."""

    def test_a_batch_can_reserve_and_post_together(self, client, engine):
        _bank, wallet, merchant = open_wallet(client)
        requests = [
            EntryRequest.transfer(wallet, merchant, 3000, "CNY", id="hold-1", pending=True),
            EntryRequest(id="capture-1", pending_id="hold-1", resolution="post", amount=2000),
        ]
        outcomes = transact(engine, lambda s: service.create_transfers(s, requests))
        assert [(o.id, o.status) for o in outcomes] == [
            ("hold-1", "created"),
            ("capture-1", "created"),
        ]
        assert balance(client, wallet) == {
            "debits_posted": 2000,
            "credits_posted": 10000,
            "debits_pending": 0,
            "credits_pending": 0,
            "posted": 8000,
            "available": 8000,
        }
        assert_verified(client)

    def test_a_linked_batch_that_resolves_twice_writes_nothing(self, client, engine):
        _bank, wallet, merchant = open_wallet(client)
        held = hold(client, wallet, merchant, 3000)
        before = balances(client, wallet, merchant)
        requests = [
            EntryRequest(pending_id=held["id"], resolution="post"),
            EntryRequest(pending_id=held["id"], resolution="void"),
        ]
        outcomes = transact(engine, lambda s: service.create_transfers(s, requests, linked=True))
        assert [(o.status, o.code) for o in outcomes] == [
            ("failed", "linked_event_failed"),
            ("failed", "pending_transfer_already_posted"),
        ]
        assert balances(client, wallet, merchant) == before
        assert client.get(f"/v1/ledger/transfers/{held['id']}").json()["status"] == "pending"

    def test_multi_leg_request_objects_round_trip(self, client, engine):
        _bank, wallet, merchant = open_wallet(client)
        fee = open_account(client, "revenue", code="fee_revenue")
        request = EntryRequest(
            id="pay-1",
            pending=True,
            postings=[
                PostingRequest(wallet, "debit", 5000, "CNY"),
                PostingRequest(merchant, "credit", 4970, "CNY"),
                PostingRequest(fee, "credit", 30, "CNY"),
            ],
        )
        assert transact(engine, lambda s: service.create_transfer(s, request)) == ("pay-1", True)
        assert transact(engine, lambda s: service.resolve_pending(s, "pay-1", "post", amount=2500))[
            1
        ]
        # 25.00 of 50.00: merchant 24.85, fee 0.15
        assert [balance(client, a)["posted"] for a in (wallet, merchant, fee)] == [7500, 2485, 15]
        assert_verified(client)
