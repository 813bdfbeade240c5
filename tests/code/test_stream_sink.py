"""The stream's Parquet sink (issue #18, point 5) against a real redis-server of its own, and the ingest of it.

Each applied event reaches the sink once: a duplicate publication or re-delivery is never queued, a drain
killed after writing and before trimming the queue rewrites the same files, and a drain that lost its lock
trims nothing and shrinks no file. Parts are hourly Parquet files of the `events` contract's columns.
`ingest --source stream` adds the sink's events, once each, to the base source's events, and clean keeps their
pseudonymous user ids, so a shopper's bundle history and live events share one id.

The sink also snapshots the catalog stream (POST /items) at its drains, when its version changed, and ingest
merges the snapshot into the base's catalog: a product added live is in the next training's catalog, so its
events pass validate instead of being quarantined.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.bench.served import wait_until
from pipelines.core import contract
from pipelines.core.config import PARAMS_ENV
from pipelines.core.errors import DataError
from pipelines.core.privacy import PSEUDONYM, load_key, pseudonym
from pipelines.data.sources.stream import (
    CATALOG_SNAPSHOT,
    PART_GLOB,
    SNAPSHOT_COLUMNS,
    TITLE_MAX,
    merge_catalog,
    read_sink,
)
from pipelines.feedback.catalog_state import CatalogKeys
from pipelines.feedback.live_state import LiveState, sink_record
from pipelines.feedback.sink import Sink
from pipelines.serving.catalog import publish_items
from pipelines.feedback.stream import StreamNames, StreamProcessor, check_events, pseudonymize_events, publish
from pipelines.stages.clean import clean
from pipelines.stages.ingest import ingest
from pipelines.stages.validate import validate
from tests.conftest import REPO, TINY_PARAMS, with_sections, write_params_file

pytestmark = pytest.mark.integration

KEY = b"sink-test-key"
TEN_AM = datetime(2026, 6, 10, 10, 0, tzinfo=timezone.utc)
COLUMNS = contract.columns("events")


@pytest.fixture
def names():
    return StreamNames.from_prefix("sink:")


@pytest.fixture
def state(client, names, params_settings):
    return LiveState.from_params(client, names.state_prefix, params_settings.stream,
                                 params_settings.clean.session_gap_minutes * 60, sink_queue=True)


@pytest.fixture
def sink(tmp_path, state):
    return Sink(tmp_path / "sink", state.sink_queue_key(), flush_events=100, flush_seconds=3600)


def row(number: int, user="alice", item="i1", at: datetime | None = None, session: str | None = "s1") -> dict:
    """A raw event at ten o'clock (UTC) plus `number` seconds, unless `at` says otherwise."""
    moment = at or TEN_AM + timedelta(seconds=number)
    return {"event_id": f"e{number}", "user_id": user, "item_id": item, "event_type": "view",
            "timestamp": moment.isoformat(), "session_id": session}


def checked(rows: list[dict], key: bytes = KEY) -> list[dict]:
    """The rows as the intake hands them on: checked, user ids pseudonymized."""
    events, errors = check_events(rows)
    assert errors == []
    return pseudonymize_events(events, key)


def apply(state: LiveState, numbers) -> list[dict]:
    events = checked([row(number) for number in numbers])
    assert all(state.apply_many(events))
    return events


def sink_record_of(raw: dict) -> dict:
    return json.loads(sink_record(checked([raw])[0]))


def in_sink(sink: Sink) -> tuple[pd.DataFrame, dict]:
    return read_sink(sink.path)


# ---------------------------------------------------------------- queue and drain

def test_events_applied_by_the_processor_land_in_the_sink_once_each(client, names, state, sink, params_settings):
    events = checked([row(number, user=f"u{number % 3}") for number in range(30)])
    publish(client, names, events, params_settings.stream.maxlen)
    publish(client, names, events[:5], params_settings.stream.maxlen)  # a producer published five twice
    worker = StreamProcessor(client, names, state, "c1", batch=10, block_ms=20, claim_idle_ms=30000, sink=sink)
    while worker.run_once():
        pass
    assert worker.counts["applied"] == 30 and worker.counts["duplicates"] == 5
    assert client.llen(state.sink_queue_key()) == 30
    assert sink.drain(client) == 30 and client.llen(state.sink_queue_key()) == 0
    frame, counts = in_sink(sink)
    assert counts["rows"] == 30 and sorted(frame["event_id"]) == sorted(event["event_id"] for event in events)
    assert set(frame["user_id"]) == {pseudonym(f"u{user}", KEY) for user in range(3)}
    assert frame["user_id"].str.fullmatch(PSEUDONYM.pattern).all()


