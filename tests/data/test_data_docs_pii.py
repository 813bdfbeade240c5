"""Data Docs (GX's HTML under data/validated, a pushed DVC output) show failing values: never raw PII."""

from __future__ import annotations

import re

from pipelines.stages.validate import validate
from tests.conftest import repo_settings, with_sections

EMAIL, PHONE, USER = "jane.doe@example.com", "+44 20 7946 0958", "raw-user-7"
CANARIES = re.compile(r"jane\.doe|raw-user|7946 0958")


def test_failing_values_in_data_docs_hold_no_pii(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    long_title = "x" * 495 + " " + EMAIL  # fails the title's length check with the email inside
    (raw / "catalog.csv").write_text("item_id,title,description,category,brand,price\n"
                                     f"P1,Mug,,Home,Acme,2.5\nP2,{long_title},,Home,Acme,2.5\n", encoding="utf-8")
    (raw / "events.csv").write_text("event_id,user_id,item_id,event_type,timestamp,session_id\n"
                                    f"E1,{USER},P1,view,2026-06-01T10:00:00Z,\nE2,{USER},P9,hover,yesterday,\n",
                                    encoding="utf-8")
    (raw / "queries.csv").write_text("query_id,user_id,query,item_id,relevance,timestamp\n"
                                     f"Q1,{USER},mug {EMAIL},P1,3,\nQ2,{USER},call {PHONE},P9,high,never\n",
                                     encoding="utf-8")
    summary = validate(raw, tmp_path / "out", with_sections(repo_settings(), validate={"max_bad_fraction": 1.0}))
    assert summary["catalog"]["rows_quarantined"] == 1  # masked to the same length: still too long
    assert summary["events"]["rows_quarantined"] == 1 and summary["queries"]["rows_quarantined"] == 1
    pages = [path for path in (tmp_path / "out" / "gx").rglob("*") if path.suffix in (".html", ".json")]
    assert pages
    leaking = [str(path) for path in pages if CANARIES.search(path.read_text(encoding="utf-8", errors="replace"))]
    assert leaking == []
