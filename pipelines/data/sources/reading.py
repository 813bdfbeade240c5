"""Reading a source's delimited files: every way they can be broken ends in a DataError naming the file."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from pipelines.core.errors import DataError

_BYTE_ORDER_MARKS = ("\ufeff", "\u00ef\u00bb\u00bf")  # as Unicode, and as UTF-8 bytes read as Latin-1


def header_name(name: object) -> str:
    """A header cell without surrounding space or a byte-order mark."""
    text = str(name).strip()
    for mark in _BYTE_ORDER_MARKS:
        text = text.removeprefix(mark)
    return text


def read_delimited(path: Path, required: tuple[str, ...], what: str = "CSV", **read_csv_options) -> pd.DataFrame:
    """A delimited file as strings with the `required` columns; what names the format in messages."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, on_bad_lines="error", **read_csv_options)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, csv.Error, UnicodeError, ValueError) as exc:
        raise DataError(f"{path}: not a readable {what} ({str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if not isinstance(frame.index, pd.RangeIndex):  # pandas took the surplus leading fields as an index
        first_data_line = 1 if read_csv_options.get("header", 0) is None else 2
        raise DataError(f"{path}: line {first_data_line}: more fields than the {len(frame.columns)} expected ({what})")
    frame.columns = [header_name(name) for name in frame.columns]
    missing = [name for name in required if name not in frame.columns]
    if missing:
        found = ", ".join(map(str, frame.columns[:8]))
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (found: {found}; {what} expected)")
    return frame


def find_one(folder: Path, pattern: str, layout: str) -> Path:
    """The single file of folder matching pattern; a DataError when there is none or several."""
    matches = sorted(path for path in Path(folder).glob(pattern) if path.is_file())
    if not matches:
        raise DataError(f"{folder}: no {pattern} file ({layout} needs exactly one)")
    if len(matches) > 1:
        names = ", ".join(path.name for path in matches)
        raise DataError(f"{folder}: several {pattern} files ({names}); keep or pass exactly one")
    return matches[0]