def test_a_duplicate_delivery_adds_no_row(client, state, sink):
    [event] = apply(state, [1])
    assert state.apply(event) is False  # re-delivered after a crash before XACK
    assert state.apply_many([event, event]) == [False, False]
    assert client.llen(state.sink_queue_key()) == 1
    assert sink.drain(client) == 1
    assert state.apply(event) is False and sink.drain(client) == 0  # nothing queued again after the drain
    assert in_sink(sink)[1]["rows"] == 1


def test_without_a_sink_nothing_is_queued(client, names, params_settings):
    state = LiveState.from_params(client, names.state_prefix, params_settings.stream,
                                  params_settings.clean.session_gap_minutes * 60)
    assert all(state.apply_many(checked([row(1), row(2)])))
    assert state.applied_count() == 2 and not client.exists(state.sink_queue_key())


def test_a_drain_killed_after_writing_before_trimming_leaves_no_duplicate(client, state, sink):
    apply(state, range(10))
    written = sink.write(sink.read_head(client))  # the files are written, then the processor dies: no trim
    assert client.llen(state.sink_queue_key()) == 10
    apply(state, range(10, 15))
    assert sink.drain(client) == 15  # the same head, and five more
    assert sink.drain(client) == 0
    frame, counts = in_sink(sink)
    assert counts["rows"] == 15 and counts["duplicates_dropped"] == 0  # no duplicate on disk, not just on reading
    assert sorted(frame["event_id"]) == sorted(f"e{number}" for number in range(15))
    assert sorted(sink.path.glob(PART_GLOB)) == written  # the same file, replaced


def test_a_drain_that_lost_its_lock_trims_nothing_and_shrinks_no_file(client, state, sink, monkeypatch):
    apply(state, range(10))
    stalled_head = sink.read_head(client)  # a drain reads, then stalls past its lock's TTL...
    apply(state, range(10, 15))
    assert sink.drain(client) == 15  # ...while another drains the same head and more
    sink.write(stalled_head)  # the stalled drain wakes and writes its smaller group under the same name
    assert in_sink(sink)[1]["rows"] == 15
    apply(state, range(15, 18))
    write = sink.write

    def write_after_losing_the_lock(raw_records):
        client.set(sink.lock_key, "another-processor")  # the TTL ran out and another processor took the lock
        return write(raw_records)

    monkeypatch.setattr(sink, "write", write_after_losing_the_lock)
    assert sink.drain(client) == 0
    assert client.llen(state.sink_queue_key()) == 3  # left for the lock's holder
    assert client.get(sink.lock_key) == b"another-processor"  # not released: it is not ours


def test_only_one_processor_drains_at_a_time(client, state, sink):
    apply(state, range(5))
    client.set(sink.lock_key, "another-processor", ex=60)
    assert sink.drain(client) == 0 and client.llen(state.sink_queue_key()) == 5
    assert not sink.path.exists()
    client.delete(sink.lock_key)
    assert sink.drain(client) == 5 and not client.exists(sink.lock_key)  # released after the drain


def test_events_of_two_hours_land_in_two_partitions(client, state, sink):
    rows = [row(1, at=TEN_AM + timedelta(minutes=59, seconds=30)),
            row(2, at=TEN_AM + timedelta(hours=1, seconds=30)),
            row(3, at=TEN_AM + timedelta(minutes=15)),
            {**row(4), "timestamp": "2026-06-10T12:30:00+02:00"}]  # 10:30 UTC
    assert all(state.apply_many(checked(rows)))
    assert sink.drain(client) == 4
    parts = sorted(sink.path.glob(PART_GLOB))
    folders = [part.parent.relative_to(sink.path).as_posix() for part in parts]
    assert folders == ["date=2026-06-10/hour=10", "date=2026-06-10/hour=11"]
    assert [pq.read_table(part).column("event_id").to_pylist() for part in parts] == [["e1", "e3", "e4"], ["e2"]]


