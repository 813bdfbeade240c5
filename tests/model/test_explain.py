"""Explanations on the tiny shop: contributions sum to the fused score; reasons point at real evidence."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.core.items import Items, Request, TrainingData
from pipelines.models.rankers.itemcf import ItemCF
from pipelines.models.rankers.popularity import Popularity
from pipelines.ranking.explain import (
    COMPONENT_PHRASES,
    explain_fusion,
    relation_lookup,
    tokens,
)
from pipelines.ranking.fusion import WeightedFusion
from tests.conftest import params_section


@pytest.fixture(scope="module")
def shop(tiny_run):
    clean = tiny_run["clean"]
    items = Items.from_catalog(pd.read_parquet(clean / "catalog.parquet"))
    events = pd.read_parquet(clean / "events.parquet").sort_values(["user_id", "timestamp"], kind="stable")
    events = events[events["item_id"].isin(items.position)]
    interactions = pd.DataFrame({"user": pd.factorize(events["user_id"])[0],
                                 "item": events["item_id"].map(items.position).astype(np.int64).to_numpy(),
                                 "timestamp": events["timestamp"].to_numpy()})
    training = TrainingData(items, interactions)
    components = {"itemcf": ItemCF(params_section("recall.itemcf"), params_section("recall.popularity")).fit(training), "popularity": Popularity(params_section("recall.popularity")).fit(training)}
    longest = interactions.groupby("user")["item"].apply(list).map(len).idxmax()
    history = tuple(interactions.loc[interactions["user"] == longest, "item"].tolist())
    candidates = components["itemcf"].retrieve([Request(history=history)], 20, exclude_history=True)[0][0]
    scores = {name: ranker.score([Request(history=history)], candidates)[0] for name, ranker in components.items()}
    fusion = WeightedFusion.from_dict({"normalization": "minmax", "weights": {"itemcf": 0.7, "popularity": 0.3}})
    return items, components, history, candidates, scores, fusion


def test_contributions_sum_to_the_fused_score_and_follow_its_order(shop):
    items, _, history, candidates, scores, fusion = shop
    fused = fusion.score({name: values[None, :] for name, values in scores.items()})[0]
    explanations = explain_fusion(fusion, scores, candidates, items, history=history)
    assert len(explanations) == len(candidates)
    expected_order = [str(items.ids[candidates[i]]) for i in np.argsort(-fused, kind="stable")]
    assert [e.item for e in explanations] == expected_order
    for explanation in explanations:
        index = [str(items.ids[c]) for c in candidates].index(explanation.item)
        total = sum(part.contribution for part in explanation.contributions)
        assert total == pytest.approx(fused[index], abs=1e-9)
        assert explanation.fused_score == pytest.approx(fused[index], abs=1e-9)
        for part in explanation.contributions:
            assert part.contribution == pytest.approx(part.weight * part.normalized)
        shares = [part.contribution for part in explanation.contributions]
        assert shares == sorted(shares, reverse=True)
    best = explanations[0]
    assert COMPONENT_PHRASES[best.contributions[0].component] in best.sentence
    json.dumps(best.as_dict())  # structured and serializable


def test_reasons_point_at_real_history_items_and_query_terms(shop):
    items, components, history, candidates, scores, fusion = shop
    candidate = int(candidates[0])
    partner = history[-1]
    relations = pd.DataFrame({"item": [partner], "related_item": [candidate], "relation": ["complement"]})
    title_terms = tokens(items.texts[candidate])
    query = f"{title_terms[0]} qqqzzz"
    explanations = explain_fusion(fusion, scores, candidates, items, history=history, query=query,
                                  relations=relation_lookup(relations), similarity=components["itemcf"].similarity)
    explanation = next(e for e in explanations if e.item == str(items.ids[candidate]))
    kinds = {reason.kind: reason for reason in explanation.reasons}
    assert kinds["complement"].items == [str(items.ids[partner])]
    assert "bought together with" in kinds["complement"].text
    assert kinds["matches_query"].terms == [title_terms[0]]
    # the candidate came from item-CF on this history, so a similar history item exists and is named
    named = items.position[kinds["similar_history"].items[0]]
    assert named in history and components["itemcf"].similarity[named, candidate] > 0
    assert "bought together with" in explanation.sentence


def test_no_evidence_gives_no_reasons(shop):
    items, _, _, candidates, scores, fusion = shop
    explanation = explain_fusion(fusion, scores, candidates, items, history=(), query="qqqzzz")[0]
    assert explanation.reasons == []
    assert explanation.sentence.startswith("Ranked here")


def test_scores_of_another_length_are_refused(shop):
    items, _, _, candidates, scores, fusion = shop
    with pytest.raises(ValueError):
        explain_fusion(fusion, scores, candidates[:3], items)


def _shapley_by_permutations(value, count):
    """Shapley values from the definition: the mean marginal gain of each player over every order."""
    from itertools import permutations

    totals = np.zeros(count)
    orders = list(permutations(range(count)))
    for order in orders:
        present = set()
        for player in order:
            before = value(frozenset(present))
            present.add(player)
            totals[player] += value(frozenset(present)) - before
    return totals / len(orders)


def test_group_shapley_matches_the_definition_and_sums_to_the_score():
    from pipelines.ranking.explain import group_shapley

    rng = np.random.default_rng(3)
    groups = [[0, 1], [2], [3, 4, 5]]
    reference = rng.normal(size=6)

    def model(features):  # nonlinear, with interactions across groups
        features = np.atleast_2d(features)
        return np.tanh(features[:, 0] * features[:, 2]) + features[:, 3] ** 2 - features[:, 1] * features[:, 5] + 0.5

    rows = rng.normal(size=(4, 6))
    values, base = group_shapley(model, rows, reference, groups)
    assert base == pytest.approx(float(model(reference)[0]), abs=1e-5)
    for row, shapley in zip(rows, values):
        def value(coalition, row=row):
            mixed = reference.copy()
            for group in coalition:
                mixed[groups[group]] = row[groups[group]]
            return float(model(mixed)[0])

        assert shapley == pytest.approx(_shapley_by_permutations(value, len(groups)), abs=1e-4)
        assert base + shapley.sum() == pytest.approx(float(model(row)[0]), abs=1e-4)


def test_group_shapley_of_an_additive_model_is_each_groups_own_change():
    from pipelines.ranking.explain import group_shapley

    weights = np.array([2.0, -1.0, 0.5])
    values, base = group_shapley(lambda features: features @ weights, np.array([[1.0, 1.0, 1.0]]),
                                 np.zeros(3), [[0], [1], [2]])
    assert values[0] == pytest.approx(weights)
    assert base == 0.0


def test_group_shapley_leaves_out_a_group_every_row_shares_with_the_reference():
    """A group at the reference's values in every row (a user feature, the same for each candidate) is a null
    player: 0, and the other groups' values as with it in every coalition, from half the model rows."""
    from pipelines.ranking.explain import group_shapley

    rng = np.random.default_rng(5)
    groups = [[0], [1, 2], [3]]
    reference = rng.normal(size=4).astype(np.float32)
    rows = rng.normal(size=(3, 4)).astype(np.float32)
    rows[:, [1, 2]] = reference[[1, 2]]  # group 1 is the reference's in every row
    asked = []

    def model(features):  # interactions with the shared group's features too
        asked.append(len(features))
        return np.tanh(features[:, 0] * features[:, 1]) + features[:, 2] * features[:, 3] + features[:, 3] ** 2

    values, base = group_shapley(model, rows, reference, groups)
    assert asked == [len(rows) * 4]  # 2 players: 4 coalitions a row, not 8
    assert (values[:, 1] == 0).all()
    for row, shapley in zip(rows, values):
        def value(coalition, row=row):
            mixed = reference.copy()
            for group in coalition:
                mixed[groups[group]] = row[groups[group]]
            return float(model(mixed[None, :])[0])

        assert shapley == pytest.approx(_shapley_by_permutations(value, len(groups)), abs=1e-5)
        assert base + shapley.sum() == pytest.approx(float(model(row[None, :])[0]), abs=1e-5)
