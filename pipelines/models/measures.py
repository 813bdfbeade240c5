"""Sizes and units written one way (issue #20): "1/2 in." = "0.5 inch" = "1/2\"" in a query and in a title.

Product searches are full of measures, each written many ways. `normalize_measures` rewrites a text so that
BM25 sees one token for one measure:
- fractions become decimals ("1/2" -> "0.5", "1-1/2" and "1 1/2" -> "1.5");
- a number followed by a unit becomes one token of the number and the unit's canonical name, the decimal point
  written "d" (tokenizers split on "."): "0.5 in." -> "0d5inch", "8ft" -> "8foot", "2 gal" -> "2gallon";
- a pair of numbers joined by "x" ("2 in. x 4 in.", "2x4") also gives the token "2x4".
The words around the measures are kept. Both the indexed texts and the queries go through it, so they agree.
"""

from __future__ import annotations

import re

_NUMBER = r"\d+(?:\.\d+)?"
# canonical unit -> what shops write for it (lowercase; the longer spellings first)
UNITS = {
    "sqft": r"sq\.?\s*f(?:ee|oo)?t\.?|square\s+f(?:ee|oo)t",
    "cuft": r"cu\.?\s*f(?:ee|oo)?t\.?|cubic\s+f(?:ee|oo)t",
    "inch": r"inch(?:es)?|in\.|in\b|\"|''",
    "foot": r"f(?:ee|oo)t|ft\.?|'",
    "pound": r"pounds?|lbs?\.?",
    "gallon": r"gallons?|gal\.?",
    "ounce": r"ounces?|oz\.?",
    "volt": r"volts?|v\b",
    "watt": r"watts?|w\b",
    "amp": r"amps?\b|amperes?",
    "mm": r"mm\b|millimet(?:er|re)s?",
    "cm": r"cm\b|centimet(?:er|re)s?",
    "btu": r"btus?\b",
    "gauge": r"gauge|ga\.?\b",
}
_UNIT_PATTERN = "|".join(f"(?P<{name}>{pattern})" for name, pattern in UNITS.items())
_MIXED_FRACTION = re.compile(r"(?<![\d./])(\d+)(?:\s+|-)(\d+)/(\d+)(?![\d/])")
_FRACTION = re.compile(r"(?<![\d./])(\d+)/(\d+)(?![\d/])")
# the second number in a lookahead: "2 x 4 x 8" gives 2x4 and 4x8
_DIMENSIONS = re.compile(rf"(?<![\d.])({_NUMBER})\s*(?:{_UNIT_PATTERN})?\s*x\s*(?=(\d+(?:\.\d+)?)(?![\d.]))")
_MEASURE = re.compile(rf"(?<![\w.])({_NUMBER})\s*-?\s*(?:{_UNIT_PATTERN})(?![a-z])")


def _decimal(whole: float) -> str:
    return f"{whole:.3f}".rstrip("0").rstrip(".")


def _mixed(match: re.Match) -> str:
    whole, numerator, denominator = (int(group) for group in match.groups())
    return _decimal(whole + numerator / denominator) if denominator else match.group(0)


def _fraction(match: re.Match) -> str:
    numerator, denominator = (int(group) for group in match.groups())
    return _decimal(numerator / denominator) if denominator else match.group(0)


def _token_number(number: str) -> str:
    return _decimal(float(number)).replace(".", "d")


def _measure(match: re.Match) -> str:
    unit = next(name for name, value in match.groupdict().items() if value is not None)
    return f" {_token_number(match.group(1))}{unit} "


def _dimensions(text: str) -> str:
    pairs = [f"{_token_number(match.group(1))}x{_token_number(match.groups()[-1])}"
             for match in _DIMENSIONS.finditer(text)]
    return text + (" " + " ".join(pairs) if pairs else "")


def normalize_measures(text: str | None) -> str:
    """The lowercased text with its fractions, measures and dimension pairs written one way."""
    text = _MIXED_FRACTION.sub(_mixed, (text or "").lower())
    text = _FRACTION.sub(_fraction, text)
    text = _dimensions(text)
    return _MEASURE.sub(_measure, text)
