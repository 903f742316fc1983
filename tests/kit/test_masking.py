"""Masking and log scrubbing (kit/masking.py, kit/logging.py)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearhouse.kit.masking import last4, luhn_ok, mask_pan, mask_value, scrub
from tests.vault.support import TEST_PANS, captured_logs, find_pans


def _with_check_digit(body: str) -> str:
    for check in "0123456789":
        if luhn_ok(body + check):
            return body + check
    raise AssertionError("unreachable: one check digit always fits")


luhn_pans = st.integers(min_value=13, max_value=19).flatmap(
    lambda length: st.text(alphabet="0123456789", min_size=length - 1, max_size=length - 1)
).map(_with_check_digit)


@st.composite
def written_pans(draw: st.DrawFn) -> tuple[str, str]:
    """A Luhn-valid PAN and how it is written: contiguous, grouped, or with random separators."""
    pan = draw(luhn_pans)
    style = draw(st.sampled_from(["plain", "groups", "random"]))
    if style == "plain":
        return pan, pan
    if style == "groups":
        separator = draw(st.sampled_from([" ", "-"]))
        return pan, separator.join(pan[i:i + 4] for i in range(0, len(pan), 4))
    gaps = draw(st.lists(st.sampled_from(["", " ", "-"]), min_size=len(pan) - 1, max_size=len(pan) - 1))
    return pan, pan[0] + "".join(gap + digit for gap, digit in zip(gaps, pan[1:], strict=True))


def _still_there(pan: str, text: str) -> bool:
    return re.sub(r"[ \-]", "", pan) in re.sub(r"[ \-]", "", text)


class TestCardNumbers:
    def test_mask_pan_keeps_bin_and_last_four(self):
        assert mask_pan("4242424242424242") == "424242******4242"
        assert mask_pan("4242 4242 4242 4242") == "424242******4242"
        assert mask_pan("378282246310005") == "378282*****0005"
        assert mask_pan("12345678") == "****5678"
        assert last4("4242-4242-4242-4242") == "4242"

    def test_luhn(self):
        assert all(luhn_ok(pan) for pan in TEST_PANS.values())
        assert not luhn_ok("4242424242424241")
        assert not luhn_ok("")
        assert not luhn_ok("abc")

    def test_scrub_masks_known_shapes_and_leaves_ordinary_numbers(self):
        text = "paid with 4111 1111 1111 1111 and 5555-5555-5555-4444, order 1234567890123, amount 1999"
        assert scrub(text) == (
            "paid with 4111 11** **** 1111 and 5555-55**-****-4444, order 1234567890123, amount 1999"
        )
        assert scrub("4242424242424242") == "424242******4242"

    def test_scrub_ignores_non_ascii_digits(self):
        arabic = "٤٢٤٢٤٢٤٢٤٢٤٢٤٢٤٢"
        assert scrub(arabic) == arabic

    @settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
    @given(written_pans(), st.text(max_size=40), st.text(max_size=40))
    def test_no_luhn_valid_pan_survives_scrub_whatever_surrounds_it(self, written, before, after):
        pan, shown = written
        scrubbed = scrub(before + shown + after)
        assert not _still_there(pan, scrubbed)

    @settings(max_examples=200)
    @given(written_pans(), st.text(alphabet="0123456789 -", max_size=25), st.text(alphabet="0123456789 -",
                                                                                    max_size=25))
    def test_digits_glued_to_either_side_do_not_hide_a_pan(self, written, before, after):
        pan, shown = written
        assert not _still_there(pan, scrub(before + shown + after))

    def test_a_long_digit_run_is_scrubbed_in_linear_time(self):
        import time

        run = "7" * 200_000
        started = time.perf_counter()
        scrub(run)
        assert time.perf_counter() - started < 5


class TestSecrets:
    def test_api_secrets_headers_passwords_and_totp_seeds(self):
        text = (
            "key cks_live_abcdefghijklmnop1234 Authorization: Clearhouse key=ck_test_1 "
            '{"X-Clearhouse-Signature": "v1=deadbeef"} password=hunter2&next=1 '
            "otpauth://totp/Clearhouse:ann@example.com?secret=JBSWY3DPEHPK3PXP&issuer=Clearhouse"
        )
        scrubbed = scrub(text)
        for secret in ("abcdefghijklmnop1234", "ck_test_1", "deadbeef", "hunter2", "JBSWY3DPEHPK3PXP"):
            assert secret not in scrubbed
        assert "cks_***" in scrubbed
        assert "issuer=Clearhouse" in scrubbed

    def test_header_tuples_as_servers_log_them(self):
        scrubbed = scrub("[(b'authorization', b'Bearer abc.def'), (b'host', b'x')]")
        assert "abc.def" not in scrubbed
        assert "b'host', b'x'" in scrubbed

    def test_mask_value_walks_structures_by_key_name(self):
        masked = mask_value({
            "card": {"number": "4111111111111111", "cvc": "123", "exp_month": 12},
            "bank": {"account_number": "12345678", "iban": "DE89 3704 0044 0532 0130 00"},
            "api_secret": "cks_whatever_it_is_long",
            "recovery_codes": ["aaaa-bbbb", "cccc-dddd"],
            "user": {"password": "p", "totp_secret": "JBSWY3DP", "email": "a@b.c"},
            "note": "customer read 4111-1111-1111-1111 to me",
            "shipping": "by pin-point courier",
            "amount": 1999,
            "pan_list": [4111111111111111],
            "session_token": None,
        })
        assert masked["card"] == {"number": "411111******1111", "cvc": "***", "exp_month": 12}
        assert masked["bank"] == {"account_number": "****5678", "iban": "******************3000"}
        assert masked["api_secret"] == masked["recovery_codes"] == "***"
        assert masked["user"] == {"password": "***", "totp_secret": "***", "email": "a@b.c"}
        assert masked["note"] == "customer read 4111-11**-****-1111 to me"
        assert masked["shipping"] == "by pin-point courier"
        assert masked["amount"] == 1999
        assert masked["pan_list"] == "***"
        assert masked["session_token"] is None


class TestLogScrubbing:
    def test_real_log_calls_carry_no_pan_or_secret(self, tmp_path: Path):
        pan = TEST_PANS["visa"]
        path = tmp_path / "app.log"
        with captured_logs(path, "DEBUG"):
            structlog.get_logger("test").info("card_seen", number=pan, note=f"pan {pan}", api_secret="s3cr3t-value",
                                              nested={"password": "hunter2", "items": [pan]})
            std = logging.getLogger("test.stdlib")
            std.warning("charging %s with key %s", "4111 1111 1111 1111", "cks_live_abcdefghijklmnopqrs")
            std.info("params %r", {"card": pan, "Authorization": "Clearhouse sig"})
            try:
                raise ValueError(f"bad card {pan}")
            except ValueError:
                std.exception("failed")
                structlog.get_logger("test").exception("failed_structlog")
            logging.getLogger("uvicorn.error").error("uvicorn saw %s", pan)
        text = path.read_text()
        assert find_pans(text.encode(), [pan]) == []
        for secret in ("s3cr3t-value", "hunter2", "abcdefghijklmnopqrs", "Clearhouse sig"):
            assert secret not in text
        # The lines are there, masked: the check above is not passing on an empty file.
        assert "411111******1111" in text
        assert "charging 4111 11** **** 1111" in text
        assert "ValueError: bad card 411111******1111" in text
        assert text.count("Traceback") == 2

    def test_json_logs_are_scrubbed_too(self, tmp_path: Path):
        path = tmp_path / "app.json"
        with captured_logs(path, "INFO", json=True):
            structlog.get_logger("test").info("card_seen", number=TEST_PANS["amex"], pan_note=TEST_PANS["amex"])
        line = json.loads(path.read_text().splitlines()[-1])
        assert line["number"] == "378282*****0005"
        assert line["pan_note"] == "378282*****0005"

    def test_uvicorn_access_format_survives_scrubbing(self, tmp_path: Path):
        from uvicorn.logging import AccessFormatter

        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:1", "GET", f"/v1/x?card={TEST_PANS['visa']}", "1.1", 200), None)
        from clearhouse.kit.logging import ScrubFilter

        assert ScrubFilter().filter(record)
        line = AccessFormatter(use_colors=False).format(record)
        assert TEST_PANS["visa"] not in line
        assert "GET /v1/x?card=411111******1111" in line
