"""The served application (pipelines/serving/app.py) on the tiny shop's bundle, without HTTP."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.feedback.log import EVENTS, SERVED, served_lists
from pipelines.serving.app import ShopFusionApp
from pipelines.stages.monitor import read_feedback
from tests.conftest import served_app


@pytest.fixture(scope="module")
def app(tiny_bundle, tmp_path_factory):
    with served_app(tiny_bundle["bundle"], tmp_path_factory.mktemp("app")) as served:
        yield served


@pytest.fixture(scope="module")
def items(tiny_bundle):
    return pd.read_parquet(tiny_bundle["bundle"] / "items.parquet")


@pytest.fixture(scope="module")
def histories(tiny_bundle):
    return pd.read_parquet(tiny_bundle["bundle"] / "histories.parquet")


def test_search_finds_an_item_by_its_title_and_explains_every_score(app, items):
    title = items["title"].iloc[7]
    answer = app.search(title, k=5)
    returned = [item["item_id"] for item in answer["items"]]
    assert len(returned) == 5 and len(set(returned)) == 5
    assert items["item_id"].iloc[7] in returned[:3]
    assert [item["rank"] for item in answer["items"]] == [1, 2, 3, 4, 5]
    for item in answer["items"]:
        explanation = item["explanation"]
        assert set(explanation["contributions"]) == {"bm25", "dense", "popularity", "title"}  # title: the stack's title-match features
        total = sum(explanation["contributions"].values()) + explanation["base"]
        assert total == pytest.approx(item["score"], abs=1e-4)  # the explanation is the score, decomposed
        assert explanation["text"].startswith("Ranked here")
        assert 0 < item["propensity"] <= 1
    assert answer["model_version"] == "test" and len(answer["request_id"]) == 32


def test_search_answers_carry_the_relevance_models_grade(app, items, tiny_bundle):
    from pipelines.ranking.fusion import RelevanceModel

    model = RelevanceModel.load(tiny_bundle["bundle"] / "fusion" / "search" / "relevance")
    answer = app.search(items["title"].iloc[3], k=5)
    grades = [item["relevance"] for item in answer["items"]]
    assert all(model.grades[0] <= grade <= model.grades[1] for grade in grades)
    assert grades[0] >= min(grades)  # a grade for each item, on the judgments' scale
    assert all(item["relevance"] is None for item in app.recommend("nobody", k=3)["items"])


def test_search_filters_by_category_and_price(app, items):
    category = items["category"].iloc[0]
    answer = app.search("the", k=20, filters={"category": category})
    assert answer["items"] and all(item["category"] == category for item in answer["items"])
    cheap = float(items["price"].median())
    answer = app.search(items["title"].iloc[3], k=20, filters={"price_max": cheap})
    assert answer["items"] and all(item["price"] <= cheap for item in answer["items"])
    nothing = app.search(items["title"].iloc[3], k=5, filters={"category": "no such category"})
    assert nothing["items"] == [] and nothing["notes"] == ["no candidate matches the filters"]


def raw_user_id(tiny_run, pseudonym_of_user: str, key: bytes) -> str:
    """The raw id a shopper types whose pipeline pseudonym is `pseudonym_of_user`."""
    from pipelines.core.privacy import pseudonym

    raw_ids = pd.read_csv(tiny_run["raw"] / "events.csv", dtype=str, keep_default_na=False)["user_id"].unique()
    return next(raw for raw in raw_ids if pseudonym(raw, key) == pseudonym_of_user)


def test_recommend_uses_history_and_never_repeats_it(app, histories, tiny_run):
    row = histories.iloc[int(np.argmax(histories["items"].map(len)))]
    answer = app.recommend(raw_user_id(tiny_run, row["user"], app.key), k=10)
    assert answer["fallback"] is None and len(answer["items"]) == 10
    seen = set(app.engine.items.ids[list(row["items"])])
    assert not seen & {item["item_id"] for item in answer["items"]}
    for item in answer["items"]:  # recommendations are ordered by the weighted fusion: weight x normalized score
        explanation = item["explanation"]
        assert explanation["base"] == 0.0 and set(explanation["contributions"]) == {"popularity", "itemcf", "dense"}
        assert sum(explanation["contributions"].values()) == pytest.approx(item["score"], abs=1e-4)


def test_another_users_pseudonym_reads_no_history(app, histories):
    row = histories.iloc[int(np.argmax(histories["items"].map(len)))]
    answer = app.recommend(row["user"], k=10)  # the pseudonym a log or a file shows: hashed again, unknown
    assert answer["fallback"] is not None


def test_unknown_user_gets_popular_items_and_context_items_personalize(app, items):
    cold = app.recommend("somebody-new", k=5)
    assert cold["fallback"] == "popularity"
    assert [item["item_id"] for item in cold["items"]] == list(app.engine.items.ids[app.engine.popular[:5]])
    context = [items["item_id"].iloc[11], "NO-SUCH-ITEM"]
    warm = app.recommend("somebody-new", k=5, context_item_ids=context)
    assert warm["fallback"] is None
    assert context[0] not in {item["item_id"] for item in warm["items"]}
    assert any("NO-SUCH-ITEM" in note for note in warm["notes"])


def test_similar_gives_complements_and_same_category_substitutes(app, items, histories):
    bought = pd.Series([item for history in histories["items"] for item in history]).value_counts().index[0]
    item_id = str(app.engine.items.ids[bought])
    answer = app.similar(item_id, k=5)
    assert answer["fallback"] is None
    assert answer["complements"] and answer["substitutes"]
    assert item_id not in {entry["item_id"] for entry in answer["complements"] + answer["substitutes"]}
    category = app.engine.items.categories[bought]
    assert all(entry["category"] == category for entry in answer["substitutes"])
    unknown = app.similar("NO-SUCH-ITEM", k=3)
    assert unknown["fallback"] == "unknown_item" and len(unknown["popular"]) == 3


def test_feedback_is_logged_durably_joined_for_monitoring_and_pseudonymized(app):
    answer = app.search("garden hose", k=5, user_id="raw-user-0042")
    clicked = answer["items"][1]["item_id"]
    reply = app.feedback(answer["request_id"], "raw-user-0042", clicked, "click")
    assert reply == {"accepted": True, "request_id": answer["request_id"], "known_request": True}
    folder = app.root / "feedback"
    lists = served_lists(folder)
    row = lists[lists["request_id"] == answer["request_id"]].iloc[0]
    assert row["clicked"] == [clicked] and row["items"] == [item["item_id"] for item in answer["items"]]
    assert read_feedback(folder) is not None  # the monitoring stage reads the same log
    for name in (SERVED, EVENTS):
        text = (folder / name).read_text()
        assert "raw-user-0042" not in text
    event = json.loads((folder / EVENTS).read_text().splitlines()[-1])
    assert event["user"].startswith("u_") and event["slot"] == 1


def test_hot_queries_are_served_from_the_cache(app):
    first = app.search("kitchen knife", k=5)
    hits = app.counters["cache_hits"]
    second = app.search("Kitchen   knife", k=5)
    assert app.counters["cache_hits"] == hits + 1
    assert second["cached"] and not first["cached"]
    assert {i["item_id"] for i in first["items"]} == {i["item_id"] for i in second["items"]}
    assert first["request_id"] != second["request_id"]


def test_cache_keys_hold_no_query_text_or_user_id(tiny_bundle, tmp_path):
    import sqlite3

    served = ShopFusionApp(tiny_bundle["bundle"], tmp_path / "state", tmp_path / "feedback")
    try:
        served.search("hose for jane.doe@example.com", k=5)
        served.recommend("raw-user-0042", k=5, context_item_ids=[served.engine.items.ids[0]])
        database = tmp_path / "state" / "cache.sqlite"
        keys = [row[0] for row in sqlite3.connect(database).execute("SELECT key FROM entries")]
        assert keys and all("jane" not in key and "hose" not in key and "raw-user" not in key for key in keys)
        assert b"jane.doe" not in database.read_bytes() and b"raw-user-0042" not in database.read_bytes()
        assert served.cache_key("search", "a", "") != served.cache_key("search", "b", "")
    finally:
        served.close()


def test_redis_cache_against_the_local_server(tiny_bundle, tmp_path):
    redis = pytest.importorskip("redis")
    url = "redis://127.0.0.1:6379/15"
    try:
        redis.Redis.from_url(url).ping()
    except redis.exceptions.ConnectionError:
        pytest.fail("the local Redis server (127.0.0.1:6379) is not running: start it (see README, Serving)")
    client = redis.Redis.from_url(url)
    client.flushdb()
    served = ShopFusionApp(tiny_bundle["bundle"], tmp_path / "state", tmp_path / "feedback", redis_url=url)
    try:
        first = served.search("garden hose", k=5)
        assert served.cache.backend == "lru+redis" and any(key.startswith(b"shopfusion:") for key in client.keys())
        again = ShopFusionApp(tiny_bundle["bundle"], tmp_path / "state2", tmp_path / "feedback2", redis_url=url)
        second = again.search("garden hose", k=5)  # another worker: the entry is shared
        assert again.counters["cache_hits"] == 1
        assert sorted(i["score"] for i in first["items"]) == pytest.approx(sorted(i["score"] for i in second["items"]))
        again.close()
    finally:
        served.close()
        client.flushdb()


def test_connection_recycler_counts_each_connection_apart():
    from pipelines.serving.connections import ConnectionRecycler

    recycler = ConnectionRecycler(app=None, max_requests=3)
    first, second = ("127.0.0.1", 50001), ("127.0.0.1", 50002)
    closes = [recycler.last_on_connection(client) for client in (first, second, first, first, second, second, first)]
    assert closes == [False, False, False, True, False, True, False]  # each closes on its own third request
    assert recycler.last_on_connection(None) is False  # no client address (unix socket): never closed
    with pytest.raises(ValueError):
        ConnectionRecycler(app=None, max_requests=0)


def test_micro_batcher_answers_each_caller_with_its_own_vectors():
    import threading
    import time as clock

    from pipelines.serving.batching import MicroBatcher

    threads_seen = []

    def encode(texts):
        threads_seen.append(threading.current_thread().name)
        clock.sleep(0.02)  # a slow encoder, so concurrent callers overlap
        return np.array([[len(text), ord(text[0])] for text in texts], dtype=np.float32)

    batcher = MicroBatcher(encode, max_batch=8, max_wait_ms=50)
    assert batcher(["alone"]).tolist() == [[5, ord("a")]]
    assert threads_seen == [threading.current_thread().name]  # alone: encoded in the caller's thread
    texts = [f"{letter}{'x' * index}" for index, letter in enumerate("abcdefgh")]
    results = {}

    def call(text):
        results[text] = batcher([text])

    workers = [threading.Thread(target=call, args=(text,)) for text in texts]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    for text in texts:
        assert results[text].tolist() == [[len(text), ord(text[0])]]
    assert batcher.encoded == 9
    assert batcher.batches < 9  # concurrent callers shared forward passes


def test_requests_ranked_together_get_the_lists_each_gets_alone(app, items):
    from pipelines.serving.engine import Filters

    engine = app.engine
    category, cheap = items["category"].iloc[0], float(items["price"].median())
    cases = [(items["title"].iloc[7], None), ("the", Filters(category=category)), (items["title"].iloc[3], None),
             (items["title"].iloc[3], Filters(price_max=cheap)), ("drill", Filters(category="no such category"))]
    requests = [engine.search_request(query, None) for query, _ in cases]
    together = engine.rank_many("search", requests, [chosen for _, chosen in cases])
    assert len(together) == len(cases)
    for request, (_, chosen), batched in zip(requests, cases, together):
        alone = engine.rank("search", request, chosen)
        assert batched.positions.tolist() == alone.positions.tolist()
        assert batched.scores == pytest.approx(alone.scores, abs=1e-5)
        assert batched.notes == alone.notes
    assert together[-1].notes == ["no candidate matches the filters"] and len(together[-1].positions) == 0
    assert all(category == items["category"].iloc[p] for p in together[1].positions)


def test_recommend_requests_ranked_together_get_the_lists_each_gets_alone(app, histories, items, tiny_run):
    """The service's loop batcher: begin_recommend (cold starts and cache hits answered at once), rank_recommends
    for the misses together, finish_recommend."""
    longest = histories.sort_values("items", key=lambda lists: lists.map(len), ascending=False).head(3)
    users = [raw_user_id(tiny_run, user, app.key) for user in longest["user"]]
    # a context item of its own each: lists no earlier test cached
    calls = [app.begin_recommend(user, k=5, context_item_ids=[items["item_id"].iloc[40 + index]])
             for index, user in enumerate(users)]
    cold = app.begin_recommend("nobody-known", k=5)
    assert cold.ranked is not None and cold.ranked.fallback == "popularity"  # answered without ranking
    assert all(call.ranked is None for call in calls)
    app.rank_recommends(calls)
    for call in calls:
        alone = app.engine.rank("recommend", call.request)
        assert call.ranked.positions.tolist() == alone.positions.tolist()
        assert call.ranked.scores == pytest.approx(alone.scores, abs=1e-5)
        answer = app.finish_recommend(call)
        assert answer["fallback"] is None and not answer["cached"] and len(answer["items"]) == 5
        assert not set(app.engine.items.ids[list(call.request.history)]) & {item["item_id"] for item in answer["items"]}
    again = app.begin_recommend(users[0], k=5, context_item_ids=[items["item_id"].iloc[40]])
    assert again.cached and again.ranked.positions.tolist() == calls[0].ranked.positions.tolist()  # cached


def test_the_served_stacks_see_the_features_the_fuse_stage_fitted_them_on(app, histories):
    """Online and offline compute each stack's inputs alike: the engine's features of a request's candidates equal
    ranking.tasks.stack_inputs on the same candidates (title features for search, history ones for recommend)."""
    from pipelines.core.items import Request
    from pipelines.ranking import fused
    from pipelines.ranking.tasks import TaskData, stack_inputs

    engine = app.engine
    user = histories["user"].iloc[0]
    cases = {"recommend": Request(history=engine.history(user), user=user),
             "search": engine.search_request(str(engine.items.titles[5]), None)}
    for task, request in cases.items():
        components = {name: engine.components[name] for name in engine.task_components[task]}
        candidates = fused.pool_candidates(components, [request], engine.pool_k, exclude_history=task == "recommend")
        candidates = candidates[:, candidates[0] != fused.PADDING]
        scores = fused.candidate_scores(components, [request], candidates)
        offline, names = stack_inputs(TaskData([request], [{}], candidates, scores, components), engine.matchers[task])
        online = engine._stack_row(engine.matchers.get(task), request, components, candidates[0],
                                   {name: values[0] for name, values in scores.items()})
        assert names == engine.fusions[task][1].feature_names
        assert online == pytest.approx(offline[0].astype(np.float32), abs=1e-5)
    assert any(name.startswith("activity_") for name in engine.fusions["recommend"][1].feature_names)


def test_the_loop_batcher_ranks_requests_that_arrive_together_in_one_call():
    import asyncio

    from pipelines.serving.batching import LoopBatcher

    calls = []

    def run(batch):
        calls.append(list(batch))
        if "bad" in batch:
            raise RuntimeError("ranking failed")

    async def arrive(batcher, item, rounds):
        for _ in range(rounds):  # requests that reach the batcher a loop round or two after the first one
            await asyncio.sleep(0)
        await batcher.submit(item)
        return item

    async def scenario():
        batcher = LoopBatcher(run, max_batch=4, ticks=3)
        assert await arrive(batcher, "alone", 0) == "alone"
        done = await asyncio.gather(*(arrive(batcher, f"q{index}", index % 2) for index in range(6)))
        assert done == [f"q{index}" for index in range(6)]
        late = await asyncio.gather(arrive(batcher, "q6", 0), arrive(batcher, "late", 8))
        assert late == ["q6", "late"]
        results = await asyncio.gather(arrive(batcher, "bad", 0), arrive(batcher, "ok", 0), return_exceptions=True)
        assert all(isinstance(result, RuntimeError) for result in results)  # the whole batch gets the error
        return batcher

    batcher = asyncio.run(scenario())
    assert calls[0] == ["alone"]
    assert calls[1] == ["q0", "q2", "q4", "q1"] and calls[2] == ["q3", "q5"]  # max_batch 4, then the rest
    assert calls[3] == ["q6"] and calls[4] == ["late"]  # 8 rounds later is past the batch's 3
    assert calls[5] == ["bad", "ok"]
    assert batcher.batches == 6 and batcher.items == 11


def test_a_worker_trusts_only_its_parents_recent_check_of_this_very_bundle(tiny_bundle, tmp_path):
    import os
    import shutil
    import time

    from pipelines.serving.bundle import (
        MANIFEST,
        file_digest,
        recently_verified,
        verify,
    )

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["bundle"], bundle)
    digest, now = file_digest(bundle / MANIFEST), int(time.time())
    from_parent = f"{os.getppid()}:{now}:{digest}"
    assert recently_verified(bundle, from_parent, 120) == verify(bundle)
    assert recently_verified(bundle, f"{os.getpid()}:{now}:{digest}", 120) is None  # not from the parent
    assert recently_verified(bundle, f"{os.getppid()}:{now - 600}:{digest}", 120) is None  # too old
    assert recently_verified(bundle, None, 120) is None and recently_verified(bundle, "garbage", 120) is None
    (bundle / "items.parquet").unlink()  # a listed file gone: the full check runs, and names it
    assert recently_verified(bundle, from_parent, 120) is None
    manifest = json.loads((bundle / MANIFEST).read_text())
    (bundle / MANIFEST).write_text(json.dumps({**manifest, "revision": "other"}))  # another manifest
    assert recently_verified(bundle, f"{os.getppid()}:{now}:{digest}", 120) is None


def test_a_full_disk_costs_the_served_log_row_never_the_answer_and_feedback_is_refused(tiny_bundle, tmp_path,
                                                                                      monkeypatch):
    import errno

    from pipelines.feedback import log as feedback_log
    from pipelines.serving.app import FeedbackNotRecorded

    served = ShopFusionApp(tiny_bundle["bundle"], tmp_path / "state", tmp_path / "feedback")
    failures = []
    served.on_served_log_failure = failures.append
    try:
        def disk_full(fd, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(feedback_log.os, "write", disk_full)
        answer = served.search("garden hose", k=5)
        assert answer["items"] and served.counters["served_log_failures"] == 1 and failures == ["ENOSPC"]
        with pytest.raises(FeedbackNotRecorded, match="No space left"):
            served.feedback(answer["request_id"], "u1", answer["items"][0]["item_id"], "click")
        monkeypatch.undo()
        assert served.feedback(answer["request_id"], "u1", answer["items"][0]["item_id"], "click")["accepted"]
    finally:
        served.close()
