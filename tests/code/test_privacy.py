from __future__ import annotations

import pandas as pd
import pytest

from pipelines.core import privacy
from tests.conftest import params_section


@pytest.mark.parametrize("text, expected", [
    ("toner for jane.doe42@example.com asap", "toner for [EMAIL] asap"),
    ("call +1 415-555-0134 about desks", "call [PHONE] about desks"),
    ("call (415) 555-0134", "call [PHONE]"),
    ("refund 4111 1111 1111 1111 please", "refund [CARD] please"),
    ("refund 4111-1111-1111-1111", "refund [CARD]"),
    ("hp 564 ink 4 pack", "hp 564 ink 4 pack"),
    ("part 1234 5678 9012 3456", "part 1234 5678 9012 3456"),  # fails the Luhn check: not a card
    ("mail jörg.müller@exämple.de now", "mail [EMAIL] now"),
    ("ёлка@почта.рф", "[EMAIL]"),
    ("uk +44 20 7946 0958 or 020 7946 0958", "uk [PHONE] or [PHONE]"),
    ("fr +33 6 12 34 56 78, 06 12 34 56 78", "fr [PHONE], [PHONE]"),
    ("de +49 (0)30 1234567 / 030 12345678 / 0171-1234567", "de [PHONE] / [PHONE] / [PHONE]"),
    ("2 x 4 x 8 pine 10 ft", "2 x 4 x 8 pine 10 ft"),
    ("0.5 in. pipe 1/2 in 100 ft", "0.5 in. pipe 1/2 in 100 ft"),
    ("model 06 12 volt", "model 06 12 volt"),  # four digits: too few for a phone number
    ("1/2 in. x 10 ft. 0 to 60 psi", "1/2 in. x 10 ft. 0 to 60 psi"),
])
def test_mask_text(text, expected):
    assert privacy.mask_text(text)[0] == expected


def test_masks_can_keep_the_length():
    text = "mail jane.doe42@example.com or +44 20 7946 0958"
    masked, counts = privacy.mask_text(text, keep_length=True)
    assert len(masked) == len(text) and "jane" not in masked and "7946" not in masked
    assert masked.startswith("mail [EMAIL]####") and counts == {"email": 1, "card": 0, "phone": 1}


def test_mask_column_counts_each_kind_and_keeps_missing():
    values = pd.Series(["a@b.co and c@d.org", None, "4111111111111111"], dtype=object)
    masked, counts = privacy.mask_column(values)
    assert masked.tolist() == ["[EMAIL] and [EMAIL]", None, "[CARD]"]
    assert counts == {"email": 2, "card": 1, "phone": 0}


def test_pseudonyms_are_stable_keyed_and_hide_the_id():
    ids = pd.Series(["U1", "U2", "U1", None], dtype=object)
    first = privacy.pseudonymize(ids, b"key-a")
    assert first[0] == first[2] and first[0] != first[1] and pd.isna(first[3])
    assert "U1" not in first[0] and first[0].startswith(privacy.PSEUDONYM_PREFIX)
    assert privacy.pseudonymize(ids, b"key-b")[0] != first[0]


def test_key_from_env_else_generated_file(tmp_path, monkeypatch):
    params = params_section("privacy", key_env="SF_TEST_KEY", key_file=str(tmp_path / "secret" / "pii.key"))
    monkeypatch.setenv("SF_TEST_KEY", "from-env")
    assert privacy.load_key(params) == b"from-env"
    monkeypatch.delenv("SF_TEST_KEY")
    generated = privacy.load_key(params)
    assert len(generated) == 64 and privacy.load_key(params) == generated
    assert (tmp_path / "secret" / "pii.key").stat().st_mode & 0o077 == 0
