"""The real-time behaviour stream (issue #18): intake checks, publishing to a Redis Stream, the processor.

Intake (POST /events, /feedback, `shopfusion stream publish`) checks every event against the contract of
the canonical `events` table (`check_events`: the validate stage's rules), pseudonymizes its user id with
the pipeline's key (`pseudonymize_events`) and XADDs it (`publish`). A refused event is answered, never
published. The processor (`StreamProcessor`, `shopfusion stream run`, several at once in one consumer group)
reads the stream, checks each entry again (a producer may write to Redis directly), applies it to the online
state (pipelines/feedback/live_state.py) and acknowledges it after. An entry that fails the contract goes
to the dead-letter stream with its reason and is acknowledged: nothing is dropped silently.

Delivery is at-least-once: an entry is acknowledged only after it was applied, so a processor killed at any
point leaves it pending; the same consumer resumes from its own pending entries at start, and any processor
claims entries left idle by another (XAUTOCLAIM). Effects are idempotent by event_id (LiveState.apply), so a
re-delivery or a duplicate publication changes nothing.

With a sink (pipelines/feedback/sink.py, `stream.sink_path`), the processor also drains the applied events
into hourly Parquet partitions: when `stream.sink_flush_events` are queued or `stream.sink_flush_seconds` passed
since its last drain, and once more when it stops. Each drain also rewrites the sink's catalog snapshot when
the catalog stream (POST /items) changed.

Keys (P = `stream.prefix`, default "shopfusion:"): P events (the stream, trimmed to about `stream.maxlen`
entries), P events:dead (dead letters, never trimmed), consumer group "live-state", P live:* (the state).
"""

from __future__ import annotations

import csv
import math
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from pipelines.core import contract
from pipelines.core.errors import DataError
from pipelines.core.logs import get_logger
from pipelines.core.privacy import PSEUDONYM, pseudonym
from pipelines.core.rawio import MISSING_MARKERS

log = get_logger(__name__)

EVENT_FIELDS = tuple(contract.columns("events"))
KINDS = {column.name: column.kind for column in contract.CONTRACT["events"]}
REQUIRED = frozenset(contract.required_columns("events"))
MAX_ID_CHARS = 128  # as the API's identifiers (pipelines/serving/schemas.py)
MAX_NAME_CHARS = 64  # an unknown field's name is cut to this in an error
# The validate stage's timestamp rule (expectations/events.json, a test keeps them equal), then a real date
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?$")
# Dead letters carry the entry's fields plus these (the leading underscore keeps them apart from event fields)
REASON_FIELD, ENTRY_FIELD = "_reason", "_entry"
# A producer that skipped pseudonymization put a raw user id in Redis: the dead letter withholds it and the
# entry is deleted from the stream, so the raw id does not outlive the processor's look at it.
RAW_USER_REASON = "user_id: not a pseudonym (producers must pseudonymize user ids before publishing)"
WITHHELD = "[withheld: raw id]"
GROUP = "live-state"
STATS_SECONDS = 60.0  # how often a running processor logs its counts


# ---------------------------------------------------------------- checking

