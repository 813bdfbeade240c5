"""Online state the stream processor keeps in Redis: recent histories, windowed item counters, co-occurrences.

Keys (L = `<stream prefix>live:`; user ids are the pipeline's pseudonyms, never raw ids):
  L seen:<event_id>                    "1" with a TTL (`stream.seen_ttl_seconds`, 7 days): the event was applied
  L applied                            how many events were applied (monitoring; a test's exactly-once check)
  L hist:<user>                        sorted set, score = event time (epoch s), member = JSON {e, i, t, ts, s}
                                       (event id, item, type, timestamp, session); the latest `history_size`
                                       kept; expires `history_ttl_seconds` after the user's last event
  L cnt:<window>:<type>:<bucket>       hash item -> events of that type in that bucket of the window
  L co:<item>                          sorted set, member = another item, score = how often events of the two
                                       met in a session; the top `co_neighbors` kept
  L sinkq                              list of the applied events as JSON (the `events` contract's fields), only
                                       when the processor has a sink: the Parquet sink (pipelines/feedback/sink.py)
                                       drains it from the head

A processor's batch of events is applied by one Lua script call: per event it checks the seen marker, writes
the event's effects and sets its marker. Redis runs a script alone, so nobody sees half an event, a
re-delivered event (its processor died before XACK, or a producer published it twice) finds the marker and
changes nothing, and two processors never both apply one event id. The same script appends the applied events
to the sink queue, so the sink gets each applied event once and never a duplicate, without a transaction
spanning Redis and the files. One call a batch, not one a event: a user's kept events are decoded once a
batch and trims, expiries and counts written once a key (processor 48 -> 23 us of CPU an event, Redis 47 ->
27 us, on Office's replay; benchmarks/README.md). A re-delivery
later than the marker's TTL would apply again: pending entries are claimed after seconds
(`stream.claim_idle_ms`), far inside it.

Co-occurrences: an event pairs with the user's kept events of its session (without sessions: within
`clean.session_gap_minutes` either side in time), the `co_items` nearest in time, whether they came before or
after it; of two events the one applied later counts their pair. So the counts do not depend on the order in
which events arrive (several processors, a re-delivery after a crash) as long as a session holds at most
co_items + 1 events; pairing only with earlier events would lose the pair of an event that arrives late.

Counters: each window is cut into `window_buckets` buckets of window / buckets seconds, one hash per
(window, type, bucket). An event costs one HINCRBY per window (O(1), whatever the window's length) and a read
sums `window_buckets` hashes, so a week is as cheap to read as an hour. Per-minute buckets shared by every
window would cost one write but 10,080 reads for a week; a sorted set of events per item grows with the
traffic and costs O(log n) a write. The window slides by one bucket: a count covers between
window - window / buckets and window seconds. Buckets are keyed by the event's own time, so a replay or a
late event lands where it happened (and one older than the window is not counted); each bucket key expires
once no read can reach it.
"""

from __future__ import annotations

import json
import time
from datetime import datetime

import orjson
from redis.exceptions import ResponseError

from pipelines.core import contract

