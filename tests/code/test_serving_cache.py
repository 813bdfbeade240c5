"""The hot-request cache (pipelines/serving/cache.py): encoding, the host-shared SQLite store, the tiers."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest

from pipelines.serving.cache import (
    SHARED_FILE,
    LRUCache,
    SQLiteCache,
    TieredCache,
    decode_ranked,
    encode_ranked,
    make_cache,
)
from pipelines.serving.engine import Ranked
from pipelines.serving.params import ServingParams
from tests.conftest import merged, params_section, served_app


def _ranked(seed: int = 0, stacked: bool = True, size: int = 6) -> Ranked:
    rng = np.random.default_rng(seed)
    return Ranked(rng.integers(0, 1000, size), rng.random(size), {"bm25": rng.random(size), "dense": rng.random(size)},
                  stack_features=rng.random((size, 4)).astype(np.float32) if stacked else None,
                  contributions=None if stacked else [{"bm25": 0.5, "dense": 0.25}] * size,
                  fallback=None, notes=["a note"])


def _same(first: Ranked, second: Ranked) -> bool:
    arrays = ["positions", "scores", "stack_features"]
    return (all(np.array_equal(getattr(first, name), getattr(second, name)) if getattr(first, name) is not None
                else getattr(second, name) is None for name in arrays)
            and first.component_scores.keys() == second.component_scores.keys()
            and all(np.array_equal(first.component_scores[n], second.component_scores[n]) for n in first.component_scores)
            and (first.contributions, first.fallback, first.notes) == (second.contributions, second.fallback, second.notes))


@pytest.mark.parametrize("ranked", [_ranked(), _ranked(stacked=False), Ranked.empty(fallback="no_search_model")])
def test_a_list_comes_back_exactly_as_it_was_encoded(ranked):
    decoded = decode_ranked(encode_ranked(ranked))
    assert _same(ranked, decoded)
    assert decoded.positions.dtype == np.int64 and decoded.scores.dtype == ranked.scores.dtype


@pytest.mark.parametrize("blob", [b"", b"not a list", encode_ranked(_ranked())[:-3], encode_ranked(_ranked()) + b"x"])
def test_a_damaged_entry_is_refused(blob):
    with pytest.raises(ValueError):
        decode_ranked(blob)


def test_workers_share_entries_through_the_sqlite_file(tmp_path):
    path = tmp_path / "cache.sqlite"
    first, second = SQLiteCache(path, 10, 300), SQLiteCache(path, 10, 300)  # two workers' connections
    ranked = _ranked(1)
    assert second.get("key") is None
    first.set("key", ranked)
    assert _same(second.get("key"), ranked)
    first.close(), second.close()


def test_shared_entries_expire_and_the_oldest_go_beyond_the_size(tmp_path, monkeypatch):
    now = [1000.0]
    store = SQLiteCache(tmp_path / "cache.sqlite", 3, ttl_seconds=60, clock=lambda: now[0])
    store.set("old", _ranked(1))
    now[0] += 61
    assert store.get("old") is None  # expired
    monkeypatch.setattr("pipelines.serving.cache.TRIM_EVERY", 1)
    for index in range(5):
        now[0] += 1
        store.set(f"key{index}", _ranked(index))
    keys = [row[0] for row in store._db.execute("SELECT key FROM entries ORDER BY stored")]
    assert keys == ["key2", "key3", "key4"]  # the expired entry and the two oldest removed
    store.close()


def test_a_garbled_or_locked_store_is_a_miss_never_an_error(tmp_path):
    path = tmp_path / "cache.sqlite"
    store = SQLiteCache(path, 10, 300)
    store._db.execute("INSERT INTO entries VALUES ('bad', ?, ?)", (store.clock(), b"garbage"))
    assert store.get("bad") is None
    writer = sqlite3.connect(str(path), isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        store.set("key", _ranked())  # waits 50 ms at most, then the entry is skipped
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert store.get("key") is None
    store.set("key", _ranked())
    assert store.get("key") is not None
    store.close()


def test_the_worker_lru_answers_first_and_keeps_what_the_shared_store_gave(tmp_path):
    class Counting(SQLiteCache):
        reads = 0

        def get(self, key):
            Counting.reads += 1
            return super().get(key)

    shared = Counting(tmp_path / "cache.sqlite", 10, 300)
    shared.set("key", _ranked(2))
    tiers = TieredCache(LRUCache(10, 300), shared)
    first, second = tiers.get("key"), tiers.get("key")
    assert first is second and Counting.reads == 1  # the second answer came from the worker's LRU
    tiers.set("new", _ranked(3))
    assert tiers.local.get("new") is not None and shared.get("new") is not None
    assert tiers.backend == "lru+sqlite"
    tiers.close()


def test_make_cache_shares_by_default_and_not_when_told(tmp_path):
    assert make_cache(params_section("serving.cache"), None, tmp_path).backend == "lru+sqlite"
    assert (tmp_path / SHARED_FILE).exists()
    assert make_cache(params_section("serving.cache", shared=False), None, tmp_path).backend == "lru"
    assert make_cache(params_section("serving.cache", size=0), None, tmp_path).backend == "lru"  # no cache at all


def test_a_query_ranked_by_one_worker_is_a_hit_in_the_other(tiny_bundle, tmp_path):
    with served_app(tiny_bundle["bundle"], tmp_path / "one") as one:
        first = one.search("garden hose", k=5)
        other = type(one)(tiny_bundle["bundle"], tmp_path / "one" / "state", tmp_path / "two" / "feedback", worker=2)
        try:
            second = other.search("garden hose", k=5)
            assert not first["cached"] and second["cached"] and other.counters["cache_hits"] == 1
            assert [i["item_id"] for i in first["items"]] == [i["item_id"] for i in second["items"]]
            assert [i["explanation"] for i in first["items"]] == [i["explanation"] for i in second["items"]]
        finally:
            other.close()


def test_without_sharing_each_worker_ranks_its_own(tiny_bundle, tmp_path):
    with served_app(tiny_bundle["bundle"], tmp_path / "one") as one:
        one.search("garden hose", k=5)
        params = ServingParams.model_validate(merged(one.params.model_dump(), {"cache": {"shared": False}}, ServingParams))
        other = type(one)(tiny_bundle["bundle"], tmp_path / "one" / "state", tmp_path / "two" / "feedback",
                          worker=2, params=params)
        try:
            assert not other.search("garden hose", k=5)["cached"]
        finally:
            other.close()


def test_an_unusable_state_folder_costs_sharing_not_the_service(tmp_path):
    blocked = tmp_path / "state"
    blocked.write_text("a file where the state folder should be")
    assert make_cache(params_section("serving.cache"), None, blocked).backend == "lru"


def test_workers_opening_the_shared_file_together_all_get_it(tmp_path):
    import threading

    stores, errors = [], []

    def open_store():
        try:
            stores.append(SQLiteCache(tmp_path / "cache.sqlite", 10, 300))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(stores) == 8
    stores[0].set("key", _ranked())
    assert all(store.get("key") is not None for store in stores)


def test_a_damaged_cache_file_is_moved_aside_and_rebuilt(tmp_path, caplog):
    import logging

    caplog.set_level(logging.WARNING, logger="pipelines")
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is no database " * 500)  # damaged before the worker starts
    store = SQLiteCache(path, 10, 300)
    assert store.rebuilt == 1 and (tmp_path / "cache.sqlite.corrupt").exists()
    store.set("key", _ranked())
    assert store.get("key") is not None
    # damaged while serving: the worker's connection meets a file that is no database any more (the open
    # connection is swapped for one on the damaged file: SQLite's page cache would otherwise hide it a while)
    other = SQLiteCache(path, 10, 300)
    store.close()
    other._db.close()
    for suffix in ("-wal", "-shm"):
        (tmp_path / f"cache.sqlite{suffix}").unlink(missing_ok=True)
    path.write_bytes(b"garbage " * 4096)
    other._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    for _ in range(3):
        assert other.get("key") is None
    other.set("again", _ranked())
    assert other.rebuilt == 1 and other.get("again") is not None
    rebuilt_lines = [r for r in caplog.records if "rebuilt" in r.getMessage()]
    assert len(rebuilt_lines) == 2  # once at start, once while serving
    other.close()