def test_parts_are_parquet_of_the_contract_columns_as_strings(client, state, sink):
    assert all(state.apply_many(checked([row(1), row(2, session=None)])))
    sink.drain(client)
    [part] = sink.path.glob(PART_GLOB)
    schema = pq.read_schema(part)
    assert schema.names == COLUMNS and all(field.type == pa.string() for field in schema)
    table = pq.read_table(part).to_pylist()
    assert [entry["session_id"] for entry in table] == ["s1", None]
    assert table[0]["timestamp"] == TEN_AM.replace(second=1).isoformat()


def test_a_record_that_is_no_event_is_skipped_and_counted(client, state, sink):
    apply(state, [1])
    foreign = {**sink_record_of(row(2)), "item_id": 7}
    client.rpush(state.sink_queue_key(), "not json", '{"event_id": "x"}', json.dumps(foreign))
    assert sink.drain(client) == 4 and client.llen(state.sink_queue_key()) == 0
    assert sink.counts["bad_records"] == 3 and in_sink(sink)[1]["rows"] == 1


def test_a_sink_that_cannot_be_written_keeps_the_events_queued(client, state, tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder", encoding="utf-8")
    sink = Sink(blocked, state.sink_queue_key(), flush_events=100, flush_seconds=3600)
    apply(state, range(3))
    assert sink.drain(client) == 0
    assert client.llen(state.sink_queue_key()) == 3 and not client.exists(sink.lock_key)
    assert sink.counts["write_errors"] == 1


def test_a_drain_is_due_after_flush_seconds_or_at_flush_events(client, state, tmp_path):
    sink = Sink(tmp_path / "sink", state.sink_queue_key(), flush_events=3, flush_seconds=0.2)
    sink.drain(client)
    assert not sink.due(client)
    apply(state, range(3))
    assert sink.due(client)  # a queue of flush_events
    sink.drain(client)
    assert not sink.due(client)
    assert wait_until(lambda: sink.due(client), 2, 0.02)  # flush_seconds later


def test_the_processor_drains_when_enough_are_queued_and_once_more_at_stop(client, names, state, tmp_path,
                                                                            params_settings):
    sink = Sink(tmp_path / "sink", state.sink_queue_key(), flush_events=10, flush_seconds=3600)
    worker = StreamProcessor(client, names, state, "c1", batch=5, block_ms=20, claim_idle_ms=30000, sink=sink)
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(worker.run(stop)))
    thread.start()
    try:
        publish(client, names, checked([row(number) for number in range(25)]), params_settings.stream.maxlen)
        assert wait_until(lambda: sink.counts["events"] >= 10, 10, 0.02)  # by count, long before flush_seconds
        assert wait_until(lambda: worker.counts["applied"] == 25, 10, 0.02)
    finally:
        stop.set()
        thread.join(10)
    assert result["applied"] == 25 and client.llen(state.sink_queue_key()) == 0
    frame, counts = in_sink(sink)
    assert counts["rows"] == 25 and sorted(frame["event_id"]) == sorted(f"e{number}" for number in range(25))


def test_the_run_command_with_sink_writes_the_applied_events(tmp_path, server, client, names, state, params_settings):
    params = write_params_file(tmp_path / "params.yaml", stream={"prefix": "sink:", "block_ms": 50})
    env = {**os.environ, PARAMS_ENV: str(params)}
    publish(client, names, checked([row(number) for number in range(40)]), params_settings.stream.maxlen)
    with open(tmp_path / "run.err", "wb") as err:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "stream", "run", "--consumer", "p1",
                                    "--redis-url", server.url, "--sink", str(tmp_path / "sink")],
                                   cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err)
    try:
        assert wait_until(lambda: state.applied_count() == 40, 30, 0.05), (tmp_path / "run.err").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    assert process.returncode == 0 and json.loads(out)["applied"] == 40
    frame, counts = read_sink(tmp_path / "sink")  # drained at the latest when the processor stopped
    assert counts["rows"] == 40 and client.llen(state.sink_queue_key()) == 0
    assert not (tmp_path / "sink" / CATALOG_SNAPSHOT).exists()  # no product was ever posted: no snapshot


# ---------------------------------------------------------------- the catalog snapshot

NEW_PRODUCT = {"item_id": "LIVE-STAPLER", "title": "Zorblax quantum stapler", "description": "staples 40 sheets",
               "category": "Office > Staplers", "brand": "Zorblax", "price": 12.5, "stock": 3}


def snapshot_rows(sink_path) -> dict[str, dict]:
    return {entry["item_id"]: entry for entry in pq.read_table(sink_path / CATALOG_SNAPSHOT).to_pylist()}


