"""The feedback log: writes are whole lines, and no damaged line or stale offset stops its readers."""

from __future__ import annotations

import os

import numpy as np
import orjson

from pipelines.feedback import log as feedback_log
from pipelines.feedback.log import EVENTS, SERVED, AppendLog, FeedbackLog, read_rows, served_lists
from tests.code.test_online_bandit import Clock, make_bandit, serve_and_click


def line(row: dict) -> bytes:
    return orjson.dumps(row) + b"\n"


def collect():
    seen = []
    return seen, lambda path, offset, reason: seen.append((path.name, offset, reason))


def test_torn_and_garbage_lines_are_skipped_with_their_byte_offsets(tmp_path):
    path = tmp_path / EVENTS
    first, torn, glued, garbage, last = (line({"n": 1}), b'{"n": 2, "item', line({"n": 3}), b"\x00\xff garbage\n",
                                         line({"n": 4}))
    path.write_bytes(first + torn + glued + garbage + b"[1, 2]\n" + last)
    seen, hook = collect()
    rows, offset = read_rows(path, 0, hook)
    # the torn row is lost; the whole row written after it on the same line is kept
    assert [row["n"] for row in rows] == [1, 3, 4]
    assert offset == path.stat().st_size
    garbage_at = len(first + torn + glued)
    assert [(name, at) for name, at, _ in seen] == [(EVENTS, len(first)), (EVENTS, garbage_at),
                                                    (EVENTS, garbage_at + len(garbage))]
    assert "kept" in seen[0][2] and "kept" not in seen[1][2]


def test_a_line_still_being_written_waits_for_the_next_read(tmp_path):
    path = tmp_path / SERVED
    path.write_bytes(line({"n": 1}) + b'{"n": 2')
    rows, offset = read_rows(path)
    assert rows == [{"n": 1}] and offset == len(line({"n": 1}))
    with open(path, "ab") as handle:
        handle.write(b"}\n")
    assert read_rows(path, offset) == ([{"n": 2}], path.stat().st_size)


def test_an_offset_past_the_end_of_a_truncated_file_resumes_at_its_end(tmp_path):
    path = tmp_path / SERVED
    path.write_bytes(line({"n": 1}) + line({"n": 2}))
    seen, hook = collect()
    rows, offset = read_rows(path, 10_000, hook)
    assert rows == [] and offset == path.stat().st_size and "past the end" in seen[0][2]
    with open(path, "ab") as handle:
        handle.write(line({"n": 3}))
    assert read_rows(path, offset)[0] == [{"n": 3}]


def test_an_offset_inside_a_line_resumes_at_the_next_line(tmp_path):
    path = tmp_path / SERVED
    path.write_bytes(line({"n": 1}) + line({"n": 22}) + line({"n": 3}))
    seen, hook = collect()
    rows, offset = read_rows(path, len(line({"n": 1})) + 3, hook)
    assert rows == [{"n": 3}] and offset == path.stat().st_size and "inside a line" in seen[0][2]
    # an offset at a line start is read as before, with nothing reported
    seen.clear()
    assert read_rows(path, len(line({"n": 1})), hook)[0] == [{"n": 22}, {"n": 3}] and not seen


def test_short_writes_are_completed(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(feedback_log.os, "write", lambda fd, data: real_write(fd, bytes(data[:7])))
    log = AppendLog(tmp_path / EVENTS, durable=True)
    for number in range(5):
        log.append({"request_id": f"r{number}", "item_id": "x" * 40})
    log.close()
    rows, _ = read_rows(tmp_path / EVENTS)
    assert [row["request_id"] for row in rows] == [f"r{number}" for number in range(5)]


def test_learning_and_monitoring_go_on_past_a_damaged_line(tmp_path):
    clock, rng = Clock(), np.random.default_rng(0)
    bandit, log = make_bandit(tmp_path, clock), FeedbackLog(tmp_path / "log")
    skipped = []
    bandit.on_skipped = skipped.append
    serve_and_click(bandit, log, clock, 3, rng)
    with open(tmp_path / "log" / SERVED, "ab") as handle:
        handle.write(b'{"request_id": "torn", "ta\n')
    serve_and_click(bandit, log, clock, 3, rng)
    clock.now += 60
    assert bandit.poll() == 6
    assert bandit.skipped_lines[SERVED] == 1 and skipped == [SERVED]
    bandit.save()
    assert len(served_lists(tmp_path / "log")) == 6


def test_an_unwritable_feedback_folder_is_one_clear_error(tmp_path):
    import pytest

    from pipelines.core.errors import DataError

    folder = tmp_path / "feedback"
    folder.write_text("a file where the folder should be")  # unwritable even for root, unlike a chmod
    with pytest.raises(DataError, match=f"{folder}: feedback folder not writable"):
        FeedbackLog(folder)
