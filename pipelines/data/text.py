"""Free-text repair shared by the clean stage and the defect audit: encodings, HTML entities, Unicode, spaces."""

from __future__ import annotations

import html
import re
import unicodedata

import ftfy

_SPACES = re.compile(r"\s+")
_C1_CONTROLS = re.compile("[\x80-\x9f]")


def _undo_mac_roman(text: str) -> str:
    """Undo text that went UTF-8 -> Windows-1252 -> Mac Roman (the Home Depot titles did).

    Reading its Latin-1 bytes as Mac Roman gives UTF-8 mojibake that ftfy repairs. Real
    mojibake collapses into fewer characters; correct accented text does not, so the
    re-decoding is kept only when it is shorter and free of C1 control characters.
    """
    if text.isascii():
        return text
    try:
        candidate = ftfy.fix_text(text.encode("latin-1").decode("mac_roman"))
    except UnicodeError:
        return text
    if len(candidate) < len(ftfy.fix_text(text)) and not _C1_CONTROLS.search(candidate):
        return candidate
    return text


def normalize_text(value: str | None) -> str | None:
    """Repair encoding damage and normalize a free-text value; None stays None."""
    if value is None:
        return None
    text = ftfy.fix_text(_undo_mac_roman(html.unescape(value)), normalization="NFC")
    text = "".join(char for char in text if unicodedata.category(char)[0] != "C" or char in "\t\n")
    return _SPACES.sub(" ", text).strip() or None


