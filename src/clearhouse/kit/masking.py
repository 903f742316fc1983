"""Masking: card numbers and secrets are shown only in part, or not at all, everywhere
outside the vault (API responses, the console, exports, the audit trail and the logs).

``scrub`` works on free text and errs towards hiding: any 13-19 digits in a row (spaces
or dashes allowed between them) that pass the Luhn check lose their middle digits, also
when they sit inside a longer run of digits, so a card number cannot survive by having
digits glued to either end. A long number that merely happens to pass Luhn is masked
too; in a log that costs nothing.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

MASK = "***"
_DIGITS = re.compile(r"[^0-9]")  # ASCII only: \d would take any script's digits

# A run of digits where a single space or dash may sit between any two digits.
_DIGIT_RUN = re.compile(r"[0-9](?:[ \-]?[0-9]){12,}")
_API_SECRET = re.compile(r"cks_[A-Za-z0-9_\-]{16,}")
# Header-shaped secrets: "Authorization: ...", {"authorization": "..."}, (b'authorization', b'...').
_HEADER = re.compile(
    r"(?i)(authorization|x-clearhouse-signature|proxy-authorization|cookie|set-cookie|x-csrf-token)"
    r"(['\"]?\s*[:=,]\s*(?:b(?=['\"]))?['\"]?)([^'\"\r\n]+)"
)
# key=value and "key": "value" forms of passwords and secrets (TOTP seeds in otpauth://
# URIs are a ``secret=`` query parameter).
_ASSIGNMENT = re.compile(
    r"(?i)\b(password|passwd|new_password|current_password|api_secret|secret|totp_secret|recovery_code)"
    r"(['\"]?\s*[:=]\s*['\"]?)([^\s'\"&,;}]+)"
)
# The cheap first look: text without a long digit run or one of these words needs no
# further work. (Lower-casing and plain alternation is ~7x faster than a (?i) pattern.)
_SUSPECT_DIGITS = re.compile(r"[0-9][0-9 \-]{11,}[0-9]")
_SUSPECT_WORDS = re.compile(r"cks_|authoriz|signature|cookie|csrf|passw|secret|recovery")

SENSITIVE_KEYS = frozenset({
    "password", "passwords", "passwd", "passphrase", "passcode", "secret", "secrets", "token", "tokens",
    "cvc", "cvv", "cvv2", "cvc2", "pin", "pins", "totp", "recovery", "authorization", "signature", "cookie",
    "otp", "seed",
})
"""A key with one of these as a word (``api_secret``, ``apiSecret``, ``csrf-token``,
``recovery_codes``) has its value replaced by ``***``."""
CODE_WORDS = frozenset({"code", "codes"})
SECRET_CODE_QUALIFIERS = frozenset({
    "security", "auth", "authorization", "authentication", "verification", "verify", "confirmation",
    "otp", "totp", "mfa", "2fa", "sms", "recovery", "backup", "access", "reset", "login", "activation",
    "redemption", "redeem", "voucher", "gift", "unlock", "pin", "pass", "card", "cvc", "cvv", "onetime",
})
"""``code`` is a secret only after one of these words (``security_code``, ``authCode``,
``otp-code``); other codes (``bank_code``, ``currency_code``, ``country_code``,
``reason_code``, ``status_code``) stay readable."""
MONEY_WORDS = frozenset({"amount", "amounts", "delta", "fee", "balance"})
"""An integer under a key with one of these words (``amount``, ``fee_amount``, ``delta``) is money in
minor units and is kept: the audit trail turned a transfer of 1000000000009 into ``"100000***0009"``."""
NUMBER_KEYS = frozenset({"number", "pan", "iban"})
"""A key named like these (``number``, ``card_number``, ``accountNumber``, ``iban``) keeps
only the visible part of a card number: first six and last four, or last four."""
ACCOUNT_WORDS = frozenset({"account", "acct", "iban", "bank"})
"""A number key with one of these words is an account number or IBAN: last four only."""
_FREE_NUMBER_WORDS = frozenset({"number", "no", "num", "nr"})
_FREE_NUMBER_OWNERS = frozenset({"card", "account", "acct", "bank"})
# Words of a key in snake, kebab, dotted and camel case: "payoutAccountNumber" is payout,
# account, number; "IBANNumber" is iban, number; "X-CSRF-Token" is x, csrf, token.
_KEY_WORD = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")


def luhn_ok(number: str) -> bool:
    """The Luhn (mod 10) check digit is right; non-digits are ignored."""
    digits = _DIGITS.sub("", number)
    if not digits:
        return False
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def last4(number: str) -> str:
    return _DIGITS.sub("", number)[-4:]


def mask_pan(number: str) -> str:
    """``424242******4242``: the first six (the BIN) and last four digits, as PCI DSS allows.
    Shorter numbers (account numbers) keep their last four only."""
    digits = _DIGITS.sub("", number)
    if len(digits) >= 13:
        return digits[:6] + "*" * (len(digits) - 10) + digits[-4:]
    if len(digits) > 4:
        return "*" * (len(digits) - 4) + digits[-4:]
    return "*" * len(digits)


def mask_account(value: str) -> str:
    """Everything but the last four letters or digits hidden (account numbers, IBANs)."""
    compact = re.sub(r"[\s\-]", "", value)
    if len(compact) <= 4:
        return "*" * len(compact)
    return "*" * (len(compact) - 4) + compact[-4:]


def _luhn_windows(digits: str) -> set[int]:
    """Positions to hide in a run of digits: the middle of every 13-19 digit window that
    passes Luhn, so no Luhn-valid number of card length is left whole.

    Linear in the run's length: prefix sums per position parity give each window's Luhn
    sum in constant time (a digit is doubled when its distance from the window's last
    digit is odd)."""
    values = [ord(char) - 48 for char in digits]
    count = len(values)
    # plain[p][i], doubled[p][i]: sums over positions j < i with j % 2 == p.
    plain = [[0] * (count + 1), [0] * (count + 1)]
    doubled = [[0] * (count + 1), [0] * (count + 1)]
    for i, value in enumerate(values):
        for parity in (0, 1):
            same = i % 2 == parity
            plain[parity][i + 1] = plain[parity][i] + (value if same else 0)
            twice = value * 2 - 9 if value > 4 else value * 2
            doubled[parity][i + 1] = doubled[parity][i] + (twice if same else 0)
    hidden: set[int] = set()
    for start in range(count - 12):
        for length in range(13, min(19, count - start) + 1):
            end = start + length  # exclusive
            last = (end - 1) % 2
            total = (plain[last][end] - plain[last][start]) + (doubled[1 - last][end] - doubled[1 - last][start])
            if total % 10 == 0:
                hidden.update(range(start + 6, end - 4))
    return hidden


def _mask_run(match: re.Match[str]) -> str:
    run = match.group(0)
    digit_positions = [i for i, char in enumerate(run) if "0" <= char <= "9"]
    hidden = _luhn_windows("".join(run[i] for i in digit_positions))
    if not hidden:
        return run
    chars = list(run)
    for index in hidden:
        chars[digit_positions[index]] = "*"
    return "".join(chars)


def scrub(text: str) -> str:
    """``text`` with card numbers masked and secrets replaced by ``***``."""
    if not _SUSPECT_DIGITS.search(text) and not _SUSPECT_WORDS.search(text.lower()):
        return text
    text = _DIGIT_RUN.sub(_mask_run, text)
    text = _API_SECRET.sub("cks_***", text)
    text = _HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _ASSIGNMENT.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)


@lru_cache(maxsize=4096)  # log and audit keys are a small, repeating set
def key_words(key: str) -> tuple[str, ...]:
    """The words of a key, lower case, split at snake, kebab, dotted and camel case."""
    return tuple(word.lower() for word in _KEY_WORD.findall(key))


def _secret_code(words: tuple[str, ...], bare_code: bool) -> bool:
    for index, word in enumerate(words):
        if word not in CODE_WORDS:
            continue
        if index == 0:
            if bare_code:
                return True
            continue
        before = words[index - 1]
        if before in SECRET_CODE_QUALIFIERS or (before == "time" and index >= 2 and words[index - 2] == "one"):
            return True
    return False


def is_secret_key(key: str, *, bare_code: bool = False) -> bool:
    """Whether the value under ``key`` is a secret, shown as ``***``: a word of the key is in
    ``SENSITIVE_KEYS``, or it is a ``code`` after a secret word (``security_code``, ``authCode``).
    ``bare_code``: a key that is just ``code`` or ``codes`` is a secret too (the audit trail,
    where such a key holds digital-goods or recovery codes)."""
    words = key_words(key)
    return not SENSITIVE_KEYS.isdisjoint(words) or _secret_code(words, bare_code)


@lru_cache(maxsize=4096)
def _key_kind(key: str, free_form: bool = False) -> str | None:
    words = key_words(key)
    if is_secret_key(key):
        return "secret"
    parts = set(words)
    if free_form:
        # Merchant text: only keys that clearly hold a card or account number (order_number,
        # phone_number and the like stay as they are; a card number in them is still scrubbed).
        if not ({"pan", "iban"} & parts or (_FREE_NUMBER_WORDS & parts and _FREE_NUMBER_OWNERS & parts)):
            return None
    elif not NUMBER_KEYS & parts:
        return None
    return "account" if ACCOUNT_WORDS & parts else "number"


def _mask_number(value: Any, account: bool = False) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        return MASK
    if "*" in value and len(_DIGITS.sub("", value)) <= (4 if account else 10):
        return value  # masked already (a value shown by the API and sent back): keep it stable
    if account or any(char.isalpha() for char in value):  # an account number or IBAN
        return mask_account(value)
    return mask_pan(value)


def _walk(value: Any, free_form: bool) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            kind = _key_kind(key, free_form) if isinstance(key, str) else None
            if free_form and isinstance(key, str):
                key = scrub(key)
            if kind == "secret" and item is not None and not (free_form and isinstance(item, bool)):
                out[key] = MASK
            elif kind in ("number", "account"):
                out[key] = _mask_number(item, account=kind == "account")
            elif isinstance(item, int) and isinstance(key, str) and MONEY_WORDS & set(key_words(key)):
                out[key] = item  # money in minor units, never a card number, however Luhn-shaped its digits
            else:
                out[key] = _walk(item, free_form)
        return out
    if isinstance(value, list | tuple):
        return type(value)(_walk(item, free_form) for item in value)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**12:
        text = str(value)
        scrubbed = scrub(text)
        return value if scrubbed == text else scrubbed
    return value


def mask_value(value: Any) -> Any:
    """A copy of ``value`` safe to show or log: recursive over dicts, lists and tuples;
    strings scrubbed; values of secret-named keys replaced; number-named keys masked."""
    return _walk(value, False)


def mask_free_form(value: Any) -> Any:
    """Merchant-supplied free text (metadata, descriptions, reasons) as it is stored: what
    ``mask_value`` does, narrowed so ordinary data survives. Strings and keys are scrubbed
    (card numbers, API secrets, secret assignments); values under secret-named keys
    (``cvc``, ``pin``, ``password``, ``apiSecret``, ``security_code``) become ``***``, except
    true/false and null; values under card or account number keys (``card_number``,
    ``accountNumber``, ``iban``, ``pan``) keep what ``mask_pan`` or ``mask_account`` keeps.
    Other keys (``order_number``, ``order_id``, ``bank_code``) keep their values, scrubbed."""
    return _walk(value, True)
