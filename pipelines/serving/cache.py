"""Cache of fused candidate lists for hot requests: an in-process LRU in front of a store every worker shares.

What is cached is the expensive part (retrieval, scoring, fusion); the bandit ordering, explanations
and request ids are made per request, so a cached answer is still a fresh, logged decision. Keys carry
the model version, so a new bundle never reads an old entry.

Tiers: each worker's LRU (no copy, explanations of a hot list kept), then the shared store: Redis when
SHOPFUSION_REDIS_URL is set (every worker and replica), else a SQLite file in the serving state folder (the
workers of one host: with a cache per worker, a hot query was computed once in each worker). A shared store
that is slow or gone is a miss, never a failed request.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from pipelines.core.atomic import file_lock
from pipelines.core.logs import get_logger
from pipelines.serving.circuit import Circuit
from pipelines.serving.engine import Ranked
from pipelines.serving.params import CacheParams

log = get_logger(__name__)

SHARED_FILE = "cache.sqlite"
TRIM_EVERY = 256  # shared-store writes between removals of expired and surplus entries
SETUP_WAIT_S = 10.0
WRITE_WAIT_MS = 50
MAGIC = b"SFR1"  # an encoded fused list, format 1
COMPONENT = "component:"


def encode_ranked(ranked: Ranked) -> bytes:
    """MAGIC, the header's length (4 bytes, little-endian), the header (JSON: each array's name, dtype and
    shape, and the list's other fields), then the arrays' raw bytes in that order (a Home Depot list: 23 KB, read
    back in ~25 us; as JSON 57 KB and ~500 us)."""
    arrays = {"positions": ranked.positions, "scores": ranked.scores,
              **{COMPONENT + name: values for name, values in ranked.component_scores.items()}}
    if ranked.stack_features is not None:
        arrays["stack_features"] = ranked.stack_features
    arrays = {name: np.ascontiguousarray(values) for name, values in arrays.items()}
    header = orjson.dumps({"arrays": [[name, values.dtype.str, values.shape] for name, values in arrays.items()],
                           "contributions": ranked.contributions, "fallback": ranked.fallback,
                           "notes": ranked.notes})
    return b"".join([MAGIC, len(header).to_bytes(4, "little"), header, *(v.tobytes() for v in arrays.values())])


def decode_ranked(blob: bytes) -> Ranked:
    """The list encode_ranked wrote; ValueError when the blob is not one."""
    if not blob.startswith(MAGIC):
        raise ValueError("not an encoded list")
    start = len(MAGIC) + 4
    end = start + int.from_bytes(blob[len(MAGIC):start], "little")
    header = orjson.loads(blob[start:end])
    arrays = {}
    for name, dtype, shape in header["arrays"]:
        values = np.frombuffer(blob, dtype=np.dtype(dtype), count=math.prod(shape), offset=end).reshape(shape)
        arrays[name] = values
        end += values.nbytes
    if end != len(blob):
        raise ValueError(f"an encoded list of {len(blob)} bytes, {end} expected")
    return Ranked(arrays["positions"], arrays["scores"],
                  {name[len(COMPONENT):]: values for name, values in arrays.items() if name.startswith(COMPONENT)},
                  stack_features=arrays.get("stack_features"), contributions=header["contributions"],
                  fallback=header["fallback"], notes=header["notes"])


class LRUCache:
    def __init__(self, size: int, ttl_seconds: float, clock=time.monotonic):
        self.size, self.ttl, self.clock = size, ttl_seconds, clock
        self._entries: OrderedDict[str, tuple[float, Ranked]] = OrderedDict()
        self._lock = threading.Lock()
        self.backend = "lru"

    def get(self, key: str) -> Ranked | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            stored_at, value = entry
            if self.clock() - stored_at > self.ttl:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return value

    def set(self, key: str, value: Ranked) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries[key] = (self.clock(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def close(self) -> None:
        """Nothing to release (every cache has close)."""


@dataclass
class SharedRedis:
    """The worker's one client of the shared Redis (cache tier, live state, stream intake) and its one circuit:
    one outage is one warning line and one background probe, whatever uses Redis."""

    client: object
    circuit: Circuit

    def close(self) -> None:
        self.circuit.close()
        self.client.close()


def connect_redis(url: str, timeout_seconds: float, retry_seconds: float, name: str = "redis",
                  check_at_start: bool = True) -> SharedRedis:
    """A client for the request path, one try with a short timeout (redis-py's default is 10 retries with
    backoff: seconds of stall per request when Redis hangs), behind a Circuit checked once at start (another
    client of the same server, `check_at_start` False, finds an outage on first use: one warning line at start)."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
                                  retry=Retry(NoBackoff(), 0))
    circuit = Circuit(name, client.ping, retry_seconds)
    if check_at_start:
        circuit.check_at_start("redis unreachable at start: serving from the local cache tier and the bundle alone, "
                               "retrying in the background")
    return SharedRedis(client, circuit)