def test_the_processor_s_drains_snapshot_the_catalog_stream(client, names, state, tmp_path, params_settings):
    keys = CatalogKeys("sink:")  # the catalog stream under the processor's prefix
    sink = Sink(tmp_path / "sink", state.sink_queue_key(), flush_events=1000, flush_seconds=0.05, catalog=keys)
    publish_items(client, keys, [NEW_PRODUCT, {"item_id": "P000001", "price": 3.5}], {"P000001"}, 1000)
    publish_items(client, keys, [{"item_id": NEW_PRODUCT["item_id"], "stock": 0}], {"P000001"}, 1000)
    drains, drain = [], sink.drain
    sink.drain = lambda connection: drains.append(1) or drain(connection)  # counts the processor's drains
    worker = StreamProcessor(client, names, state, "c1", batch=5, block_ms=20, claim_idle_ms=30000, sink=sink)
    stop, result = threading.Event(), {}
    thread = threading.Thread(target=lambda: result.update(worker.run(stop)))
    thread.start()
    try:
        publish(client, names, checked([row(number, item=NEW_PRODUCT["item_id"]) for number in range(3)]),
                params_settings.stream.maxlen)
        assert wait_until(lambda: sink.counts["events"] == 3, 10, 0.02)
        assert wait_until(lambda: len(drains) >= 5, 10, 0.02)
    finally:
        stop.set()
        thread.join(10)
    assert result["applied"] == 3
    assert sink.counts["catalog_snapshots"] == 1  # written at the first drain; the catalog unchanged since
    path = sink.path / CATALOG_SNAPSHOT
    assert pq.read_schema(path).names == list(SNAPSHOT_COLUMNS) == [*contract.columns("catalog"), "stock", "removed"]
    rows = snapshot_rows(sink.path)
    assert rows == {  # one row per product, updates merged field by field; a field never sent is null
        NEW_PRODUCT["item_id"]: {**{name: NEW_PRODUCT[name] for name in contract.columns("catalog")},
                                 "stock": 0, "removed": False},
        "P000001": {"item_id": "P000001", "title": None, "description": None, "category": None, "brand": None,
                    "price": 3.5, "stock": None, "removed": False}}

    publish_items(client, keys, [{"item_id": NEW_PRODUCT["item_id"], "removed": True}], {"P000001"}, 1000)
    assert sink.drain(client) == 0 and sink.counts["catalog_snapshots"] == 2  # a drain after a change rewrites
    assert snapshot_rows(sink.path)[NEW_PRODUCT["item_id"]]["removed"] is True
    other = Sink(sink.path, state.sink_queue_key(), flush_events=1000, flush_seconds=3600, catalog=keys)
    written = path.stat().st_mtime_ns
    other.drain(client)  # another processor: the file already holds this version
    assert other.counts["catalog_snapshots"] == 0 and path.stat().st_mtime_ns == written


def test_no_snapshot_before_a_product_is_posted_or_without_a_catalog(client, state, tmp_path):
    keys = CatalogKeys("sink:")
    sink = Sink(tmp_path / "sink", state.sink_queue_key(), flush_events=100, flush_seconds=3600, catalog=keys)
    apply(state, [1])
    assert sink.drain(client) == 1 and not (sink.path / CATALOG_SNAPSHOT).exists()
    publish_items(client, keys, [NEW_PRODUCT], set(), 1000)
    client.hset(keys.hash, "FOREIGN", "not json")  # a state no writer of ours stores: left out, logged
    plain = Sink(tmp_path / "plain", state.sink_queue_key(), flush_events=100, flush_seconds=3600)
    apply(state, [2])
    assert plain.drain(client) == 1 and not (plain.path / CATALOG_SNAPSHOT).exists()  # no catalog keys: no snapshot
    sink.drain(client)
    assert list(snapshot_rows(sink.path)) == [NEW_PRODUCT["item_id"]]


def test_a_catalog_snapshot_that_cannot_be_written_is_counted_and_the_events_still_drain(client, state, tmp_path):
    keys = CatalogKeys("sink:")
    sink = Sink(tmp_path / "sink", state.sink_queue_key(), flush_events=100, flush_seconds=3600, catalog=keys)
    (sink.path / CATALOG_SNAPSHOT).mkdir(parents=True)  # a folder where the file goes: os.replace fails
    publish_items(client, keys, [NEW_PRODUCT], set(), 1000)
    apply(state, range(3))
    assert sink.drain(client) == 3 and sink.counts["catalog_errors"] == 1 and in_sink(sink)[1]["rows"] == 3
    assert not list(sink.path.glob(f".{CATALOG_SNAPSHOT}.*"))  # no temp file left


