"""PII handling: keyed pseudonyms for user ids, tokens for emails, phone and card numbers in free text."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

import pandas as pd

from pipelines.core.config import PrivacyParams

# \w is Unicode-aware: jörg.müller@exämple.de is an email too
EMAIL = re.compile(r"[\w.%+-]+@[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}")
CARD_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
# North American numbers (area code and exchange from 2-9); international ones (+44 20 7946 0958, +33 6 12 34 56 78, +49 (0)30 1234567);
# national ones with a trunk 0 and a non-zero area code (020 7946 0958, 06 12 34 56 78, 030 12345678). A candidate must hold
# PHONE_DIGITS digits, so sizes, quantities and model numbers in product searches stay as they are.
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .-]?[2-9]\d{2}[ .-]?\d{4}(?!\d)"
                   r"|(?<![\w+])\+\d{1,3}(?:[ .\-/]?(?:\(0\)|\(\d{1,5}\)|\d{1,5})){2,7}(?![\w])"
                   r"|(?<![\w+.,/-])0[1-9]\d{0,3}(?:[ .\-/]\d{2,8}){1,5}(?![\w.,/-])")
PHONE_DIGITS = (9, 15)
TOKENS = {"email": "[EMAIL]", "card": "[CARD]", "phone": "[PHONE]"}
PSEUDONYM_PREFIX = "u_"
PSEUDONYM = re.compile(re.escape(PSEUDONYM_PREFIX) + r"[0-9a-f]{20}")  # what `pseudonym` makes (fullmatch)


def existing_key(key_env: str, key_file: str | Path) -> bytes | None:
    """The secret of the keyed hash from the env var, else from the key file; None when neither has one."""
    from_env = os.environ.get(key_env)
    if from_env:
        return from_env.encode("utf-8")
    path = Path(key_file)
    return path.read_text(encoding="utf-8").strip().encode("utf-8") if path.exists() else None


def load_key(params: PrivacyParams) -> bytes:
    """The secret of the keyed hash: from the env var, else a local file made on first use."""
    key = existing_key(params.key_env, params.key_file)
    if key is None:
        path = Path(params.key_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        # created with mode 0600 (O_EXCL: never over a key another process has just made), not chmod-ed after
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return existing_key(params.key_env, path)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        key = existing_key(params.key_env, path)
    return key


def pseudonym(value: str, key: bytes) -> str:
    return PSEUDONYM_PREFIX + hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()[:20]


def pseudonymize(values: pd.Series, key: bytes) -> pd.Series:
    """Same id, same pseudonym (within one key); missing stays missing."""
    distinct = {value: pseudonym(value, key) for value in values.dropna().unique()}
    return values.map(distinct, na_action="ignore")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        digit = int(char)
        if position % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0


def mask_text(text: str, keep_length: bool = False) -> tuple[str, dict[str, int]]:
    """Replace emails, card numbers (Luhn-checked) and phone numbers by tokens; count each kind.
    keep_length: each token padded with "#" (or cut) to the length of what it replaces, so length checks
    give the same verdict on the masked text."""
    counts = {kind: 0 for kind in TOKENS}

    def replace(kind):
        def substitute(match: re.Match) -> str:
            digits = re.sub(r"\D", "", match.group())
            if kind == "card" and not luhn_valid(digits):
                return match.group()
            if kind == "phone" and not PHONE_DIGITS[0] <= len(digits) <= PHONE_DIGITS[1]:
                return match.group()
            counts[kind] += 1
            if keep_length:
                return TOKENS[kind].ljust(len(match.group()), "#")[:len(match.group())]
            return TOKENS[kind]

        return substitute

    text = EMAIL.sub(replace("email"), text)
    text = CARD_CANDIDATE.sub(replace("card"), text)
    text = PHONE.sub(replace("phone"), text)
    return text, counts


def mask_column(values: pd.Series, keep_length: bool = False) -> tuple[pd.Series, dict[str, int]]:
    totals = {kind: 0 for kind in TOKENS}
    masked = []
    for value in values:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            masked.append(value)
            continue
        text, counts = mask_text(value, keep_length)
        masked.append(text)
        for kind, count in counts.items():
            totals[kind] += count
    return pd.Series(masked, index=values.index, dtype=object), totals