# KEYS: 1 applied counter, 2 sink queue
# ARGV: 1 seen TTL, 2 history size, 3 history TTL, 4 co_items, 5 session gap (s, for events without a session),
#       6 co-neighbors kept, 7 co-occurrence key prefix, 8.. one event each: a JSON array [seen key, history key,
#       history member, event time, item, session ("" = none), sink record ("" = no sink), then (counter bucket
#       key, its expire-at) pairs]
# Returns per event 1 (applied), 0 (applied before) or "error: ..." (a write failed: the event is left unmarked
# and unqueued, so the processor dead-letters it instead of acknowledging an event half applied as done).
# One call applies a whole batch: a user's kept events are read and decoded once a batch, and what is idempotent
# or additive (history writes, trims, expiries, the applied counter, the sink queue) is written once per key at
# the end; each event's marker is set as soon as its own effects are in, and Redis runs the script alone, so
# nobody sees half of it.
APPLY_SCRIPT = """
local seen_ttl, size, history_ttl = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local co_items, gap, neighbors, co_prefix = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local histories, history_order, co_touched, expiries, sink, results, applied = {}, {}, {}, {}, {}, {}, 0

local function kept_events(key)
  local history = histories[key]
  if history == nil then
    local kept = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    history = {events = {}, added = {}}
    for index = 1, #kept, 2 do
      local other = cjson.decode(kept[index])
      history.events[#history.events + 1] = {tonumber(kept[index + 1]), kept[index], other.i, other.s}
    end
    histories[key] = history
    history_order[#history_order + 1] = key
  end
  return history
end

local function before(a, b)  -- ZRANGE's order: score, then member
  if a[1] ~= b[1] then return a[1] < b[1] end
  return a[2] < b[2]
end

local function apply(event)
  if redis.call('EXISTS', event[1]) == 1 then return 0 end
  local history = kept_events(event[2])
  local score, item, session = tonumber(event[4]), event[5], event[6]
  if co_items > 0 then
    local partners = {}
    for _, other in ipairs(history.events) do
      local distance = math.abs(score - other[1])
      local together
      if session ~= '' and other[4] ~= '' then together = other[4] == session else together = distance <= gap end
      if together and other[3] ~= item then partners[#partners + 1] = {distance, other[3]} end
    end
    table.sort(partners, before)  -- nearest first; equal distances by item: the same pairs whatever the order
    for index = 1, math.min(#partners, co_items) do
      local other = partners[index][2]
      redis.call('ZINCRBY', co_prefix .. item, 1, other)
      redis.call('ZINCRBY', co_prefix .. other, 1, item)
      co_touched[co_prefix .. item], co_touched[co_prefix .. other] = true, true
    end
  end
  for index = 8, #event, 2 do
    redis.call('HINCRBY', event[index], item, 1)
    expiries[event[index]] = event[index + 1]
  end
  redis.call('SET', event[1], '1', 'EX', seen_ttl)
  local entry = {score, event[3], item, session}
  history.events[#history.events + 1] = entry
  history.added[#history.added + 1] = entry
  if #history.events > size then  -- the oldest goes, as ZREMRANGEBYRANK will drop it
    local oldest = 1
    for index = 2, #history.events do
      if before(history.events[index], history.events[oldest]) then oldest = index end
    end
    table.remove(history.events, oldest)
  end
  if event[7] ~= '' then sink[#sink + 1] = event[7] end
  applied = applied + 1
  return 1
end

for index = 8, #ARGV do
  local ok, result = pcall(apply, cjson.decode(ARGV[index]))
  if ok then
    results[#results + 1] = result
  else
    results[#results + 1] = 'error: ' .. tostring(type(result) == 'table' and result.err or result)
  end
end
for _, key in ipairs(history_order) do
  local history = histories[key]
  if #history.added > 0 then
    local members = {}
    for _, entry in ipairs(history.added) do
      members[#members + 1] = entry[1]
      members[#members + 1] = entry[2]
    end
    redis.call('ZADD', key, unpack(members))
    redis.call('ZREMRANGEBYRANK', key, 0, -(size + 1))
    redis.call('EXPIRE', key, history_ttl)
  end
end
for key in pairs(co_touched) do redis.call('ZREMRANGEBYRANK', key, 0, -(neighbors + 1)) end
for key, at in pairs(expiries) do redis.call('EXPIREAT', key, at) end
if applied > 0 then redis.call('INCRBY', KEYS[1], applied) end
for start = 1, #sink, 1000 do redis.call('RPUSH', KEYS[2], unpack(sink, start, math.min(start + 999, #sink))) end
return results
"""


EVENT_FIELDS = tuple(contract.columns("events"))


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def sink_record(event: dict) -> str:
    """The event as the sink queue holds it: JSON of the `events` contract's fields in order (session_id null
    when missing)."""
    return orjson.dumps({name: event.get(name) for name in EVENT_FIELDS}).decode()