@pytest.fixture
def catalog_sink(tmp_path, client, base_shop, tiny_settings) -> dict:
    """A sink whose catalog snapshot the processor's sink wrote from a Redis holding: a product posted live
    (NEW_PRODUCT, with events in the sink), a base product repriced, another restocked only (no field of the
    catalog's), one removed after posting, and products whose values validate would refuse."""
    keys = CatalogKeys("shop:")
    catalog = pd.read_csv(base_shop["raw"] / "catalog.csv", dtype=str, keep_default_na=False, encoding="latin-1")
    repriced, restocked = catalog["item_id"].iloc[3], catalog["item_id"].iloc[4]
    known = set(catalog["item_id"])
    publish_items(client, keys, [NEW_PRODUCT, {"item_id": repriced, "price": 1234.5},
                                 {"item_id": restocked, "stock": 9},
                                 {"item_id": "LIVE-GONE", "title": "Discontinued gadget", "price": 5.0},
                                 {"item_id": "LIVE-PRICEY", "title": "Gold stapler", "price": 1e12},
                                 {"item_id": "LIVE-LONG", "title": "Long " * 102, "brand": "null"}], known, 1000)
    publish_items(client, keys, [{"item_id": "LIVE-GONE", "removed": True}], known, 1000)
    client.hset(keys.hash, "LIVE-UNTITLED", json.dumps({"item_id": "LIVE-UNTITLED", "sequence": 9, "price": 1.0}))
    client.incr(keys.version)  # a writer that bypassed the API's check: a new product without a title
    sink = Sink(tmp_path / "sink", "shop:sinkq", flush_events=1000, flush_seconds=3600, catalog=keys)
    assert sink.snapshot_catalog(client)
    at = datetime(2026, 9, 2, 9, 0, tzinfo=timezone.utc)
    users = base_shop["users"]
    rows = [{**row(index, user=users[index % 2], item=item, at=at + timedelta(minutes=index), session=None),
             "event_id": f"live-cat-{index}"}
            for index, item in enumerate([NEW_PRODUCT["item_id"], NEW_PRODUCT["item_id"], "LIVE-GONE", repriced])]
    write_sink(sink.path, rows, load_key(tiny_settings.privacy))
    return {"sink": sink.path, "catalog": catalog, "repriced": repriced, "restocked": restocked,
            "new_events": [entry["event_id"] for entry in rows[:3]]}


def test_ingest_stream_merges_the_catalog_snapshot(tmp_path, base_shop, catalog_sink, tiny_settings):
    raw = tmp_path / "raw"
    counts = ingest("stream", raw, tiny_settings, str(catalog_sink["sink"]))
    base_lines = (base_shop["raw"] / "catalog.csv").read_bytes().splitlines(keepends=True)
    lines = (raw / "catalog.csv").read_bytes().splitlines(keepends=True)
    repriced_line = next(index for index, line in enumerate(base_lines)
                         if line.startswith(catalog_sink["repriced"].encode() + b","))
    # every base row keeps its bytes and place but the repriced one (the restocked one has no catalog field)
    assert [line for index, line in enumerate(lines[:len(base_lines)]) if index != repriced_line] == \
        [line for index, line in enumerate(base_lines) if index != repriced_line]
    catalog = pd.read_csv(raw / "catalog.csv", dtype=str, keep_default_na=False, encoding="latin-1")
    base = catalog_sink["catalog"]
    assert len(catalog) == counts["catalog"] == len(base) + 4
    changed = catalog.iloc[repriced_line - 1]
    assert changed["price"] == "1234.5"
    assert changed.drop("price").equals(base[base["item_id"] == catalog_sink["repriced"]].iloc[0].drop("price"))
    added = catalog.iloc[len(base):].set_index("item_id")
    assert added.index.tolist() == [NEW_PRODUCT["item_id"], "LIVE-GONE", "LIVE-PRICEY", "LIVE-LONG"]  # as posted
    assert added.loc[NEW_PRODUCT["item_id"]].to_dict() == {"title": "Zorblax quantum stapler",
                                                           "description": "staples 40 sheets",
                                                           "category": "Office > Staplers", "brand": "Zorblax",
                                                           "price": "12.5"}
    assert added.loc["LIVE-GONE", "title"] == "Discontinued gadget"  # removed: its past events are still real
    assert added.loc["LIVE-PRICEY", "price"] == ""  # above validate.max_price: the product without a price
    assert len(added.loc["LIVE-LONG", "title"]) == TITLE_MAX and added.loc["LIVE-LONG", "brand"] == ""
    assert "LIVE-UNTITLED" not in set(catalog["item_id"])  # no title: validate would refuse it
    suite = json.loads((REPO / "expectations" / "catalog.json").read_text(encoding="utf-8"))
    assert [entry["kwargs"]["max_value"] for entry in suite["expectations"]
            if entry["type"] == "expect_column_value_lengths_to_be_between"] == [TITLE_MAX]
    again = ingest("stream", tmp_path / "again", tiny_settings, str(catalog_sink["sink"]))
    assert again == counts and (tmp_path / "again" / "catalog.csv").read_bytes() == (raw / "catalog.csv").read_bytes()