class RedisCache:
    """Entries in a Redis server (shared by every worker and replica), expiring after ttl. Behind the shared
    circuit: with Redis slow or gone every call is a miss at once."""

    def __init__(self, redis: SharedRedis, ttl_seconds: float, prefix: str):
        self.client, self.circuit = redis.client, redis.circuit
        self.ttl, self.prefix = ttl_seconds, prefix
        self.backend = "redis"

    @property
    def available(self) -> bool:
        return self.circuit.available

    @property
    def skipped(self) -> int:
        return self.circuit.skipped

    def get(self, key: str) -> Ranked | None:
        value = self.circuit.call(lambda: self.client.get(self.prefix + key), None)
        try:
            return None if value is None else decode_ranked(value)
        except ValueError:  # an entry it garbled: a miss
            return None

    def set(self, key: str, value: Ranked) -> None:
        self.circuit.call(lambda: self.client.set(self.prefix + key, encode_ranked(value), ex=max(1, int(self.ttl))),
                          None)

    def close(self) -> None:
        """The shared client is closed by its owner (the app)."""


def _damaged(exc: sqlite3.Error) -> bool:
    """A file that is no database or is malformed (OperationalError, such as a busy lock, is not damage)."""
    return isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)


class SQLiteCache:
    """Entries in a SQLite file shared by the workers of one host (WAL journal: readers never wait for the
    writer; no fsync: an entry lost in a crash is only a miss). Oldest entries go first beyond `size`."""

    def __init__(self, path: Path, size: int, ttl_seconds: float, clock=time.time):
        self.path, self.size, self.ttl, self.clock = Path(path), size, ttl_seconds, clock
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # one connection per worker, used by its threads in turn
        self._writes = 0
        self.rebuilt = 0  # damaged files this worker moved aside
        self.backend = "sqlite"
        with file_lock(self.path):  # workers starting together: one checks (and, if damaged, rebuilds) at a time
            self._db = self._usable_connection()

    def _connect(self) -> sqlite3.Connection:
        # workers starting together wait for each other's setup; later, a write finding the database locked
        # waits at most WRITE_WAIT_MS, then it is skipped
        db = sqlite3.connect(str(self.path), timeout=SETUP_WAIT_S, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=OFF")
            db.execute("CREATE TABLE IF NOT EXISTS entries (key TEXT PRIMARY KEY, stored REAL NOT NULL, "
                       "value BLOB NOT NULL)")
            db.execute("SELECT count(*) FROM entries").fetchone()
            db.execute(f"PRAGMA busy_timeout={WRITE_WAIT_MS}")
        except sqlite3.Error:
            db.close()
            raise
        return db

    def _usable_connection(self) -> sqlite3.Connection:
        """A connection to the file; a damaged file (not a database, malformed) is moved aside to
        `<name>.corrupt` and an empty one made: the cache never stays broken (it only holds copies)."""
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):  # locked or unreadable: make_cache decides
                raise
            for suffix in ("", "-wal", "-shm"):
                damaged = Path(f"{self.path}{suffix}")
                if damaged.exists():
                    damaged.replace(f"{self.path}.corrupt{suffix}")
            self.rebuilt += 1
            log.warning("shared cache file damaged: moved aside and rebuilt empty",
                        extra={"path": str(self.path), "error": str(exc), "moved_to": f"{self.path}.corrupt"})
            return self._connect()

    def _recover(self, exc: sqlite3.Error) -> None:
        """After a failed call: damage (not a busy lock) gets the connection replaced, rebuilding the file if
        no other worker has yet. Called with self._lock held."""
        if not _damaged(exc):
            return
        with file_lock(self.path):
            self._db.close()
            self._db = self._usable_connection()

    def get(self, key: str) -> Ranked | None:
        try:
            with self._lock:
                row = self._db.execute("SELECT stored, value FROM entries WHERE key = ?", (key,)).fetchone()
            if row is None or self.clock() - row[0] > self.ttl:
                return None
            return decode_ranked(row[1])
        except sqlite3.Error as exc:
            log.warning("shared cache get failed", extra={"error": type(exc).__name__, "path": str(self.path)})
            with self._lock:
                self._recover(exc)
            return None
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:  # an entry it cannot read: a miss
            log.warning("shared cache entry unreadable", extra={"error": type(exc).__name__, "path": str(self.path)})
            return None

    def set(self, key: str, value: Ranked) -> None:
        blob = encode_ranked(value)
        try:
            with self._lock:
                self._db.execute("INSERT OR REPLACE INTO entries (key, stored, value) VALUES (?, ?, ?)",
                                 (key, self.clock(), blob))
                self._writes += 1
                if self._writes % TRIM_EVERY == 0:
                    self._trim()
        except sqlite3.Error as exc:
            log.warning("shared cache set failed", extra={"error": type(exc).__name__, "path": str(self.path)})
            with self._lock:
                self._recover(exc)

    def _trim(self) -> None:
        self._db.execute("DELETE FROM entries WHERE stored < ?", (self.clock() - self.ttl,))
        self._db.execute("DELETE FROM entries WHERE key IN "
                         "(SELECT key FROM entries ORDER BY stored DESC LIMIT -1 OFFSET ?)", (self.size,))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class TieredCache:
    """The worker's LRU first; a shared entry is copied into it on its first use in this worker."""

    def __init__(self, local: LRUCache, shared):
        self.local, self.shared = local, shared
        self.backend = f"{local.backend}+{shared.backend}"

    def get(self, key: str) -> Ranked | None:
        value = self.local.get(key)
        if value is None:
            value = self.shared.get(key)
            if value is not None:
                self.local.set(key, value)
        return value

    def set(self, key: str, value: Ranked) -> None:
        self.local.set(key, value)
        self.shared.set(key, value)

    def close(self) -> None:
        self.local.close()
        self.shared.close()


def make_cache(params: CacheParams, redis: SharedRedis | None, state_dir: Path | None = None):
    """The worker's LRU, in front of Redis (redis) or of the host's SQLite file in state_dir
    (params.shared); size 0: no cache at all."""
    local = LRUCache(params.size, params.ttl_seconds)
    if params.size <= 0:
        return local
    if redis is not None:
        return TieredCache(local, RedisCache(redis, params.ttl_seconds, params.redis_prefix))
    if params.shared and state_dir is not None:
        path = Path(state_dir) / SHARED_FILE
        try:
            return TieredCache(local, SQLiteCache(path, params.size, params.ttl_seconds))
        except (OSError, sqlite3.Error) as exc:  # an unwritable state folder costs sharing, not the service
            log.warning("shared cache unavailable: each worker caches alone",
                        extra={"path": str(path), "error": f"{type(exc).__name__}: {exc}"})
    return local
