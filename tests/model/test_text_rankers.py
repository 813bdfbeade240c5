"""BM25, dense (MiniLM + FAISS) and the cross-encoder ranker on the tiny embedded shop's catalog and queries."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.core.items import Items, Request, TrainingData
from pipelines.core.metrics import ndcg_at_k
from pipelines.models.rankers.bm25 import BM25
from pipelines.models.rankers.cross_encoder import (
    CrossEncoderRanker,
)
from pipelines.models.rankers.dense import DenseRetriever
from tests.conftest import params_section

K = 10
COLD_TITLE = "Zephyrine quartz hourglass timer with walnut base"


@pytest.fixture(scope="module")
def shop(tiny_run):
    """Items (plus one brand-new item nobody has seen) and judged sample queries: (text, {item: gain})."""
    catalog = pd.read_parquet(tiny_run["clean"] / "catalog.parquet")
    cold = pd.DataFrame({"item_id": ["cold-start-item"], "title": [COLD_TITLE], "category": ["Home > Clocks"],
                         "brand": ["Nova"], "description": ["a sand timer"]})
    items = Items.from_catalog(pd.concat([catalog, cold], ignore_index=True))
    queries = pd.read_parquet(tiny_run["clean"] / "queries.parquet")
    queries = queries[queries["item_id"].isin(items.position)]
    judged = [(group["query"].iloc[0], dict(zip(items.positions(group["item_id"]), group["relevance"].astype(float))))
              for _, group in queries.groupby("query_id")]
    judged = [(text, gains) for text, gains in judged if any(g > 0 for g in gains.values())]
    return items, judged[:40]


def test_spelling_correction_helps_bm25_where_it_applies(shop):
    """The tiny shop's queries with one long word misspelled as the sample generator misspells (seeded): BM25
    with text.spelling finds much more of what they judge than without; the queries as typed, which the corrector
    leaves alone, rank exactly as before. Deterministic, and kept through a pickle."""
    import pickle

    from pipelines.data.sources.sample import _typo

    items, judged = shop
    rng = np.random.default_rng(0)

    def misspelled(text: str) -> str:
        words = text.split()
        longest = max(range(len(words)), key=lambda index: len(words[index]))
        return " ".join(_typo(rng, word) if index == longest else word for index, word in enumerate(words))

    plain = BM25(params_section("text.bm25"), params_section("text.spelling", enabled=False)).fit(TrainingData(items))
    spelled = BM25(params_section("text.bm25"), params_section("text.spelling")).fit(TrainingData(items))
    untouched = [(text, gains) for text, gains in judged if not spelled.corrector.corrected_words(text)]
    typos = [(misspelled(text), gains) for text, gains in untouched if max(map(len, text.split())) >= 6]
    corrected = [(text, gains) for text, gains in typos if spelled.corrector.corrected_words(text)]
    assert len(corrected) >= 0.8 * len(typos) >= 20
    assert mean_ndcg(spelled, corrected) > mean_ndcg(plain, corrected) + 0.04  # 0.735 vs 0.673
    requests = [Request(query=text) for text, _ in untouched]
    np.testing.assert_array_equal(spelled.score_all(requests), plain.score_all(requests))
    again = [Request(query=text) for text, _ in corrected]
    first = spelled.score_all(again)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(spelled)).score_all(again), first)
    np.testing.assert_array_equal(BM25(params_section("text.bm25"), params_section("text.spelling"))
                                  .fit(TrainingData(items)).score_all(again), first)


@pytest.fixture(scope="module")
def bm25(shop):
    return BM25(params_section("text.bm25")).fit(TrainingData(shop[0]))


@pytest.fixture(scope="module")
def dense(shop):
    return DenseRetriever(params_section("text.dense", batch_size=64, model_path=None)).fit(TrainingData(shop[0]))


def mean_ndcg(ranker, judged) -> float:
    top, _ = ranker.retrieve([Request(query=text) for text, _ in judged], K)
    return float(np.mean([ndcg_at_k(row.tolist(), gains, K) for row, (_, gains) in zip(top, judged)]))


def random_ndcg(n_items: int, judged, seed: int = 0) -> float:
    generator = np.random.default_rng(seed)
    return float(np.mean([np.mean([ndcg_at_k(generator.permutation(n_items)[:K].tolist(), gains, K) for _ in range(20)])
                          for _, gains in judged]))


@pytest.mark.parametrize("name", ["bm25", "dense"])
def test_shapes_and_determinism(name, request, shop):
    ranker = request.getfixturevalue(name)
    items, judged = shop
    requests = [Request(query=text) for text, _ in judged[:5]] + [Request()]
    everything = ranker.score_all(requests)
    assert everything.shape == (6, len(items))
    assert np.all(everything[-1] == 0), "a request without query (or history) scores nothing"
    candidates = np.tile(np.arange(7), (6, 1))
    np.testing.assert_allclose(ranker.score(requests, candidates), everything[:, :7], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ranker.score_all(requests), everything, rtol=1e-5, atol=1e-6)
    top, scores = ranker.retrieve(requests[:5], K)
    assert top.shape == scores.shape == (5, K)
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "retrieve returns best first"


@pytest.mark.parametrize("name", ["bm25", "dense"])
def test_better_than_random_on_sample_queries(name, request, shop):
    items, judged = shop
    quality = mean_ndcg(request.getfixturevalue(name), judged)
    chance = random_ndcg(len(items), judged)
    assert quality > 3 * chance + 0.02, (quality, chance)


def test_bm25_stemming_matches_inflections(shop):
    items = Items(np.array(["a", "b"]), ["cordless drills", "garden hose"], ["cordless drills", "garden hose"])
    stemmed = BM25(params_section("text.bm25", stemming=True)).fit(TrainingData(items))
    plain = BM25(params_section("text.bm25", stemming=False)).fit(TrainingData(items))
    assert stemmed.score_all([Request(query="drilling")])[0, 0] > 0
    assert plain.score_all([Request(query="drilling")])[0, 0] == 0


def test_ann_path_agrees_with_exact(shop, dense):
    items, judged = shop
    assert dense.exact
    ann = DenseRetriever(params_section("text.dense", ann_threshold=1, model_path=None), encoder=dense.encoder)
    ann.set_item_embeddings(dense.item_embeddings)
    assert not ann.exact and type(ann.index).__name__ == "IndexHNSWFlat"
    requests = [Request(query=text) for text, _ in judged]
    exact_top, _ = dense.retrieve(requests, 5)
    ann_top, _ = ann.retrieve(requests, 5)
    overlap = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(exact_top, ann_top)])
    assert overlap >= 0.9, overlap


@pytest.mark.parametrize("name", ["bm25", "dense"])
def test_cold_start_item_reachable_by_its_text(name, request, shop):
    items, _ = shop
    cold = items.position["cold-start-item"]
    top, _ = request.getfixturevalue(name).retrieve([Request(query="quartz hourglass timer")], 3)
    assert top[0, 0] == cold


def test_dense_history_request_and_exclusion(shop, dense):
    items, _ = shop
    cold = items.position["cold-start-item"]
    history = (0, 1, cold)
    top, _ = dense.retrieve([Request(history=history)], K, exclude_history=True)
    assert not set(history) & set(top[0].tolist())
    scores = dense.score_all([Request(history=history)])[0]
    # the newest history item weighs most: the cold item's own vector is the closest to the profile
    assert np.argmax(scores) == cold


@pytest.mark.parametrize("cls,name", [(BM25, "bm25"), (DenseRetriever, "dense")])
def test_save_load_round_trip(cls, name, request, shop, tmp_path):
    ranker = request.getfixturevalue(name)
    requests = [Request(query=text) for text, _ in shop[1][:4]]
    ranker.save(tmp_path)
    loaded = cls.load(tmp_path)
    np.testing.assert_allclose(loaded.score_all(requests), ranker.score_all(requests), rtol=1e-4, atol=1e-5)


def test_cross_encoder_scores_and_round_trip(shop, tmp_path):
    items, judged = shop
    ranker = CrossEncoderRanker(params_section("text.cross_encoder", batch_size=16, model_path=None)).fit(TrainingData(items))
    requests = [Request(query=text) for text, _ in judged[:3]]
    candidates = np.tile(np.arange(5), (3, 1))
    scores = ranker.score(requests, candidates)
    assert scores.shape == (3, 5) and np.isfinite(scores).all()
    relevance = ranker.predict_relevance([(judged[0][0], items.texts[0]), (judged[1][0], items.texts[1])])
    assert relevance.shape == (2,)
    ranker.save(tmp_path)
    loaded = CrossEncoderRanker.load(tmp_path)
    np.testing.assert_allclose(loaded.score(requests, candidates), scores, rtol=1e-4, atol=1e-5)
