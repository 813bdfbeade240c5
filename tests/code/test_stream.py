"""The behaviour stream (issue #18, points 1 and 3) against a real redis-server of its own.

Intake checks events against the `events` contract (naming row and field, never the value) and pseudonymizes
user ids; the processor applies each event once: a duplicate publication, a re-delivery after a crash
(SIGKILL of a real `shopfusion stream run`) and two processors in one group change the state exactly once
per event id, and a malformed entry from another producer ends in the dead-letter stream with its reason.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
import yaml

from pipelines.bench.served import wait_until
from pipelines.core.config import PARAMS_ENV, load_settings
from pipelines.core.privacy import pseudonym
from pipelines.feedback.live_state import LiveState
from pipelines.feedback.stream import (
    REASON_FIELD,
    TIMESTAMP,
    StreamNames,
    StreamProcessor,
    check_events,
    dead_letter,
    ensure_group,
    pseudonymize_events,
    publish,
    read_events_file,
)
from tests.conftest import REPO

pytestmark = pytest.mark.integration

SETTINGS = load_settings(REPO / "params.yaml")
KEY = b"stream-test-key"
HOUR = 3600


@pytest.fixture
def names():
    return StreamNames.from_prefix("test:")


def live_state(client, names, **changes) -> LiveState:
    return LiveState.from_params(client, names.state_prefix, SETTINGS.stream.model_copy(update=changes),
                                 SETTINGS.clean.session_gap_minutes * 60)


def processor(client, names, state, consumer="c1", batch=10, claim_idle_ms=30000) -> StreamProcessor:
    return StreamProcessor(client, names, state, consumer, batch=batch, block_ms=20, claim_idle_ms=claim_idle_ms)


def drain(worker: StreamProcessor) -> None:
    while worker.run_once():
        pass


def iso(moment: datetime) -> str:
    return moment.isoformat()


NOW = datetime.now(timezone.utc).replace(microsecond=0)


def event(number: int, user="alice", item="i1", event_type="view", session="s1", at: datetime | None = None) -> dict:
    """A canonical event; by default half an hour ago (inside every window), later for a higher number."""
    return {"event_id": f"e{number}", "user_id": user, "item_id": item, "event_type": event_type,
            "timestamp": iso(at or NOW - timedelta(minutes=30) + timedelta(milliseconds=number)), "session_id": session}


def published(client, names, rows: list[dict]) -> list[str]:
    events, errors = check_events(rows)
    assert errors == []
    return publish(client, names, pseudonymize_events(events, KEY), maxlen=SETTINGS.stream.maxlen)


def pending(client, names) -> int:
    return client.xpending(names.stream, names.group)["pending"]


# ---------------------------------------------------------------- intake checks

def test_good_events_pass_normalized():
    rows = [{"event_id": " e1 ", "user_id": "alice", "item_id": "i1", "event_type": "view",
             "timestamp": "2026-12-07T11:30:00+01:00", "session_id": "null"},
            {"event_id": "e2", "user_id": "bob", "item_id": "i2", "event_type": "purchase",
             "timestamp": "2026-12-07 10:30"}]
    events, errors = check_events(rows)
    assert errors == []
    assert events[0] == {"event_id": "e1", "user_id": "alice", "item_id": "i1", "event_type": "view",
                         "timestamp": "2026-12-07T10:30:00+00:00", "session_id": None}
    assert events[1]["timestamp"] == "2026-12-07T10:30:00+00:00"  # no offset reads as UTC, as clean reads it


SECRET = "SECRET-4111111111111111"


@pytest.mark.parametrize(("change", "field"), [
    ({"user_id": "  "}, "user_id"),
    ({"user_id": "N/A"}, "user_id"),
    ({"item_id": "NaN"}, "item_id"),
    ({"event_id": None}, "event_id"),
    ({"event_type": SECRET}, "event_type"),
    ({"timestamp": SECRET}, "timestamp"),
    ({"timestamp": "2026-13-07T10:00:00"}, "timestamp"),  # the pattern, but no date
    ({"item_id": SECRET * 6}, "item_id"),  # over 128 characters
    ({"user_id": 12345}, "user_id"),
    ({"email": SECRET}, "email"),  # unknown field
])
def test_a_bad_event_is_refused_naming_row_and_field_not_value(change, field):
    rows = [event(1), {**event(2), **change}]
    events, errors = check_events(rows)
    assert [item["event_id"] for item in events] == ["e1"]
    assert [(error["row"], error["field"]) for error in errors] == [(1, field)]
    assert SECRET not in json.dumps(errors) and "12345" not in json.dumps(errors)


def test_a_row_that_is_not_an_object_is_refused():
    assert check_events([event(1), ["e2"]])[1] == [{"row": 1, "field": None,
                                                    "msg": "not an object with the event's fields"}]


def test_the_timestamp_rule_is_the_validate_stage_s():
    suite = json.loads((REPO / "expectations" / "events.json").read_text(encoding="utf-8"))
    patterns = [item["kwargs"]["regex"] for item in suite["expectations"]
                if item["type"] == "expect_column_values_to_match_regex" and item["kwargs"]["column"] == "timestamp"]
    assert patterns == [TIMESTAMP.pattern]


def test_a_parquet_file_reads_as_rows_of_strings(tmp_path):
    import pandas as pd

    path = tmp_path / "events.parquet"
    pd.DataFrame({"event_id": [1, 2], "user_id": ["alice", None], "item_id": [7, 8], "event_type": ["view", "click"],
                  "timestamp": ["2026-12-07T10:00:00Z"] * 2, "session_id": [None, "s"]}).to_parquet(path)
    events, errors = check_events(read_events_file(path))
    assert [(item["event_id"], item["item_id"], item["session_id"]) for item in events] == [("1", "7", None)]
    assert errors == [{"row": 1, "field": "user_id", "msg": errors[0]["msg"]}]


def test_windows_must_split_into_buckets():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not multiples of window_buckets"):
        type(SETTINGS.stream).model_validate({**SETTINGS.stream.model_dump(), "windows_seconds": [3601]})


def test_user_ids_are_pseudonymized_at_intake():
    events, _ = check_events([event(1)])
    [masked] = pseudonymize_events(events, KEY)
    assert masked["user_id"] == pseudonym("alice", KEY) != "alice"
    assert events[0]["user_id"] == "alice"  # the caller's events are not changed


# ---------------------------------------------------------------- processing

def test_publish_and_process_updates_history_counters_and_co_occurrence(client, names):
    rows = [event(1, item="a"), event(2, item="b", event_type="click"), event(3, item="c"),
            event(4, item="z", session="s2"),  # another session: co-occurs with none of a, b, c
            event(5, item="a", user="bob", at=NOW - timedelta(days=30))]  # older than every window
    published(client, names, rows)
    state = live_state(client, names)
    worker = processor(client, names, state)
    drain(worker)
    alice = pseudonym("alice", KEY)
    assert [(entry["item_id"], entry["event_type"]) for entry in state.recent_history(alice)] == \
        [("z", "view"), ("c", "view"), ("b", "click"), ("a", "view")]
    assert state.recent_history(pseudonym("bob", KEY))[0]["item_id"] == "a"
    assert state.item_counts(["a", "b", "c", "z", "none"], "view", HOUR) == [1, 0, 1, 1, 0]
    assert state.item_counts(["b"], "click", HOUR) == [1]
    assert state.item_counts(["a"], "view", HOUR, now=NOW.timestamp() + 2 * HOUR) == [0]  # slid out of the hour
    assert state.item_counts(["a"], "view", 86400, now=NOW.timestamp() + 2 * HOUR) == [1]
    assert dict(state.co_occurrence("c", 10)) == {"a": 1, "b": 1}
    assert dict(state.co_occurrence("a", 10)) == {"b": 1, "c": 1}
    assert state.co_occurrence("z", 10) == []
    assert state.applied_count() == 5 and worker.counts["applied"] == 5
    assert pending(client, names) == 0
    raw_ids = {b"alice", b"bob"}
    assert not raw_ids & {value for _, fields in client.xrange(names.stream) for value in fields.values()}


def test_co_occurrences_do_not_depend_on_the_order_events_arrive_in(client, names):
    """A late event (a re-delivery after a crash, another processor's batch) pairs with the session's events before
    and after it: forward, backward and shuffled application give the same counts."""
    import random

    session = [event(n, item=item) for n, item in enumerate(["a", "b", "a", "c", "d"])]  # a seen twice
    other = [event(10 + n, item=item, session="s2") for n, item in enumerate(["a", "z"])]
    orders = [session + other, list(reversed(session + other)), random.Random(3).sample(session + other, 7)]
    counts = []
    for number, order in enumerate(orders):
        state = live_state(client, StreamNames.from_prefix(f"order{number}:"))
        assert all(state.apply_many(pseudonymize_events(check_events(order)[0], KEY)))
        counts.append({item: dict(state.co_occurrence(item, 10)) for item in "abcdz"})
    assert counts[0] == counts[1] == counts[2]
    assert counts[0]["a"] == {"b": 2, "c": 2, "d": 2, "z": 1}  # each pair of events of a session once
    assert counts[0]["z"] == {"a": 1}


def test_a_duplicate_publication_is_applied_once(client, names):
    published(client, names, [event(1, item="a"), event(1, item="a"), event(2, item="b")])
    state = live_state(client, names)
    worker = processor(client, names, state)
    drain(worker)
    assert worker.counts == {"applied": 2, "duplicates": 1, "dead_lettered": 0, "trimmed": 0}
    again = pseudonymize_events(check_events([event(2, item="b")])[0], KEY)[0]
    assert state.apply(again) is False and state.apply({**again, "event_id": "e3"}) is True
    assert state.item_counts(["a", "b"], "view", HOUR) == [1, 2]
    assert len(state.recent_history(pseudonym("alice", KEY))) == 3
    assert pending(client, names) == 0


def test_an_entry_applied_but_not_acknowledged_is_not_applied_again(client, names):
    """A processor that died between apply and XACK: its entries are re-delivered to it at restart (own
    pending list) or claimed by another once idle, and change nothing the second time."""
    published(client, names, [event(number, item=f"i{number % 2}") for number in range(6)])
    state = live_state(client, names)
    ensure_group(client, names)
    read = client.xreadgroup(names.group, "c1", {names.stream: ">"}, count=3)[0][1]
    assert all(result is True for result in state.apply_many([{k.decode(): v.decode() for k, v in fields.items()}
                                                               for _, fields in read]))
    client.xreadgroup(names.group, "c2", {names.stream: ">"}, count=3)  # c2 dies before applying anything
    restarted = processor(client, names, state, consumer="c1")
    restarted.run_once()
    assert restarted.counts["duplicates"] == 3 and restarted.counts["applied"] == 0
    time.sleep(0.01)
    claimer = processor(client, names, state, consumer="c3", claim_idle_ms=5)
    drain(claimer)
    assert claimer.counts["applied"] == 3
    assert state.applied_count() == 6 and sum(state.item_counts(["i0", "i1"], "view", HOUR)) == 6
    assert pending(client, names) == 0


def test_two_processors_in_one_group_apply_disjoint_sets(server, client, names):
    """Every event published twice, two processors on their own connections: each event id applied by
    exactly one of them, all of them applied."""
    rows = [event(number, user=f"u{number % 7}", item=f"i{number % 13}") for number in range(400)]
    published(client, names, rows + rows)

    class Recording:
        def __init__(self, state):
            self.state, self.applied = state, []

        def apply_many(self, events):
            results = self.state.apply_many(events)
            self.applied += [item["event_id"] for item, result in zip(events, results) if result is True]
            return results

    clients = [redis.Redis.from_url(server.url) for _ in range(2)]
    recorders = [Recording(live_state(connection, names)) for connection in clients]
    workers = [processor(connection, names, recorder, consumer=f"p{index}", batch=8)
               for index, (connection, recorder) in enumerate(zip(clients, recorders))]
    stop = threading.Event()
    threads = [threading.Thread(target=worker.run, args=(stop,)) for worker in workers]
    for thread in threads:
        thread.start()
    done = wait_until(lambda: sum(w.counts["applied"] + w.counts["duplicates"] for w in workers) == 800, 20, 0.02)
    stop.set()
    for thread in threads:
        thread.join(10)
    for connection in clients:
        connection.close()
    assert done
    first, second = (set(recorder.applied) for recorder in recorders)
    assert first and second, "both processors took part"
    assert not first & second
    assert first | second == {row["event_id"] for row in rows}
    assert len(recorders[0].applied) + len(recorders[1].applied) == 400
    assert live_state(client, names).applied_count() == 400 and pending(client, names) == 0


def test_a_malformed_entry_goes_to_the_dead_letter_stream_with_its_reason(client, names):
    state = live_state(client, names)
    worker = processor(client, names, state)
    good = pseudonymize_events(check_events([event(1)])[0], KEY)[0]
    client.xadd(names.stream, {**good, "event_id": "bad-type", "event_type": "like"})
    client.xadd(names.stream, {k: v for k, v in good.items() if k != "item_id"} | {"event_id": "no-item"})
    client.xadd(names.stream, {**good, "event_id": "raw-user", "user_id": "alice@example.com"})
    client.xadd(names.stream, {**good, "event_id": "wrong-type", "user_id": pseudonym("carol", KEY)})
    client.set(state.history_key(pseudonym("carol", KEY)), "not a sorted set")  # the script fails on it
    publish(client, names, [good], SETTINGS.stream.maxlen)
    drain(worker)
    letters = {fields[b"event_id"].decode(): fields[REASON_FIELD.encode()].decode()
               for _, fields in client.xrange(names.dead_letter)}
    assert letters["bad-type"].startswith("event_type: not one of")
    assert letters["no-item"].startswith("item_id: missing")
    assert letters["raw-user"].startswith("user_id: not a pseudonym")
    assert letters["wrong-type"] == "apply failed: ResponseError"
    everything = [value for stream in (names.stream, names.dead_letter) for _, fields in client.xrange(stream)
                  for value in fields.values()]
    assert b"alice@example.com" not in everything  # the raw id is withheld and its entry deleted
    assert set(letters) == {"bad-type", "no-item", "raw-user", "wrong-type"}
    assert worker.counts["dead_lettered"] == 4 and worker.counts["applied"] == 1
    assert state.applied_count() == 1 and pending(client, names) == 0


def test_dead_letter_keeps_the_entry_id_and_fields(client, names):
    dead_letter(client, names, "1-0", {"event_id": "x"}, "why")
    [(_, fields)] = client.xrange(names.dead_letter)
    assert fields == {b"event_id": b"x", b"_entry": b"1-0", b"_reason": b"why"}


# ---------------------------------------------------------------- the command

def params_file(tmp_path, prefix: str, batch: int) -> dict:
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["stream"].update(prefix=prefix, batch=batch, block_ms=50)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return {**os.environ, PARAMS_ENV: str(path), "SHOPFUSION_PII_KEY": KEY.decode()}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "stream", *args]


def start_processor(env: dict, url: str, folder, name: str) -> subprocess.Popen:
    """`shopfusion stream run` as consumer p1: its counts (JSON) in <name>.out, its log lines in <name>.err."""
    with open(folder / f"{name}.out", "wb") as out, open(folder / f"{name}.err", "wb") as err:
        return subprocess.Popen(command("run", "--consumer", "p1", "--redis-url", url), cwd=REPO, env=env,
                                stdout=out, stderr=err)


def applied_but_pending(client, names, state) -> tuple[int, int]:
    """(entries pending, of them already applied): the latter is the window between apply and XACK."""
    ids = [entry["message_id"] for entry in client.xpending_range(names.stream, names.group, "-", "+", 1000)]
    events = [fields[b"event_id"].decode() for entry_id in ids for _, fields in client.xrange(names.stream, entry_id,
                                                                                                entry_id)]
    return len(ids), sum(client.exists(state.seen_key(event_id)) for event_id in events)


def freeze_mid_batch(process: subprocess.Popen, client, names, state, tries: int = 300) -> tuple[int, int]:
    """SIGSTOP the processor while it holds pending entries, at best some applied and not yet acknowledged
    (a kill there must not apply them twice); returns what applied_but_pending saw."""
    seen = (0, 0)
    for attempt in range(tries):
        process.send_signal(signal.SIGSTOP)
        seen = applied_but_pending(client, names, state)
        if seen[1] or (seen[0] and attempt == tries - 1):
            return seen
        process.send_signal(signal.SIGCONT)
        time.sleep(0.002)
    return seen


def test_a_processor_killed_mid_stream_resumes_and_applies_every_event_once(tmp_path, server, client, names):
    env = params_file(tmp_path, "test:", batch=5)
    total, users = 3000, 100  # 30 events a user: within history_size
    published(client, names, [event(number, user=f"u{number % users}", item=f"i{number % 20}")
                              for number in range(total)])
    state = live_state(client, names)
    first = start_processor(env, server.url, tmp_path, "first")
    started = wait_until(lambda: state.applied_count() >= 100, 30, 0.01)
    freeze_mid_batch(first, client, names, state)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    time.sleep(0.05)  # commands it had sent are done: what is pending now is what a restart gets
    pending_at_kill, applied_unacked = applied_but_pending(client, names, state)
    print(f"killed with {pending_at_kill} entries pending, {applied_unacked} of them applied")
    assert started and pending_at_kill and state.applied_count() < total, (tmp_path / "first.err").read_text()
    second = start_processor(env, server.url, tmp_path, "second")
    finished = wait_until(lambda: pending(client, names) == 0 and state.applied_count() >= total, 30, 0.05)
    time.sleep(0.2)  # anything applied twice would show by now
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0 and finished, (tmp_path / "second.err").read_text()
    assert state.applied_count() == total
    # the entries applied before the kill were re-delivered and recognized, the others applied once
    assert json.loads((tmp_path / "second.out").read_text())["duplicates"] == applied_unacked
    assert sum(state.item_counts([f"i{item}" for item in range(20)], "view", HOUR)) == total
    assert all(len(state.recent_history(pseudonym(f"u{user}", KEY))) == total // users for user in range(users))
    pipe = client.pipeline()
    for number in range(total):
        pipe.exists(state.seen_key(f"e{number}"))
    assert all(pipe.execute())


def test_publish_command_checks_pseudonymizes_and_names_bad_rows(tmp_path, server, client):
    env = params_file(tmp_path, "cli:", batch=5)
    path = tmp_path / "events.csv"
    path.write_text("event_id,user_id,item_id,event_type,timestamp,session_id\n"
                    "e1,alice,i1,view,2026-12-07T10:00:00Z,s1\n"
                    f"e2,bob,i2,{SECRET},2026-12-07T10:01:00Z,s1\n"
                    "e3,carol,i3,click,2026-12-07T10:02:00Z,\n", encoding="utf-8")
    done = subprocess.run(command("publish", "--path", str(path), "--rate", "1000", "--redis-url", server.url),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"{path}: row 1: field event_type: not one of" in done.stderr and SECRET not in done.stderr
    assert json.loads(done.stdout)["published"] == 2
    entries = client.xrange(StreamNames.from_prefix("cli:").stream)
    assert [fields[b"event_id"] for _, fields in entries] == [b"e1", b"e3"]
    assert [fields[b"user_id"].decode() for _, fields in entries] == [pseudonym("alice", KEY), pseudonym("carol", KEY)]
    assert b"session_id" not in entries[1][1]  # a missing optional field is left out, not sent as ""