def epoch_seconds(timestamp: str) -> float:
    """A checked event's timestamp (ISO-8601 with an offset, as check_events writes it) in epoch seconds."""
    return datetime.fromisoformat(timestamp).timestamp()


class LiveState:
    """The online state under `prefix` (`StreamNames.state_prefix`); events are checked and pseudonymized.
    With `sink_queue`, each newly applied event is also queued for the Parquet sink (`sink_queue_key`)."""

    def __init__(self, client, prefix: str, history_size: int, window_seconds: list[int], *, window_buckets: int,
                 seen_ttl_seconds: int, history_ttl_seconds: int, co_items: int, co_neighbors: int,
                 session_gap_seconds: int, sink_queue: bool = False):
        bad = [window for window in window_seconds if window % window_buckets]
        if bad:
            raise ValueError(f"windows {bad} are not a multiple of window_buckets={window_buckets}")
        self.client, self.prefix, self.history_size = client, prefix, history_size
        self.window_seconds, self.window_buckets = sorted(window_seconds), window_buckets
        self.seen_ttl, self.history_ttl = seen_ttl_seconds, history_ttl_seconds
        self.co_items, self.co_neighbors, self.session_gap = co_items, co_neighbors, session_gap_seconds
        self.sink_queue = sink_queue
        self._apply = client.register_script(APPLY_SCRIPT)

    @classmethod
    def from_params(cls, client, prefix: str, params, session_gap_seconds: int,
                    sink_queue: bool = False) -> "LiveState":
        """From params.yaml's `stream:` (StreamParams); the session gap is clean's (`clean.session_gap_minutes`)."""
        return cls(client, prefix, params.history_size, params.windows_seconds, window_buckets=params.window_buckets,
                   seen_ttl_seconds=params.seen_ttl_seconds, history_ttl_seconds=params.history_ttl_seconds,
                   co_items=params.co_items, co_neighbors=params.co_neighbors,
                   session_gap_seconds=session_gap_seconds, sink_queue=sink_queue)

    # ------------------------------------------------------------ keys

    def seen_key(self, event_id: str) -> str:
        return f"{self.prefix}seen:{event_id}"

    def history_key(self, user: str) -> str:
        return f"{self.prefix}hist:{user}"

    def applied_key(self) -> str:
        return f"{self.prefix}applied"

    def co_prefix(self) -> str:
        return f"{self.prefix}co:"

    def sink_queue_key(self) -> str:
        return f"{self.prefix}sinkq"

    def _width(self, window: int) -> int:
        return window // self.window_buckets

    def bucket_key(self, window: int, event_type: str, bucket: int) -> str:
        return f"{self.prefix}cnt:{window}:{event_type}:{bucket}"

    # ------------------------------------------------------------ writing

    def _buckets(self, event_type: str, at: float, now: float) -> list[tuple[str, int]]:
        """(key, expire-at) of the bucket each window counts the event in; none where no read reaches it any more."""
        buckets = []
        for window in self.window_seconds:
            width = self._width(window)
            bucket, current = int(at // width), int(now // width)
            if bucket > current - self.window_buckets:  # still inside the window read now
                expire_at = (bucket + self.window_buckets + 1) * width  # no read reaches the bucket after that
                buckets.append((self.bucket_key(window, event_type, bucket), expire_at))
        return buckets

    def _record(self, event: dict, now: float) -> bytes:
        """The event as the apply script reads it (one ARGV): JSON [seen key, history key, history member, time,
        item, session, sink record, then (counter bucket key, expire-at) pairs]."""
        at = epoch_seconds(event["timestamp"])
        session = event.get("session_id") or ""
        member = orjson.dumps({"e": event["event_id"], "i": event["item_id"], "t": event["event_type"],
                               "ts": event["timestamp"], "s": session}).decode()
        record = [self.seen_key(event["event_id"]), self.history_key(event["user_id"]), member, repr(at),
                  event["item_id"], session, sink_record(event) if self.sink_queue else ""]
        for key, expire_at in self._buckets(event["event_type"], at, now):
            record += (key, expire_at)
        return orjson.dumps(record)

    def apply(self, event: dict) -> bool:
        """Apply one checked, pseudonymized event; False when its event_id was applied before (nothing changes)."""
        result = self.apply_many([event])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def apply_many(self, events: list[dict]) -> list:
        """Apply events in one script call; per event True (applied), False (applied before) or a ResponseError
        for the write that failed (the others still ran). A lost connection raises: nothing may be acknowledged."""
        if not events:
            return []
        now = time.time()
        results = self._apply(keys=[self.applied_key(), self.sink_queue_key()],
                              args=[self.seen_ttl, self.history_size, self.history_ttl, self.co_items, self.session_gap,
                                    self.co_neighbors, self.co_prefix(), *(self._record(event, now) for event in events)])
        return [ResponseError(_text(result)) if isinstance(result, (bytes, str)) else bool(result) for result in results]

    # ------------------------------------------------------------ reading (the service's side)

    def recent_history(self, user: str, limit: int | None = None) -> list[dict]:
        """The user's (pseudonym's) latest events, newest first: item_id, event_type, timestamp."""
        members = self.client.zrevrange(self.history_key(user), 0, (limit or self.history_size) - 1)
        history = []
        for member in members:
            entry = json.loads(_text(member))
            history.append({"item_id": entry["i"], "event_type": entry["t"], "timestamp": entry["ts"]})
        return history

    def item_counts(self, item_ids: list[str], event_type: str, window_seconds: int,
                    now: float | None = None) -> list[int]:
        """Events of `event_type` each item got in the last `window_seconds` (one of the configured windows)."""
        if window_seconds not in self.window_seconds:
            raise ValueError(f"window {window_seconds} s is not one of the counted windows {self.window_seconds}")
        if not item_ids:
            return []
        current = int((time.time() if now is None else now) // self._width(window_seconds))
        pipe = self.client.pipeline(transaction=False)
        for bucket in range(current - self.window_buckets + 1, current + 1):
            pipe.hmget(self.bucket_key(window_seconds, event_type, bucket), item_ids)
        totals = [0] * len(item_ids)
        for counts in pipe.execute():
            for index, count in enumerate(counts):
                totals[index] += int(count or 0)
        return totals

    def item_totals_since(self, event_types: list[str], since: float, now: float | None = None) -> dict[str, dict[str, int]]:
        """Per event type, every item's events counted since `since` (epoch seconds) within the longest window,
        read bucket by bucket (a bucket that began before `since` counts whole): what the service adds to the
        bundle's popularity."""
        window = self.window_seconds[-1]
        width = self._width(window)
        current = int((time.time() if now is None else now) // width)
        first = max(current - self.window_buckets + 1, int(since // width))
        pipe = self.client.pipeline(transaction=False)
        for event_type in event_types:
            for bucket in range(first, current + 1):
                pipe.hgetall(self.bucket_key(window, event_type, bucket))
        answers = iter(pipe.execute())
        totals: dict[str, dict[str, int]] = {}
        for event_type in event_types:
            counts = totals.setdefault(event_type, {})
            for _ in range(first, current + 1):
                for item, count in next(answers).items():
                    counts[_text(item)] = counts.get(_text(item), 0) + int(count)
        return totals

    def co_occurrence(self, item_id: str, k: int) -> list[tuple[str, int]]:
        """The k items seen most often in a session with `item_id`, with their counts, most first."""
        pairs = self.client.zrevrange(self.co_prefix() + item_id, 0, k - 1, withscores=True)
        return [(_text(item), int(count)) for item, count in pairs]

    def applied_count(self) -> int:
        return int(self.client.get(self.applied_key()) or 0)
