"""The real-data adapters on tiny synthetic inputs (no shared data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.core import contract
from pipelines.core.errors import DataError
from pipelines.core.rawio import read_table
from pipelines.data.sources import home_depot, rechorus, sequences

ISO_UTC = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def header_only(out: Path, table: str) -> bool:
    lines = (out / contract.file_name(table)).read_text(encoding="utf-8").splitlines()
    return lines == [",".join(contract.columns(table))]


def marker(out: Path) -> dict:
    return json.loads((out / "source.json").read_text(encoding="utf-8"))


# --- Home Depot -------------------------------------------------------------------------------

HD_HEADER = b'"id","product_uid","product_title","search_term","relevance"\n'
HD_ROWS = [
    b'2,100001,"Simpson Strong-Tie 12-Gauge Angle","angle bracket",3\n',
    b'3,100001,"Simpson Strong-Tie 12-Gauge Angle","l bracket",2.5\n',
    b'9,100002,"Caf\xe9 Table 90\xb0 Corner, \xbd in.","deck over",2.33\n',
    b'16,100003,"Na\xefve \xabQuote\xbb Lamp","Angle  Bracket ",1\n',
    b'17,100001,"Simpson Strong-Tie 12-Gauge Angle","ANGLE BRACKET",1.67\n',
]


def write_home_depot(folder: Path, rows: list[bytes] = HD_ROWS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "train.csv"
    path.write_bytes(HD_HEADER + b"".join(rows))
    return path


def test_home_depot_tables(tmp_path):
    source = tmp_path / "hd"
    write_home_depot(source)
    out = tmp_path / "raw"
    counts = home_depot.convert(source, out)
    assert counts == {"catalog": 3, "events": 0, "queries": 5}

    catalog = read_table(out, "catalog").frame
    assert list(catalog.columns) == contract.columns("catalog")
    assert catalog["item_id"].tolist() == ["100001", "100002", "100003"]
    assert catalog[["description", "category", "brand", "price"]].isna().all().all()

    queries = read_table(out, "queries").frame
    assert list(queries.columns) == contract.columns("queries")
    # one id per normalized search term, in order of first appearance
    assert queries["query_id"].tolist() == ["hd00001", "hd00002", "hd00003", "hd00001", "hd00001"]
    assert queries["query"].tolist()[3] == "Angle  Bracket "  # the text as typed
    assert queries["relevance"].tolist() == ["2", "1.5", "1.33", "0", "0.67"]
    assert queries["user_id"].isna().all() and queries["timestamp"].isna().all()
    # the repeated (hd00001, 100001) pair is kept for validate
    assert queries.duplicated(["query_id", "item_id"]).sum() == 1

    assert header_only(out, "events")
    assert marker(out) == {"source": "home-depot", "path": str(source), "tables_absent": ["events"]}


def test_home_depot_latin1_titles_decode(tmp_path):
    path = write_home_depot(tmp_path / "hd")
    home_depot.convert(path, tmp_path / "raw")  # the CSV file itself is accepted too
    table = read_table(tmp_path / "raw", "catalog")
    assert table.reencoded == []  # written as valid UTF-8
    titles = dict(zip(table.frame["item_id"], table.frame["title"]))
    assert titles["100002"] == "Café Table 90° Corner, ½ in."
    assert titles["100003"] == "Naïve «Quote» Lamp"


def test_home_depot_first_title_kept_for_a_product(tmp_path):
    rows = HD_ROWS + [b'18,100002,"Another title","x",2\n']
    home_depot.convert(write_home_depot(tmp_path / "hd", rows), tmp_path / "raw")
    catalog = read_table(tmp_path / "raw", "catalog").frame
    assert len(catalog) == 3
    assert catalog.set_index("item_id").loc["100002", "title"].startswith("Café")


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([b'2,100001,"Angle","angle",3\n', b'3,100001,"Angle","l bracket",2.5,extra\n'], "train.csv"),
        ([b'2,100001,"Angle","angle",3\n', b'3,100001,"Angle"\n'], "line 3"),
        ([b'2,100001,"Angle","angle",high\n'], "relevance"),
        ([b'2,100001,"Angle","angle",4\n'], "outside"),
    ],
)
def test_home_depot_garbled_lines(tmp_path, rows, expected):
    write_home_depot(tmp_path / "hd", rows)
    with pytest.raises(DataError) as error:
        home_depot.convert(tmp_path / "hd", tmp_path / "raw")
    assert "train.csv" in str(error.value) and expected in str(error.value)
    assert "\n" not in str(error.value)


def test_home_depot_missing_inputs(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        home_depot.convert(tmp_path / "nowhere", tmp_path / "raw")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="train.csv"):
        home_depot.convert(tmp_path / "empty", tmp_path / "raw")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train.csv").write_text("id,product_uid,title\n1,2,x\n")
    with pytest.raises(DataError, match=r"train.csv: missing column\(s\) product_title"):
        home_depot.convert(tmp_path / "bad", tmp_path / "raw")


# --- ReChorus folder ----------------------------------------------------------------------------

TOYS = {
    "Toys.item2index": "A1\t1\nA2\t2\nA3\t3\nA4\t4\n",
    "Toys.text": 'id\ttext\nA1\tRed "Racer" car\nA2\tBlue ball\tToys\nA3\tPüppchen Dolls Brändo\n',
    "train.csv": "user_id\titem_id\ttime\n1\t1\t970185600\n1\t2\t983404800\n2\t2\t983404801\n2\t3\t983491200\n",
    "dev.csv": "user_id\titem_id\ttime\tneg_items\n1\t3\t1000000000\t[2, 4, 4]\n2\t4\t1000000001\t[1, 1, 2]\n",
    "test.csv": "user_id\titem_id\ttime\tneg_items\n1\t4\t1100000000\t[1, 2, 3]\n2\t1\t1100000001\t[3, 3, 4]\n",
    "item_meta.csv": (
        "item_id\ti_category\ti_brand\tr_complement\tr_substitute\n"
        "1\t1\t2\t[2, 3]\t[]\n2\t1\t3\t[]\t[1]\n3\t2\t3\t[]\t[]\n"
    ),
}


def write_toys(folder: Path, files: dict[str, str] = TOYS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def test_rechorus_tables(tmp_path):
    source = write_toys(tmp_path / "toys")
    out = tmp_path / "raw"
    counts = rechorus.convert(source, out)
    assert counts == {"catalog": 4, "events": 8, "queries": 0}

    catalog = read_table(out, "catalog").frame.set_index("item_id")
    assert catalog.loc["1", "title"] == 'Red "Racer" car'
    assert catalog.loc["2", "title"] == "Blue ball\tToys"
    assert catalog.loc["3", "title"] == "Püppchen Dolls Brändo"
    assert catalog.loc["4", "title"] is None  # not in Toys.text
    assert catalog["category"].tolist() == ["c1", "c1", "c2", None]
    assert catalog["brand"].tolist() == ["b2", "b3", "b3", None]
    assert catalog["price"].isna().all()

    events = read_table(out, "events").frame
    assert list(events.columns) == contract.columns("events")
    assert events["event_id"].tolist() == [
        "train-1", "train-2", "train-3", "train-4", "dev-1", "dev-2", "test-1", "test-2",
    ]
    assert (events["event_type"] == "purchase").all()
    assert events["timestamp"].str.fullmatch(ISO_UTC).all()
    assert events["timestamp"].iloc[0] == "2000-09-29T00:00:00Z"
    assert events["timestamp"].iloc[2] == "2001-03-01T00:00:01Z"
    assert events["session_id"].isna().all()

    assert header_only(out, "queries")
    holdout = pd.read_csv(out / "holdout.csv", dtype=str, keep_default_na=False)
    assert holdout.columns.tolist() == ["event_id", "user_id", "item_id", "timestamp", "split", "neg_items"]
    assert holdout["split"].tolist() == ["dev", "dev", "test", "test"]
    assert holdout["event_id"].tolist() == ["dev-1", "dev-2", "test-1", "test-2"]  # its row of events.csv
    assert holdout["neg_items"].tolist() == ["2 4 4", "1 1 2", "1 2 3", "3 3 4"]  # repeats kept
    assert holdout["timestamp"].iloc[0] == "2001-09-09T01:46:40Z"

    relations = pd.read_csv(out / "relations.csv", dtype=str)
    assert relations.values.tolist() == [
        ["1", "2", "complement"], ["1", "3", "complement"], ["2", "1", "substitute"],
    ]
    assert marker(out) == {
        "source": "rechorus", "path": str(source), "tables_absent": ["queries"],
        "extra_files": ["holdout.csv", "relations.csv"],
    }


def test_rechorus_without_item_meta(tmp_path):
    files = {name: text for name, text in TOYS.items() if name != "item_meta.csv"}
    source = write_toys(tmp_path / "toys", files)
    out = tmp_path / "raw"
    (out).mkdir()
    (out / "relations.csv").write_text("stale\n")
    rechorus.convert(source, out)
    catalog = read_table(out, "catalog").frame
    assert catalog["category"].isna().all() and catalog["brand"].isna().all()
    assert not (out / "relations.csv").exists()
    assert marker(out)["extra_files"] == ["holdout.csv"]


def test_rechorus_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        rechorus.convert(tmp_path / "nowhere", tmp_path / "raw")

    two = write_toys(tmp_path / "two")
    (two / "Games.item2index").write_text("B1\t1\n")
    with pytest.raises(DataError) as error:
        rechorus.convert(two, tmp_path / "raw")
    assert "Games.item2index" in str(error.value) and "Toys.item2index" in str(error.value)

    none = write_toys(tmp_path / "none")
    (none / "Toys.text").unlink()
    with pytest.raises(DataError, match=r"no \*\.text"):
        rechorus.convert(none, tmp_path / "raw")

    missing = write_toys(tmp_path / "missing")
    (missing / "dev.csv").unlink()
    with pytest.raises(DataError, match="dev.csv: file not found"):
        rechorus.convert(missing, tmp_path / "raw")


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("train.csv", "user_id\titem_id\ttime\n1\t1\t970185600\n1\tx\t983404800\n", "line 3: item_id 'x'"),
        ("train.csv", "user_id\titem_id\ttime\n1\t1\tyesterday\n", "line 2: time"),
        ("train.csv", "user_id\titem_id\ttime\n1\t1\t9\t7\n", "more fields"),
        ("train.csv", "user_id,item_id,time\n1,1,970185600\n", "missing column"),
        ("test.csv", "user_id\titem_id\ttime\tneg_items\n1\t4\t1100000000\t[1, 2,\n", "neg_items"),
        ("Toys.item2index", "A1\t1\nA2\n", "item_id"),
        ("Toys.text", "asin\ttitle\nA1\tx\n", "header"),
        ("item_meta.csv", "item_id\ti_category\ti_brand\tr_complement\tr_substitute\n1\t1\t2\t[2;3]\t[]\n",
         "r_complement"),
    ],
)
def test_rechorus_garbled_files(tmp_path, name, text, expected):
    source = write_toys(tmp_path / "toys", {**TOYS, name: text})
    with pytest.raises(DataError) as error:
        rechorus.convert(source, tmp_path / "raw")
    assert name in str(error.value) and expected in str(error.value)
    assert "\n" not in str(error.value)


# --- ID-only sequences --------------------------------------------------------------------------


def test_sequences_tables(tmp_path):
    path = tmp_path / "Toys_small.txt"
    path.write_text("1 5 3 5\n2 3\n\n10 12 5\n")
    out = tmp_path / "raw"
    counts = sequences.convert(path, out)
    assert counts == {"catalog": 3, "events": 6, "queries": 0}

    events = read_table(out, "events").frame
    assert list(events.columns) == contract.columns("events")
    assert events["event_id"].tolist() == ["1-1", "1-2", "1-3", "2-1", "10-1", "10-2"]
    assert events[["user_id", "item_id"]].values.tolist() == [
        ["1", "5"], ["1", "3"], ["1", "5"], ["2", "3"], ["10", "12"], ["10", "5"],
    ]
    assert (events["event_type"] == "purchase").all()
    assert events["timestamp"].str.fullmatch(ISO_UTC).all()
    assert events["timestamp"].tolist() == [
        "2000-01-01T00:01:00Z", "2000-01-01T00:02:00Z", "2000-01-01T00:03:00Z",
        "2000-01-01T00:01:00Z", "2000-01-01T00:01:00Z", "2000-01-01T00:02:00Z",
    ]
    assert events["session_id"].isna().all()

    catalog = read_table(out, "catalog").frame
    assert catalog["item_id"].tolist() == ["3", "5", "12"]
    assert catalog["title"].tolist() == ["Toys small item 3", "Toys small item 5", "Toys small item 12"]
    assert catalog[["description", "category", "brand", "price"]].isna().all().all()
    assert header_only(out, "queries")
    assert marker(out) == {"source": "sequences", "path": str(path), "tables_absent": ["queries"], "text": False}


def test_sequences_folder_with_one_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "Beauty.txt").write_text("1 1 2\n")
    sequences.convert(tmp_path / "data", tmp_path / "raw")
    assert read_table(tmp_path / "raw", "catalog").frame["title"].tolist() == ["Beauty item 1", "Beauty item 2"]


def test_sequences_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="nowhere"):
        sequences.convert(tmp_path / "nowhere", tmp_path / "raw")

    folder = tmp_path / "data"
    folder.mkdir()
    with pytest.raises(DataError, match=r"no \*\.txt"):
        sequences.convert(folder, tmp_path / "raw")
    (folder / "Beauty.txt").write_text("1 1 2\n")
    (folder / "Toys.txt").write_text("1 1 2\n")
    with pytest.raises(DataError) as error:
        sequences.convert(folder, tmp_path / "raw")
    assert "Beauty.txt" in str(error.value) and "Toys.txt" in str(error.value)

    garbled = tmp_path / "Garbled.txt"
    garbled.write_text("1 1 2\n2 3 x4\n")
    with pytest.raises(DataError, match=r"Garbled.txt: line 2"):
        sequences.convert(garbled, tmp_path / "raw")

    twice = tmp_path / "Twice.txt"
    twice.write_text("1 1 2\n2 3\n1 4\n")
    with pytest.raises(DataError, match=r"Twice.txt: line 3: user 1 already has a sequence on line 1"):
        sequences.convert(twice, tmp_path / "raw")

    binary = tmp_path / "Binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(DataError, match="Binary.txt"):
        sequences.convert(binary, tmp_path / "raw")

    empty = tmp_path / "Empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="Empty.txt: file is empty"):
        sequences.convert(empty, tmp_path / "raw")


def test_surplus_fields_on_the_first_line(tmp_path):
    write_home_depot(tmp_path / "hd", [b'2,100001,"Angle","angle",3,9\n'])
    with pytest.raises(DataError, match=r"train.csv: line 2: more fields"):
        home_depot.convert(tmp_path / "hd", tmp_path / "raw")
    source = write_toys(tmp_path / "toys", {**TOYS, "Toys.item2index": "A1\t1\t7\nA2\t2\n"})
    with pytest.raises(DataError, match=r"Toys.item2index: line 1: more fields"):
        rechorus.convert(source, tmp_path / "raw")
