"""The per-thread memos of the history components (base.memo_last: SASRec, relations, item-CF) and of the
explanations' item-CF evidence change no number: every result equals the one computed afresh, offline or served."""

from __future__ import annotations

import pickle
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pipelines.core.items import Request
from pipelines.models.rankers import base
from pipelines.models.rankers.itemcf import ItemCF
from pipelines.models.rankers.relations import Relations
from pipelines.models.rankers.sasrec import SASRec
from pipelines.ranking import explain
from tests.conftest import params_section
from tests.model.test_popularity_itemcf import held_out_by_time
from tests.model.test_sasrec import small


def reference_strengths(similarity, recent, candidate):
    """What evidence() computed before the memo: the matrix sliced per candidate."""
    return np.asarray(similarity[recent, :][:, [candidate]].todense()).ravel()


@pytest.fixture
def unmemoized(monkeypatch):
    """Within the test, every component computes afresh and evidence slices per candidate."""
    def disable():
        monkeypatch.setattr(base, "MEMO_MAX_VALUES", -1)
        monkeypatch.setattr(explain, "history_strengths", reference_strengths)
    return disable


@pytest.fixture(scope="module")
def shop(tiny_run):
    return held_out_by_time(tiny_run["clean"])


@pytest.fixture(scope="module")
def components(shop):
    items, train, _, _ = shop
    return {"relations": Relations(params_section("relations")).fit(train),
            "itemcf": ItemCF(params_section("recall.itemcf"), params_section("recall.popularity")).fit(train),
            "sasrec": SASRec(small(epochs=2, patience=2)).fit(train)}


def one_request_path(component, request: Request, k: int = 20) -> dict:
    """What one served request asks of a component: retrieve, score its candidates, and the relation features."""
    top, top_scores = component.retrieve([request], k, exclude_history=True)
    out = {"top": top, "top_scores": top_scores, "score": component.score([request], top),
           "score_all": np.array(component.score_all([request]))}
    if isinstance(component, Relations):
        out.update({f"kind_{kind}": values for kind, values in component.kind_scores([request], top).items()})
        last = component.kind_scores([Request(history=request.history[-1:])], top)
        out.update({f"last_{kind}": values for kind, values in last.items()})
    return out


def assert_same(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    for key in left:
        np.testing.assert_array_equal(left[key], right[key], err_msg=key)


def test_memoized_component_scores_equal_fresh_ones(shop, components, unmemoized):
    _, _, requests, _ = shop
    # repeats and an empty history among them: the memo is hit, missed and replaced
    chosen = requests[:12] + [requests[3], requests[3], Request(), requests[0]]
    memoized = {name: [one_request_path(component, request) for request in chosen]
                for name, component in components.items()}
    batch = {name: (component.score(chosen, np.tile(np.arange(30), (len(chosen), 1))),
                    component.retrieve(chosen, 15)) for name, component in components.items()}
    unmemoized()
    for name, component in components.items():
        for request, got in zip(chosen, memoized[name]):
            assert_same(got, one_request_path(component, request))
        np.testing.assert_array_equal(batch[name][0], component.score(chosen, np.tile(np.arange(30), (len(chosen), 1))))
        for got, fresh in zip(batch[name][1], component.retrieve(chosen, 15)):
            np.testing.assert_array_equal(got, fresh)


def test_memoized_scores_are_per_thread(shop, components):
    _, _, requests, _ = shop
    chosen = requests[:16]
    serial = {name: [one_request_path(component, request) for request in chosen]
              for name, component in components.items()}
    with ThreadPoolExecutor(4) as pool:
        for name, component in components.items():
            for got, expected in zip(pool.map(lambda request: one_request_path(component, request), chosen * 3),
                                     serial[name] * 3):
                assert_same(got, expected)


def test_memoized_results_are_read_only_and_not_pickled(shop, components):
    _, _, requests, _ = shop
    relations = components["relations"]
    kinds = relations.kind_scores_all(requests[:2])
    assert all(not values.flags.writeable for values in kinds.values())
    assert not components["sasrec"].score_all(requests[:2]).flags.writeable
    for name in ("relations", "itemcf"):
        state = pickle.loads(pickle.dumps(components[name])).__dict__
        assert "_memo" not in state and "_derived" not in state
        np.testing.assert_array_equal(pickle.loads(pickle.dumps(components[name])).score_all(requests[:3]),
                                      components[name].score_all(requests[:3]))


def test_sasrec_memo_follows_weight_changes(shop):
    _, train, requests, _ = shop
    model = SASRec(small(epochs=1, patience=1)).fit(train)
    before = np.array(model.score_all(requests[:3]))
    with torch.no_grad():
        model.net.items.weight.mul_(1.5)  # an in-place change, as a training step or load_state_dict makes
    after = model.score_all(requests[:3])
    assert not np.array_equal(before, after)
    np.testing.assert_array_equal(after, model._score_all(requests[:3]))


def test_history_strengths_equal_the_per_candidate_slice(components):
    similarity = components["itemcf"].similarity
    rng = np.random.default_rng(3)
    for _ in range(20):
        recent = list(dict.fromkeys(rng.integers(0, similarity.shape[0], rng.integers(1, 12)).tolist()))
        for candidate in rng.integers(0, similarity.shape[1], 8).tolist():
            got = explain.history_strengths(similarity, recent, candidate)
            expected = reference_strengths(similarity, recent, candidate)
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected)


def served_answers(engine, users) -> list:
    out = []
    for user in users:
        request = engine.recommend_request(user, [])[0]
        ranked = engine.rank("recommend", request)
        rows = list(range(min(10, len(ranked.positions))))
        parts, base_value = engine.contributions("recommend", ranked, rows)
        out.append((ranked.positions.tolist(), ranked.scores.tolist(),
                    {name: values.tolist() for name, values in ranked.component_scores.items()},
                    [engine.explanation(int(ranked.positions[row]), part, base_value, request)
                     for row, part in zip(rows, parts)]))
    return out


def test_served_lists_and_explanations_equal_fresh_ones(tiny_bundle, tmp_path, unmemoized):
    import pandas as pd

    from tests.conftest import served_app

    users = pd.read_parquet(tiny_bundle["bundle"] / "histories.parquet")["user"].tolist()[:15]
    users = users + users[:3] + [users[5]] * 2 + ["nobody"]
    with served_app(tiny_bundle["bundle"], tmp_path) as app:
        memoized = served_answers(app.engine, users)
        unmemoized()
        fresh = served_answers(app.engine, users)
    assert any(answer[0] for answer in fresh)
    assert memoized == fresh