def _missing(value) -> bool:
    """validate's rule (rawio.MISSING_MARKERS): None, NaN, empty, blank or a marker such as null or N/A."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return True
    return isinstance(value, str) and (not value.strip() or value.strip().casefold() in MISSING_MARKERS)


def _utc_timestamp(text: str) -> str | None:
    """The ISO-8601 timestamp as a UTC ISO string (no offset means UTC, as clean reads it); None if not one."""
    if not TIMESTAMP.match(text):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:  # matches the pattern but is no date (month 13, hour 25)
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat()


def _checked_value(name: str, text: str) -> tuple[str | None, str | None]:
    """(normalized value, None) or (None, why): the message never holds the value."""
    kind = KINDS[name]
    if kind == "timestamp":
        stamp = _utc_timestamp(text)
        return (stamp, None) if stamp else (None, "not an ISO-8601 timestamp")
    if kind == "enum":
        return (text, None) if text in contract.EVENT_TYPES else (None, "not one of " + ", ".join(contract.EVENT_TYPES))
    if len(text) > MAX_ID_CHARS:
        return None, f"longer than {MAX_ID_CHARS} characters"
    return text, None


def _check_event(row) -> tuple[dict | None, list[tuple[str | None, str]]]:
    if not isinstance(row, dict):
        return None, [(None, "not an object with the event's fields")]
    problems = [(str(name)[:MAX_NAME_CHARS], "unknown field") for name in row if name not in KINDS]
    event = {}
    for name in EVENT_FIELDS:
        value = row.get(name)
        if _missing(value):
            if name in REQUIRED:
                problems.append((name, "missing (empty, blank or a missing marker such as null, NaN or N/A)"))
            event[name] = None
            continue
        if not isinstance(value, str):
            problems.append((name, "not a string"))
            continue
        event[name], problem = _checked_value(name, value.strip())
        if problem:
            problems.append((name, problem))
    return (None if problems else event), problems


def check_events(rows: list) -> tuple[list[dict], list[dict]]:
    """The rows that keep the `events` contract, normalized (ids stripped, timestamp in UTC, session_id None when
    missing), and one error {"row": index, "field": name, "msg": why} per problem (field None when the row is
    not an object). No message echoes a value: a refused value may be anything, PII included."""
    events, errors = [], []
    for index, row in enumerate(rows):
        event, problems = _check_event(row)
        if event is not None:
            events.append(event)
        errors += [{"row": index, "field": field, "msg": msg} for field, msg in problems]
    return events, errors


def pseudonymize_events(events: list[dict], key: bytes) -> list[dict]:
    """Copies of the events with user_id replaced by its keyed pseudonym: no raw id reaches Redis."""
    return [{**event, "user_id": pseudonym(event["user_id"], key)} for event in events]


def read_events_file(path: Path) -> list[dict]:
    """A CSV (read as text, as validate reads raw files) or Parquet file of events as rows of strings; a
    missing or unreadable file is a DataError naming it."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
            # ids stored as numbers are ids all the same; missing cells stay None for the check to name
            return [{name: (None if _missing(value) else str(value)) for name, value in row.items()}
                    for row in frame.astype(object).where(frame.notna(), None).to_dict("records")]
        with path.open(encoding="utf-8", newline="") as handle:
            return list(csv.DictReader(handle))
    except (UnicodeDecodeError, csv.Error, ValueError, OSError) as error:  # pyarrow's errors are ValueErrors
        raise DataError(f"{path}: not a readable CSV or Parquet file of events ({type(error).__name__})") from None


# ---------------------------------------------------------------- Redis

@dataclass(frozen=True)
class StreamNames:
    """The Redis names of one deployment, all under one prefix."""

    stream: str
    dead_letter: str
    group: str
    state_prefix: str  # LiveState's keys

    @classmethod
    def from_prefix(cls, prefix: str = "shopfusion:") -> "StreamNames":
        return cls(stream=f"{prefix}events", dead_letter=f"{prefix}events:dead", group=GROUP,
                   state_prefix=f"{prefix}live:")


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


# KEYS: 1 the stream; ARGV: 1 maxlen, then each event's fields in EVENT_FIELDS order ("" = missing: a checked
# event's values are never empty). One XADD an event, fields named as the contract names them; the entry ids.
PUBLISH_SCRIPT = f"""
local names, ids = {{{", ".join(f"'{name}'" for name in EVENT_FIELDS)}}}, {{}}
for start = 2, #ARGV, #names do
  local fields = {{}}
  for offset, name in ipairs(names) do
    local value = ARGV[start + offset - 1]
    if value ~= '' then fields[#fields + 1] = name; fields[#fields + 1] = value end
  end
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
end
return ids
"""


def publish(client, names: StreamNames, events: list[dict], maxlen: int) -> list[str]:
    """XADD checked, pseudonymized events (missing optional fields left out) in one script call: an entry of the
    event's fields each; their entry ids. The stream is trimmed to about `maxlen` entries (MAXLEN ~: whole nodes,
    cheap). One call, not a pipeline of XADDs: a third of the arguments to pack and send (POST /events' share
    of a worker's CPU)."""
    if not events:
        return []
    values = [maxlen]
    for event in events:
        values += [event.get(name) or "" for name in EVENT_FIELDS]
    return [_text(entry_id) for entry_id in client.register_script(PUBLISH_SCRIPT)(keys=[names.stream], args=values)]