def test_events_of_a_product_posted_live_pass_validate(tmp_path, catalog_sink, base_shop, tiny_settings):
    raw, validated = tmp_path / "raw", tmp_path / "validated"
    ingest("stream", raw, tiny_settings, str(catalog_sink["sink"]))
    summary = validate(raw, validated, tiny_settings)
    valid_catalog = pd.read_parquet(validated / "valid" / "catalog.parquet")
    quarantined_catalog = pd.read_parquet(validated / "quarantine" / "catalog.parquet")
    live_ids = {NEW_PRODUCT["item_id"], "LIVE-GONE", "LIVE-PRICEY", "LIVE-LONG"}
    assert live_ids <= set(valid_catalog["item_id"]) and not live_ids & set(quarantined_catalog["item_id"])
    assert catalog_sink["repriced"] in set(valid_catalog["item_id"])
    assert set(quarantined_catalog["item_id"]) <= set(catalog_sink["catalog"]["item_id"])  # only the base's defects
    assert summary["catalog"]["rows_in"] == len(catalog_sink["catalog"]) + 4
    valid_events = pd.read_parquet(validated / "valid" / "events.parquet")
    quarantined_events = pd.read_parquet(validated / "quarantine" / "events.parquet")
    assert set(catalog_sink["new_events"]) <= set(valid_events["event_id"])
    assert not set(catalog_sink["new_events"]) & set(quarantined_events["event_id"])


def test_the_catalog_merge_rewrites_only_the_rows_it_changes(tmp_path):
    """CRLF lines, a quoted line break, Windows-1252 bytes, an exact copy and no final line end: each row the
    snapshot leaves alone keeps its bytes; a changed product's rows change alike (copies stay exact copies)."""
    base = (b"item_id,title,description,category,brand,price\r\n"
            b'A1,Caf\xe9 mug,"two\r\nlines",Home,Acme,4.50\r\n'
            b"B2,Pen,,Office,Inky,1.00\r\n"
            b"B2,Pen,,Office,Inky,1.00\r\n"
            b"C3,Lamp,,Home,Glow,30")
    (tmp_path / "catalog.csv").write_bytes(base)
    snapshot = pd.DataFrame([
        {"item_id": "A1", "title": None, "description": None, "category": None, "brand": None, "price": 4.5,
         "stock": 0, "removed": True},  # the same price, out of stock: no change to the catalog
        {"item_id": "B2", "title": "Pen, blue", "description": "", "category": None, "brand": None, "price": 1.25,
         "stock": None, "removed": False},
        {"item_id": "N9", "title": "Caf\u00e9 \"noir\" cup", "description": "a\rb\x00", "category": None,
         "brand": "  ", "price": -1.0, "stock": 2, "removed": False}], columns=SNAPSHOT_COLUMNS)
    counts = merge_catalog(snapshot, tmp_path, max_price=1000)
    assert counts == {"products": 3, "added": 1, "updated": 1, "skipped": 0, "values_refused": 1}
    assert (tmp_path / "catalog.csv").read_bytes() == (
        b"item_id,title,description,category,brand,price\r\n"
        b'A1,Caf\xe9 mug,"two\r\nlines",Home,Acme,4.50\r\n'
        b'B2,"Pen, blue",,Office,Inky,1.25\r\n'
        b'B2,"Pen, blue",,Office,Inky,1.25\r\n'
        b"C3,Lamp,,Home,Glow,30\r\n"
        + 'N9,"Caf\u00e9 ""noir"" cup","a\nb ",,,\r\n'.encode("utf-8"))


