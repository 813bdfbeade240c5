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

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD_CANDIDATE = re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")
PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)|\d{3})[ .-]?\d{3}[ .-]?\d{4}(?!\d)")
TOKENS = {"email": "[EMAIL]", "card": "[CARD]", "phone": "[PHONE]"}
PSEUDONYM_PREFIX = "u_"


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
        path.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        path.chmod(0o600)
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


def mask_text(text: str) -> tuple[str, dict[str, int]]:
    """Replace emails, card numbers (Luhn-checked) and phone numbers by tokens; count each kind."""
    counts = {kind: 0 for kind in TOKENS}

    def replace(kind):
        def substitute(match: re.Match) -> str:
            if kind == "card" and not luhn_valid(re.sub(r"\D", "", match.group())):
                return match.group()
            counts[kind] += 1
            return TOKENS[kind]

        return substitute

    text = EMAIL.sub(replace("email"), text)
    text = CARD_CANDIDATE.sub(replace("card"), text)
    text = PHONE.sub(replace("phone"), text)
    return text, counts


def mask_column(values: pd.Series) -> tuple[pd.Series, dict[str, int]]:
    totals = {kind: 0 for kind in TOKENS}
    masked = []
    for value in values:
        if value is None or (isinstance(value, float) and pd.isna(value)):
            masked.append(value)
            continue
        text, counts = mask_text(value)
        masked.append(text)
        for kind, count in counts.items():
            totals[kind] += count
    return pd.Series(masked, index=values.index, dtype=object), totals