def replay(client, names: StreamNames, events: list[dict], maxlen: int, chunk: int,
           rate: float | None = None) -> int:
    """Publish in chunks, at about `rate` events a second when given (a demo or test producer); the count."""
    started, sent = time.monotonic(), 0
    if rate:  # about ten chunks a second, not bursts of `chunk`
        chunk = max(1, min(chunk, int(rate // 10)))
    for start in range(0, len(events), chunk):
        part = events[start:start + chunk]
        if rate:  # wait until this chunk is due
            time.sleep(max(0.0, started + sent / rate - time.monotonic()))
        publish(client, names, part, maxlen)
        sent += len(part)
    return sent


def dead_letter(client, names: StreamNames, entry_id: str, fields: dict, reason: str) -> None:
    """Keep a refused entry in the dead-letter stream: its fields, the original entry id and why. `client` may
    be a pipeline (the processor adds the XACK to the same transaction)."""
    client.xadd(names.dead_letter, {**fields, ENTRY_FIELD: entry_id, REASON_FIELD: reason})


def ensure_group(client, names: StreamNames) -> None:
    """The consumer group, reading from the stream's first entry (and the stream, when none was published yet)."""
    try:
        client.xgroup_create(names.stream, names.group, id="0", mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


def _event_or_reason(fields: dict) -> tuple[dict | None, str | None]:
    """(event, None) for an entry the processor may apply, else (None, the dead-letter reason)."""
    events, errors = check_events([fields])
    if errors:
        return None, "; ".join(f"{error['field']}: {error['msg']}" for error in errors)
    if not PSEUDONYM.fullmatch(events[0]["user_id"]):
        return None, RAW_USER_REASON
    return events[0], None


class StreamProcessor:
    """One consumer of the group: reads entries, applies them through `state` (LiveState), acknowledges them."""

    def __init__(self, client, names: StreamNames, state, consumer: str, batch: int, block_ms: int,
                 claim_idle_ms: int, sink=None, metrics=None):
        self.client, self.names, self.state, self.consumer = client, names, state, consumer
        self.metrics = metrics  # ProcessorMetrics (pipelines/feedback/stream_metrics.py) or None
        self.sink = sink  # a Sink (pipelines/feedback/sink.py) of the queue `state` fills, or None: no sink
        self.batch, self.block_ms, self.claim_idle_ms = batch, block_ms, claim_idle_ms
        self.counts = {"applied": 0, "duplicates": 0, "dead_lettered": 0, "trimmed": 0}
        self._claim_cursor = "0-0"
        self._own_pending = True  # first the entries this consumer read and never acknowledged (it was killed)
        self._group_ready = False  # made by the first run_once: a processor started before Redis waits for it

    # ------------------------------------------------------------ reading

    def _decoded(self, entries) -> list[tuple[str, dict | None]]:
        return [(_text(entry_id), None if fields is None else {_text(k): _text(v) for k, v in fields.items()})
                for entry_id, fields in entries]

    def _read(self, start: str, block: int | None) -> list:
        answer = self.client.xreadgroup(self.names.group, self.consumer, {self.names.stream: start},
                                        count=self.batch, block=block)
        return answer[0][1] if answer else []

    def _claim_idle(self) -> list:
        """Entries another consumer read and left unacknowledged for claim_idle_ms (it died): now ours."""
        answer = self.client.xautoclaim(self.names.stream, self.names.group, self.consumer, self.claim_idle_ms,
                                        start_id=self._claim_cursor, count=self.batch)
        self._claim_cursor = _text(answer[0])
        if len(answer) > 2 and answer[2]:  # pending but trimmed from the stream before anyone applied them
            self._lost(len(answer[2]))
        return answer[1]

    def _next_entries(self) -> list[tuple[str, dict | None]]:
        if self._own_pending:
            entries = self._read("0", None)
            if entries:
                return self._decoded(entries)
            self._own_pending = False
        entries = self._claim_idle()
        return self._decoded(entries or self._read(">", self.block_ms))

    def _lost(self, count: int) -> None:
        self.counts["trimmed"] += count
        if self.metrics is not None:
            self.metrics.entries["trimmed"].inc(count)
        log.warning("stream entries trimmed before they were applied (raise stream.maxlen)",
                    extra={"entries": count, "consumer": self.consumer})

    # ------------------------------------------------------------ handling

    def _dead_letter_and_ack(self, entry_id: str, fields: dict, reason: str) -> None:
        pipe = self.client.pipeline(transaction=True)  # all or nothing: a crash between re-delivers the entry
        if reason == RAW_USER_REASON:
            dead_letter(pipe, self.names, entry_id, {**fields, "user_id": WITHHELD}, reason)
            pipe.xdel(self.names.stream, entry_id)
        else:
            dead_letter(pipe, self.names, entry_id, fields, reason)
        pipe.xack(self.names.stream, self.names.group, entry_id)
        pipe.execute()
        self.counts["dead_lettered"] += 1
        if self.metrics is not None:
            self.metrics.handled("dead_letter", [entry_id])
        log.warning("stream entry dead-lettered", extra={"entry": entry_id, "reason": reason})

    def _handle(self, entries: list[tuple[str, dict | None]]) -> None:
        acked, good, applied, duplicates = [], [], [], []
        for entry_id, fields in entries:
            if fields is None:  # read from our pending list after the stream trimmed it
                self._lost(1)
                acked.append(entry_id)
                continue
            event, reason = _event_or_reason(fields)
            if reason:
                self._dead_letter_and_ack(entry_id, fields, reason)
            else:
                good.append((entry_id, fields, event))
        results = self.state.apply_many([event for _, _, event in good]) if good else []
        for (entry_id, fields, _), result in zip(good, results):
            if isinstance(result, Exception):  # the script failed for this event (a key of the wrong type)
                self._dead_letter_and_ack(entry_id, fields, f"apply failed: {type(result).__name__}")
                continue
            self.counts["applied" if result else "duplicates"] += 1
            acked.append(entry_id)
            (applied if result else duplicates).append(entry_id)
        if acked:
            self.client.xack(self.names.stream, self.names.group, *acked)
        if self.metrics is not None:  # after the acknowledgement: what is counted is done
            self.metrics.handled("applied", applied)
            self.metrics.handled("duplicate", duplicates)

    def run_once(self) -> int:
        """Handle one batch (own pending entries, else idle ones claimed, else new ones, waiting up to block_ms);
        the number of entries handled."""
        if not self._group_ready:
            ensure_group(self.client, self.names)
            self._group_ready = True
        entries = self._next_entries()
        self._handle(entries)
        return len(entries)

    def run(self, stop_event: threading.Event) -> dict:
        """Until stop_event is set; Redis unreachable is waited out (nothing is acknowledged meanwhile)."""
        log.info("stream processor started", extra={"consumer": self.consumer, "stream": self.names.stream})
        logged = time.monotonic()
        while not stop_event.is_set():
            try:
                self.run_once()
                self._drain_sink_if_due()
                if self.metrics is not None:
                    self.metrics.refresh_lag(self.client, self.names)
            except (RedisConnectionError, RedisTimeoutError) as error:  # BusyLoadingError too (a restarting Redis)
                self._wait_for_redis(error, stop_event)
            except ResponseError as error:
                if "NOGROUP" not in str(error):
                    raise
                ensure_group(self.client, self.names)  # Redis restarted empty: the group is made again
            if time.monotonic() - logged >= STATS_SECONDS:
                log.info("stream processor counts", extra={"consumer": self.consumer, **self.counts})
                logged = time.monotonic()
        self._drain_sink_at_stop()
        log.info("stream processor stopped", extra={"consumer": self.consumer, **self.counts})
        return dict(self.counts)

    def _drain_sink_if_due(self) -> None:
        if self.sink is not None and self.sink.due(self.client):
            self.sink.drain(self.client)

    def _drain_sink_at_stop(self) -> None:
        """What is queued goes to the files before the processor exits; with Redis unreachable it stays queued
        for the next drain, of any processor."""
        if self.sink is None:
            return
        try:
            self.sink.drain_all(self.client)
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("stream sink not drained at stop: redis unreachable",
                        extra={"consumer": self.consumer, "error": type(error).__name__})

    def _wait_for_redis(self, error: Exception, stop_event: threading.Event) -> None:
        log.warning("redis unreachable; retrying", extra={"consumer": self.consumer, "error": type(error).__name__})
        stop_event.wait(1.0)
