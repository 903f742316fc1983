"""The vault through HTTP on both databases: tokenising, masking, validation, tenants."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select

from clearhouse.audit.service import SYSTEM
from clearhouse.kit import clock
from clearhouse.kit.db import transact
from clearhouse.vault import service
from clearhouse.vault.models import VaultBankAccount, VaultCard
from tests.vault.support import TEST_PANS

NEXT_YEAR = datetime.now(UTC).year + 1
IBAN = "DE89370400440532013000"


def card_body(number: str = TEST_PANS["visa"], **extra):
    return {"number": number, "exp_month": 12, "exp_year": NEXT_YEAR, **extra}


@pytest.fixture
def merchant(merchant_client_factory):
    """(client signed with a merchant's test key, merchant id)."""
    return merchant_client_factory("Shop A")


class TestTokenizeCard:
    @pytest.mark.parametrize("brand", sorted(TEST_PANS))
    def test_card_becomes_a_masked_token(self, client, merchant, engine: Engine, app, brand: str):
        _, merchant_id = merchant
        pan = TEST_PANS[brand]
        response = client.post("/v1/vault/cards", json=card_body(pan, cvc="737", holder_name="Ann Lee",
                                                                  merchant_id=merchant_id))
        assert response.status_code == 201, response.text
        card = response.json()
        assert card["id"].startswith("card_")
        assert card["merchant_id"] == merchant_id
        assert card["bin"] == pan[:6]
        assert card["last4"] == pan[-4:]
        assert card["brand"] == brand.split("_")[0]
        assert (card["exp_month"], card["exp_year"]) == (12, NEXT_YEAR)
        assert len(card["fingerprint"]) == 64
        assert pan not in response.text
        assert set(card) == {"id", "livemode", "merchant_id", "bin", "last4", "brand", "exp_month", "exp_year",
                             "fingerprint", "created_at"}
        # Stored: ciphertext bound to this card; no readable number, holder name or CVC anywhere in the row.
        with engine.connect() as connection:
            row = connection.execute(select(VaultCard.__table__).where(VaultCard.id == card["id"])).one()
        stored = " ".join(str(value) for value in row)
        for secret in (pan, "Ann Lee"):
            assert secret not in stored
        # A three-digit CVC turns up by chance inside random hex, so look for it as a value.
        assert "737" not in [str(value) for value in row]
        assert not [column for column in row._fields if "cvc" in column or "cvv" in column]
        cipher = app.state.cipher
        assert cipher.decrypt(row.number_ciphertext, f"vault_cards.number:{card['id']}") == pan
        assert cipher.decrypt(row.holder_name_ciphertext, f"vault_cards.holder_name:{card['id']}") == "Ann Lee"

    def test_separators_are_ignored_and_the_fingerprint_matches(self, client, merchant):
        _, merchant_id = merchant
        plain = client.post("/v1/vault/cards", json=card_body(merchant_id=merchant_id)).json()
        spaced = client.post("/v1/vault/cards", json=card_body("4111 1111 1111 1111", merchant_id=merchant_id))
        dashed = client.post("/v1/vault/cards", json=card_body("4111-1111-1111-1111", merchant_id=merchant_id))
        assert spaced.status_code == dashed.status_code == 201
        assert plain["fingerprint"] == spaced.json()["fingerprint"] == dashed.json()["fingerprint"]
        assert plain["id"] != spaced.json()["id"]
        other = client.post("/v1/vault/cards", json=card_body(TEST_PANS["mastercard"], merchant_id=merchant_id))
        assert other.json()["fingerprint"] != plain["fingerprint"]

    def test_get_and_list_show_the_masked_card(self, client, merchant):
        _, merchant_id = merchant
        created = client.post("/v1/vault/cards", json=card_body(merchant_id=merchant_id)).json()
        fetched = client.get(f"/v1/vault/cards/{created['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == created
        listed = client.get("/v1/vault/cards", params={"merchant_id": merchant_id})
        assert listed.json()["data"] == [created]
        assert TEST_PANS["visa"] not in fetched.text + listed.text

    def test_list_pages(self, client, merchant):
        _, merchant_id = merchant
        ids = [client.post("/v1/vault/cards", json=card_body(merchant_id=merchant_id)).json()["id"] for _ in range(3)]
        first = client.get("/v1/vault/cards", params={"merchant_id": merchant_id, "limit": 2}).json()
        assert [c["id"] for c in first["data"]] == ids[:2] and first["has_more"]
        rest = client.get("/v1/vault/cards", params={"merchant_id": merchant_id, "limit": 2,
                                                     "starting_after": first["next_cursor"]}).json()
        assert [c["id"] for c in rest["data"]] == ids[2:] and not rest["has_more"]

    def test_card_valid_through_its_expiry_month(self, client, merchant):
        _, merchant_id = merchant
        with clock.frozen(datetime(2030, 5, 31, 23, 59, tzinfo=UTC)):
            ok = client.post("/v1/vault/cards", json={**card_body(merchant_id=merchant_id), "exp_month": 5,
                                                      "exp_year": 2030})
            expired = client.post("/v1/vault/cards", json={**card_body(merchant_id=merchant_id), "exp_month": 4,
                                                           "exp_year": 2030})
        assert ok.status_code == 201, ok.text
        assert expired.status_code == 422
        assert expired.json()["code"] == "card_expired"


class TestCardValidation:
    @pytest.mark.parametrize(
        ("body", "code"),
        [
            (card_body("4111111111111112"), "invalid_card_number"),  # Luhn fails
            (card_body("4111 1111 1111 111x"), "invalid_card_number"),
            (card_body("4111  1111 1111 1111"), "invalid_card_number"),  # two separators in a row
            (card_body("424242424242"), "invalid_card_number"),  # 12 digits
            (card_body("42424242424242424242"), "invalid_card_number"),  # 20 digits
            (card_body(""), "validation_error"),
            (card_body(exp_year=2001), "card_expired"),
            ({**card_body(), "exp_year": NEXT_YEAR + 60}, "invalid_expiry"),
            ({**card_body(), "exp_month": 13}, "validation_error"),
            ({**card_body(), "exp_month": "12"}, "validation_error"),
            ({**card_body(), "exp_year": 30}, "validation_error"),
            (card_body(cvc="12"), "validation_error"),
            (card_body(cvc="12345"), "validation_error"),
            (card_body(holder_name="x" * 10_000), "validation_error"),
            (card_body(holder_name="nul\x00name"), "validation_error"),
            ({**card_body(), "unexpected": 1}, "validation_error"),
        ],
    )
    def test_bad_cards_are_refused_with_stable_codes_and_never_echoed(self, client, merchant, body, code):
        body = {**body, "merchant_id": merchant[1]}
        response = client.post("/v1/vault/cards", json=body)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == code
        if body["number"]:
            assert body["number"] not in response.text
            assert body["number"].replace(" ", "")[:12] not in response.text

    def test_platform_callers_name_the_merchant(self, client):
        response = client.post("/v1/vault/cards", json=card_body())
        assert response.status_code == 422
        assert response.json()["code"] == "merchant_required"

    def test_an_unknown_merchant_is_404(self, client):
        response = client.post("/v1/vault/cards", json=card_body(merchant_id="mch_nope"))
        assert response.status_code == 404

    def test_malformed_body(self, client):
        response = client.post("/v1/vault/cards", content=b"{not json", headers={"content-type": "application/json"})
        assert response.status_code == 400


class TestTenants:
    def test_merchant_key_vaults_for_itself(self, merchant):
        merchant_client, merchant_id = merchant
        response = merchant_client.post("/v1/vault/cards", json=card_body())
        assert response.status_code == 201, response.text
        assert response.json()["merchant_id"] == merchant_id
        same = merchant_client.post("/v1/vault/cards", json=card_body(merchant_id=merchant_id))
        assert same.status_code == 201

    def test_another_merchant_is_404_everywhere(self, merchant, merchant_client_factory, client):
        a_client, a_id = merchant
        b_client, b_id = merchant_client_factory("Shop B")
        card = a_client.post("/v1/vault/cards", json=card_body()).json()
        account = a_client.post("/v1/vault/bank_accounts", json={"iban": IBAN, "holder_name": "A GmbH",
                                                                  "country": "DE"}).json()
        assert b_client.get(f"/v1/vault/cards/{card['id']}").status_code == 404
        assert b_client.get(f"/v1/vault/cards/{card['id']}").json()["code"] == "card_not_found"
        assert b_client.get(f"/v1/vault/bank_accounts/{account['id']}").status_code == 404
        assert b_client.get("/v1/vault/cards").json()["data"] == []
        assert b_client.get("/v1/vault/cards", params={"merchant_id": a_id}).json()["data"] == []
        assert b_client.get("/v1/vault/bank_accounts", params={"merchant_id": a_id}).json()["data"] == []
        refused = b_client.post("/v1/vault/cards", json=card_body(merchant_id=a_id))
        assert refused.status_code == 404
        refused = b_client.post("/v1/vault/bank_accounts", json={"iban": IBAN, "holder_name": "x", "country": "DE",
                                                                 "merchant_id": a_id})
        assert refused.status_code == 404
        # The owner and the platform see it.
        assert a_client.get(f"/v1/vault/cards/{card['id']}").status_code == 200
        assert client.get(f"/v1/vault/cards/{card['id']}").status_code == 200
        assert [c["id"] for c in a_client.get("/v1/vault/cards").json()["data"]] == [card["id"]]
        assert b_id != a_id

    def test_people_of_another_merchant_get_404(self, merchant, user_client_factory):
        a_client, a_id = merchant
        card = a_client.post("/v1/vault/cards", json=card_body()).json()
        stranger = user_client_factory("merchant_admin", merchant_id=_new_merchant(a_client.app))
        assert stranger.get(f"/v1/vault/cards/{card['id']}").status_code == 404
        owner_staff = user_client_factory("merchant_viewer", merchant_id=a_id)
        assert owner_staff.get(f"/v1/vault/cards/{card['id']}").status_code == 200

    def test_permissions(self, merchant, user_client_factory, anonymous_client):
        _, merchant_id = merchant
        viewer = user_client_factory("merchant_viewer", merchant_id=merchant_id)
        assert viewer.post("/v1/vault/cards", json=card_body()).status_code == 403
        assert viewer.get("/v1/vault/cards").status_code == 200
        finance = user_client_factory("finance")
        assert finance.get("/v1/vault/cards").status_code == 403
        assert anonymous_client.get("/v1/vault/cards").status_code == 401
        assert anonymous_client.post("/v1/vault/cards", json=card_body()).status_code == 401


def _new_merchant(app) -> str:
    from clearhouse.identity import service as identity

    return transact(app.state.engine, lambda s: identity.create_merchant(s, SYSTEM, name="Other")).id


class TestBankAccounts:
    def test_iban_is_vaulted_and_masked(self, client, merchant, engine: Engine, app):
        _, merchant_id = merchant
        response = client.post("/v1/vault/bank_accounts", json={
            "iban": "DE89 3704 0044 0532 0130 00", "bank_code": "37040044", "holder_name": "Muster GmbH",
            "country": "DE", "currency": "EUR", "merchant_id": merchant_id,
        })
        assert response.status_code == 201, response.text
        account = response.json()
        assert account["id"].startswith("ba_")
        assert (account["kind"], account["last4"], account["holder_name"]) == ("iban", "3000", "Muster GmbH")
        assert IBAN not in response.text and "0532013000" not in response.text
        assert client.get(f"/v1/vault/bank_accounts/{account['id']}").json() == account
        with engine.connect() as connection:
            row = connection.execute(
                select(VaultBankAccount.__table__).where(VaultBankAccount.id == account["id"])).one()
        assert IBAN not in " ".join(str(v) for v in row)
        assert app.state.cipher.decrypt(row.number_ciphertext, f"vault_bank_accounts.number:{account['id']}") == IBAN

    def test_account_number(self, client, merchant):
        response = client.post("/v1/vault/bank_accounts", json={
            "account_number": "12345678", "bank_code": "20-00-00", "holder_name": "A Ltd", "country": "GB",
            "merchant_id": merchant[1],
        })
        assert response.status_code == 201, response.text
        assert (response.json()["kind"], response.json()["last4"]) == ("account_number", "5678")
        assert "12345678" not in response.text

    @pytest.mark.parametrize(
        ("body", "code"),
        [
            ({"iban": "DE89370400440532013001", "country": "DE"}, "invalid_bank_account"),  # check digits
            ({"iban": IBAN, "country": "FR"}, "invalid_bank_account"),
            ({"iban": IBAN, "account_number": "12345678", "country": "DE"}, "invalid_bank_account"),
            ({"country": "DE"}, "invalid_bank_account"),
            ({"account_number": "12", "country": "DE"}, "invalid_bank_account"),
            ({"account_number": "1234/5678", "country": "DE"}, "invalid_bank_account"),
            ({"account_number": "12345678", "country": "de"}, "validation_error"),
            ({"account_number": "12345678", "country": "DE", "currency": "XYZ"}, "validation_error"),
            ({"account_number": "12345678", "country": "DE", "holder_name": ""}, "validation_error"),
        ],
    )
    def test_bad_accounts_are_refused(self, client, merchant, body, code):
        body = {"holder_name": "A", "merchant_id": merchant[1], **body}
        response = client.post("/v1/vault/bank_accounts", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["code"] == code
        for number in (body.get("iban"), body.get("account_number")):
            if number and len(number) > 4:
                assert number not in response.text

    @pytest.mark.parametrize("name", [
        "Robert'); DROP TABLE vault_bank_accounts;--", "<script>alert(1)</script>", "../../etc/passwd",
        "tab\tand\nnewline", "Zoë Ångström 日本",
    ])
    def test_injection_shaped_names_are_stored_literally(self, client, merchant, name):
        response = client.post("/v1/vault/bank_accounts", json={
            "account_number": "12345678", "holder_name": name, "country": "DE", "merchant_id": merchant[1]})
        assert response.status_code == 201, response.text
        assert client.get(f"/v1/vault/bank_accounts/{response.json()['id']}").json()["holder_name"] == name


class TestReveal:
    def test_reveal_card_for_the_owning_merchant_only(self, client, merchant, app, merchant_client_factory):
        _, merchant_id = merchant
        card = client.post("/v1/vault/cards", json=card_body(TEST_PANS["amex"], holder_name="Ann",
                                                             merchant_id=merchant_id)).json()
        cipher, engine = app.state.cipher, app.state.engine
        details = transact(engine, lambda s: service.reveal_card(s, cipher, card["id"], merchant_id, True,
                                                                 actor=SYSTEM))
        assert (details.number, details.holder_name, details.brand) == (TEST_PANS["amex"], "Ann", "amex")
        assert TEST_PANS["amex"] not in repr(details) and "Ann" not in repr(details)
        _, other_id = merchant_client_factory("Other")
        with pytest.raises(service.CardNotFound):
            transact(engine, lambda s: service.reveal_card(s, cipher, card["id"], other_id, True))
        with pytest.raises(service.CardNotFound):  # vaulted by the platform: live, never charged in test mode
            transact(engine, lambda s: service.reveal_card(s, cipher, card["id"], merchant_id, False))
        events = client.get("/v1/audit/events", params={"object_id": card["id"]}).json()["data"]
        assert [e["action"] for e in events] == ["vault.card.create", "vault.card.reveal"]
        assert TEST_PANS["amex"] not in str(events)
        assert events[0]["changes"]["last4"] == "0005"

    def test_reveal_bank_account(self, client, merchant, app):
        account = client.post("/v1/vault/bank_accounts", json={
            "iban": IBAN, "holder_name": "M", "country": "DE", "merchant_id": merchant[1]}).json()
        details = transact(app.state.engine, lambda s: service.reveal_bank_account(
            s, app.state.cipher, account["id"], merchant[1], True))
        assert details.number == IBAN
        assert IBAN not in repr(details)

    def test_a_ciphertext_moved_to_another_card_does_not_decrypt(self, client, merchant, app, engine: Engine):
        from sqlalchemy import update

        from clearhouse.kit.crypto import CryptoError

        _, merchant_id = merchant
        first = client.post("/v1/vault/cards", json=card_body(merchant_id=merchant_id)).json()
        second = client.post("/v1/vault/cards", json=card_body(TEST_PANS["jcb"], merchant_id=merchant_id)).json()
        with engine.begin() as connection:
            stolen = connection.execute(select(VaultCard.number_ciphertext).where(VaultCard.id == first["id"])).scalar()
            connection.execute(update(VaultCard).where(VaultCard.id == second["id"]).values(number_ciphertext=stolen))
        with pytest.raises(CryptoError):
            transact(engine, lambda s: service.reveal_card(s, app.state.cipher, second["id"], merchant_id, True))


class TestBrands:
    @pytest.mark.parametrize(("number", "brand"), [
        ("4111111111111111", "visa"), ("5105105105105100", "mastercard"), ("2720999999999996", "mastercard"),
        ("371449635398431", "amex"), ("6011000990139424", "discover"), ("6445644564456445", "discover"),
        ("3530111333300000", "jcb"), ("30569309025904", "diners"), ("6212345678901232", "unionpay"),
        ("9999999999999995", "unknown"),
    ])
    def test_brand_by_bin(self, number, brand):
        assert service.brand_of(number) == brand