def test_an_unreadable_catalog_snapshot_is_an_error_naming_it(tmp_path, tiny_settings):
    (tmp_path / "sink").mkdir()
    (tmp_path / "sink" / CATALOG_SNAPSHOT).write_bytes(b"not parquet")
    with pytest.raises(DataError, match=f"{tmp_path / 'sink' / CATALOG_SNAPSHOT}: not a readable catalog snapshot"):
        ingest("stream", tmp_path / "raw", tiny_settings, str(tmp_path / "sink"))
    assert not (tmp_path / "raw").exists()  # nothing written before the sink was read


# ---------------------------------------------------------------- ingest --source stream

@pytest.fixture(scope="module")
def base_shop(tmp_path_factory, tiny_settings) -> dict:
    """The tiny sample shop as the stream ingest's base writes it, and some of its users and items."""
    raw = tmp_path_factory.mktemp("base") / "raw"
    ingest("sample", raw, tiny_settings)
    events = pd.read_csv(raw / "events.csv", dtype=str, keep_default_na=False)
    return {"raw": raw, "events": events, "users": events["user_id"].value_counts().index[:2].tolist(),
            "items": events["item_id"].value_counts().index[:3].tolist()}


def write_sink(folder, rows: list[dict], key: bytes) -> None:
    """The rows, checked and pseudonymized, written as the sink writes them (no Redis involved)."""
    sink = Sink(folder, "unused", flush_events=1000, flush_seconds=3600)
    sink.write([sink_record(event) for event in checked(rows, key)])


@pytest.fixture(scope="module")
def live(tmp_path_factory, base_shop, tiny_settings) -> dict:
    """A sink of live events: two shoppers of the base, a new one, an item the catalog lacks, a repeat in a
    second part and an event the base already holds."""
    key = load_key(tiny_settings.privacy)
    known, newcomer = base_shop["users"][0], "new-shopper@example.com"
    items = base_shop["items"]
    at = datetime(2026, 9, 1, 9, 0, tzinfo=timezone.utc)
    rows = [row(index, user=user, item=item, at=at + timedelta(minutes=index), session=None)
            for index, (user, item) in enumerate([(known, items[0]), (known, items[1]), (newcomer, items[2]),
                                                  (newcomer, items[0]), (base_shop["users"][1], items[1])])]
    rows = [{**entry, "event_id": f"live-{index}"} for index, entry in enumerate(rows)]
    unknown_item = {**rows[0], "event_id": "live-unknown", "item_id": "P-NOT-IN-THE-CATALOG"}
    sink = tmp_path_factory.mktemp("live") / "sink"
    write_sink(sink, rows + [unknown_item], key)
    repeat = {**rows[1], "timestamp": (at + timedelta(hours=2)).isoformat()}  # the same id again, another part
    base_event = base_shop["events"].iloc[0].to_dict()
    write_sink(sink, [repeat, {**rows[0], "event_id": base_event["event_id"]}], key)
    return {"sink": sink, "ids": [entry["event_id"] for entry in rows], "unknown": "live-unknown", "key": key,
            "known": known, "newcomer": newcomer, "base_event_id": base_event["event_id"]}


def test_ingest_stream_appends_the_sink_s_events_once_to_the_base_s(tmp_path, base_shop, live, tiny_settings):
    raw = tmp_path / "raw"
    counts = ingest("stream", raw, tiny_settings, str(live["sink"]))
    base_bytes = (base_shop["raw"] / "events.csv").read_bytes()
    written = (raw / "events.csv").read_bytes()
    assert written.startswith(base_bytes)  # the base's rows as the base wrote them
    for table in ("catalog", "queries"):
        assert (raw / f"{table}.csv").read_bytes() == (base_shop["raw"] / f"{table}.csv").read_bytes()
    events = pd.read_csv(raw / "events.csv", dtype=str, keep_default_na=False)
    appended = events.iloc[len(base_shop["events"]):]
    assert appended["event_id"].tolist() == [live["ids"][0], live["unknown"], *live["ids"][1:]]  # by time, then id
    assert counts["events"] == len(events) == len(base_shop["events"]) + len(live["ids"]) + 1
    assert (events["event_id"] == live["base_event_id"]).sum() == 1  # the base's own, not the sink's copy
    assert appended.columns.tolist() == COLUMNS and (appended["session_id"] == "").all()
    assert set(appended["user_id"]) == {pseudonym(live["known"], live["key"]), pseudonym(live["newcomer"], live["key"]),
                                        pseudonym(base_shop["users"][1], live["key"])}


