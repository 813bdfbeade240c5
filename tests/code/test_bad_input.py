"""Bad raw files end in one clear line naming the file, a non-zero exit, and no traceback."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.core import rawio
from pipelines.core.errors import DataError
from tests.conftest import REPO, repo_settings

CATALOG = "item_id,title,description,category,brand,price\nP1,Mug,,Home,Acme,2.5\n"
EVENTS = "event_id,user_id,item_id,event_type,timestamp,session_id\nE1,U1,P1,view,2026-06-01T10:00:00Z,\n"
QUERIES = "query_id,user_id,query,item_id,relevance,timestamp\nQ1,,mug,P1,3,\n"


def good_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (("catalog.csv", CATALOG), ("events.csv", EVENTS), ("queries.csv", QUERIES)):
        (path / name).write_text(text, encoding="utf-8")
    return path


BROKEN = {  # case: (table, how to break it, what the message must say)
    "missing_column": ("catalog", lambda f: (f / "catalog.csv").write_text("item_id,title,description,category,brand\nP1,Mug,,,\n"),
                       "missing required column(s) price"),
    "empty_file": ("events", lambda f: (f / "events.csv").write_bytes(b""), "file is empty"),
    "binary_file": ("catalog", lambda f: (f / "catalog.csv").write_bytes(bytes(range(256)) * 40), "binary content"),
    "random_text": ("queries", lambda f: (f / "queries.csv").write_text("lorem ipsum dolor\nsit amet, consectetur\nadipiscing\n"),
                    "missing required column(s) query_id"),
    "missing_file": ("events", lambda f: (f / "events.csv").unlink(), "file not found"),
    "header_only": ("catalog", lambda f: (f / "catalog.csv").write_text("item_id,title,description,category,brand,price\n"),
                    "no data rows"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_raises_data_error_naming_the_file(tmp_path, case):
    folder = good_folder(tmp_path / "raw")
    table, breaker, message = BROKEN[case]
    breaker(folder)
    with pytest.raises(DataError) as error:
        rawio.read_table(folder, table)
    assert str(folder / f"{table}.csv") in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_cli_validate_prints_one_line_and_exits_nonzero(tmp_path, case):
    folder = good_folder(tmp_path / "raw")
    BROKEN[case][1](folder)
    shopfusion = Path(sys.executable).parent / "shopfusion"
    result = subprocess.run([str(shopfusion), "validate", "--raw", str(folder), "--out", str(tmp_path / "out"),
                             "--params", str(REPO / "params.yaml")],
                            capture_output=True, text=True, env={**os.environ, "SHOPFUSION_LOG_LEVEL": "WARNING"},
                            cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(folder) in lines[0]
    assert BROKEN[case][2] in lines[0]


def test_good_folder_validates_with_all_rows_valid(tmp_path):
    from pipelines.stages.validate import validate

    summary = validate(good_folder(tmp_path / "raw"), tmp_path / "out", repo_settings())
    assert summary == {table: {"rows_in": 1, "rows_valid": 1, "rows_quarantined": 0}
                       for table in ("catalog", "events", "queries")}
    assert (tmp_path / "out" / "gx" / "uncommitted" / "data_docs" / "local_site" / "index.html").exists()


def test_invalid_utf8_cells_are_redecoded_and_reported(tmp_path):
    folder = good_folder(tmp_path / "raw")
    (folder / "catalog.csv").write_bytes(
        "item_id,title,description,category,brand,price\nP1,Café Crème,,Home,Acme,2.5\n".encode("cp1252"))
    table = rawio.read_table(folder, "catalog")
    assert table.frame.loc[0, "title"] == "Café Crème"
    assert table.reencoded == [(0, "title")]


def test_quarantine_share_above_limit_fails_with_summary(tmp_path):
    from pipelines.stages.validate import validate

    folder = good_folder(tmp_path / "raw")
    (folder / "catalog.csv").write_text(CATALOG + "P2,,,,,-1\n", encoding="utf-8")
    settings = repo_settings()
    with pytest.raises(DataError) as error:
        validate(folder, tmp_path / "out", settings)
    assert "catalog.csv" in str(error.value) and "max_bad_fraction" in str(error.value)
    assert error.value.details["catalog"] == {"rows_in": 2, "rows_valid": 1, "rows_quarantined": 1}
    assert (tmp_path / "out" / "quarantine" / "catalog.parquet").exists()
    shutil.rmtree(tmp_path / "out")