def test_validate_and_clean_keep_the_live_shopper_s_pseudonym(tmp_path, live, tiny_settings):
    raw, validated, cleaned = tmp_path / "raw", tmp_path / "validated", tmp_path / "clean"
    ingest("stream", raw, tiny_settings, str(live["sink"]))
    validate(raw, validated, tiny_settings)
    clean(validated / "valid", cleaned, tiny_settings)
    quarantined = pd.read_parquet(validated / "quarantine" / "events.parquet")
    unknown = quarantined[quarantined["event_id"] == live["unknown"]]
    assert unknown["_reasons"].tolist() == ["expect_column_values_to_be_in_set(item_id)"]  # not in the catalog
    events = pd.read_parquet(cleaned / "events.parquet")
    live_events = events[events["event_id"].isin([*live["ids"], live["unknown"]])]
    assert sorted(live_events["event_id"]) == sorted(live["ids"])  # once each; the unknown item's quarantined
    shopper = pseudonym(live["known"], live["key"])
    # the base's events of the shopper and their live ones under one id: the pseudonym was not hashed again
    assert set(live_events["user_id"]) <= set(events.loc[~events["event_id"].isin(live["ids"]), "user_id"]) | \
        {pseudonym(live["newcomer"], live["key"])}
    assert (events["user_id"] == shopper).sum() > (live_events["user_id"] == shopper).sum()
    assert not events["user_id"].isin([live["known"], live["newcomer"]]).any()


def test_the_ingest_command_reads_the_sink(tmp_path, live, tiny_settings):
    params = write_params_file(tmp_path / "params.yaml", **TINY_PARAMS)
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", "--out", str(tmp_path / "raw"),
                           "--source", "stream", "--path", str(live["sink"]), "--params", str(params)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = ingest("stream", tmp_path / "by-function", tiny_settings, str(live["sink"]))
    assert (tmp_path / "raw" / "events.csv").read_bytes() == (tmp_path / "by-function" / "events.csv").read_bytes()
    assert json.loads(done.stdout) == expected


def test_the_sink_defaults_to_params_and_is_required(tmp_path, live, tiny_settings):
    configured = with_sections(tiny_settings, stream={"sink_path": str(live["sink"])})
    assert ingest("stream", tmp_path / "raw", configured)["events"] == \
        ingest("stream", tmp_path / "given", tiny_settings, str(live["sink"]))["events"]
    with pytest.raises(DataError, match="no sink folder"):
        ingest("stream", tmp_path / "none", tiny_settings)


def test_a_missing_sink_or_a_broken_part_is_an_error_naming_it(tmp_path, tiny_settings):
    with pytest.raises(DataError, match=str(tmp_path / "absent")):
        ingest("stream", tmp_path / "raw", tiny_settings, str(tmp_path / "absent"))
    broken = tmp_path / "sink" / "date=2026-06-10" / "hour=10" / "part-0.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not parquet")
    with pytest.raises(DataError, match=f"{broken}: not a readable Parquet part"):
        ingest("stream", tmp_path / "raw", tiny_settings, str(tmp_path / "sink"))
    assert not (tmp_path / "raw").exists()  # nothing written before the sink was read


def test_an_empty_sink_adds_nothing(tmp_path, base_shop, tiny_settings):
    (tmp_path / "sink").mkdir()
    counts = ingest("stream", tmp_path / "raw", tiny_settings, str(tmp_path / "sink"))
    assert counts["events"] == len(base_shop["events"])
    assert (tmp_path / "raw" / "events.csv").read_bytes() == (base_shop["raw"] / "events.csv").read_bytes()


def test_the_repository_params_run_without_a_sink(params_settings):
    """A processor started with the repository's params (the tests' and benchmarks' too) writes no sink under
    the project: the sink is opt-in (stream.sink_path or --sink)."""
    assert params_settings.stream.sink_path is None and (REPO / "params.yaml").is_file()
