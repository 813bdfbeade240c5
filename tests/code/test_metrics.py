"""pipelines.core.metrics against small cases computed by hand.

Logarithms used below: log2(2) = 1, log2(3) = 1.5849625, log2(4) = 2, log2(5) = 2.3219281.
DCG = sum over positions p = 1..k of gain_p / log2(p + 1) (linear gains).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.core import metrics
from pipelines.ranking import fused, fusion

LOG2_3 = math.log2(3)


# ---------------------------------------------------------------- DCG / NDCG@k

def test_dcg_discounts_each_position_by_log2_of_position_plus_one():
    # DCG = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.2618595 + 0.5 = 4.7618595
    assert metrics.dcg([3, 2, 1]) == pytest.approx(3 + 2 / LOG2_3 + 0.5)
    assert metrics.dcg([3, 2, 1]) == pytest.approx(4.7618595, abs=1e-7)
    assert metrics.dcg([]) == 0.0


def test_ndcg_with_graded_gains():
    # ranked a, b, c, d; gains a=1, b=0, c=3, d=2; k = 3
    # DCG@3  = 1/log2(2) + 0/log2(3) + 3/log2(4) = 1 + 0 + 1.5 = 2.5
    # IDCG@3 = 3/log2(2) + 2/log2(3) + 1/log2(4) = 3 + 1.2618595 + 0.5 = 4.7618595   (ideal order c, d, a)
    # NDCG@3 = 2.5 / 4.7618595 = 0.5250050
    gains = {"a": 1.0, "b": 0.0, "c": 3.0, "d": 2.0}
    assert metrics.ndcg_at_k(["a", "b", "c", "d"], gains, 3) == pytest.approx(2.5 / (3 + 2 / LOG2_3 + 0.5))
    assert metrics.ndcg_at_k(["a", "b", "c", "d"], gains, 3) == pytest.approx(0.5250050, abs=1e-7)
    # The ideal order scores 1; only the top k counts: d at position 4 does not change NDCG@3 of c, a, b.
    assert metrics.ndcg_at_k(["c", "d", "a", "b"], gains, 3) == pytest.approx(1.0)
    # k = 1: DCG@1 = 1/1 (a), IDCG@1 = 3/1 (c) -> 1/3
    assert metrics.ndcg_at_k(["a", "b", "c", "d"], gains, 1) == pytest.approx(1 / 3)


def test_ndcg_ideal_counts_relevant_items_the_ranking_never_retrieved():
    # ranked 10, 11, 12; relevant: 10 (retrieved at 1) and 98, 99 (never retrieved); k = 3
    # DCG@3  = 1/log2(2) = 1
    # IDCG@3 = 1/log2(2) + 1/log2(3) + 1/log2(4) = 1 + 0.6309298 + 0.5 = 2.1309298
    # NDCG@3 = 1 / 2.1309298 = 0.4692787   (an ideal over the retrieved items only would give 1.0)
    gains = {10: 1.0, 98: 1.0, 99: 1.0}
    assert metrics.ndcg_at_k([10, 11, 12], gains, 3) == pytest.approx(1 / (1 + 1 / LOG2_3 + 0.5))
    assert metrics.ndcg_at_k([10, 11, 12], gains, 3) == pytest.approx(0.4692787, abs=1e-7)
    # The ideal list is cut at k too: IDCG@2 = 1 + 1/log2(3) = 1.6309298 -> NDCG@2 = 0.6131472
    assert metrics.ndcg_at_k([10, 11, 12], gains, 2) == pytest.approx(0.6131472, abs=1e-7)


def test_ndcg_ideal_uses_the_highest_unretrieved_gain():
    # ranked x, y; gains x=1, z=3 (z never retrieved); k = 2
    # DCG@2  = 1/log2(2) + 0/log2(3) = 1
    # IDCG@2 = 3/log2(2) + 1/log2(3) = 3 + 0.6309298 = 3.6309298
    # NDCG@2 = 1 / 3.6309298 = 0.2754116
    assert metrics.ndcg_at_k(["x", "y"], {"x": 1.0, "z": 3.0}, 2) == pytest.approx(0.2754116, abs=1e-7)


def test_ndcg_k_beyond_the_ranking_length():
    # ranked 1, 2 (only two items), gains 2=1, 3=1; k = 5
    # DCG@5  = 0/log2(2) + 1/log2(3) = 0.6309298
    # IDCG@5 = 1/log2(2) + 1/log2(3) = 1.6309298   (two relevant items, so two terms)
    # NDCG@5 = 0.6309298 / 1.6309298 = 0.3868528
    assert metrics.ndcg_at_k([1, 2], {2: 1.0, 3: 1.0}, 5) == pytest.approx(0.3868528, abs=1e-7)


@pytest.mark.parametrize("gains", [{}, {"a": 0.0, "b": 0.0}])
def test_ndcg_is_zero_when_no_judged_item_has_a_positive_gain(gains):
    # IDCG = 0: documented as 0, not a division by zero.
    assert metrics.ndcg_at_k(["a", "b"], gains, 2) == 0.0


def test_ndcg_accepts_numpy_item_ids_against_int_keys():
    # Rankings come out of numpy (fused.rank_candidates); gains are keyed by Python ints.
    # DCG@2 = 0/1 + 1/log2(3) = 0.6309298; IDCG@2 = 1 -> 0.6309298
    assert metrics.ndcg_at_k(np.array([4, 7]), {7: 1.0}, 2) == pytest.approx(1 / LOG2_3)


# ---------------------------------------------------------------- NDCG of scores, tied scores
# metrics.py itself takes no scores: every function takes an already ranked list, so it has no tie
# rule of its own. Scores become rankings in pipelines.ranking: fused.rank_candidates (used by the
# evaluate stage before metrics.ranking_report) and fusion.ndcg_per_request / mean_ndcg (used to fit
# the fusions, "computed with pipelines.core.metrics"). Both document ties as "lower position first".

def test_tied_scores_rank_in_candidate_order_before_the_metrics():
    candidates = np.array([[5, 6, 7]])
    scores = np.array([[1.0, 1.0, 0.0]])  # 5 and 6 tie: 5 (lower position) first
    ranked = fused.rank_candidates(candidates, scores)[0]
    assert ranked.tolist() == [5, 6, 7]
    # gain on 6 only: DCG@3 = 0/1 + 1/log2(3) = 0.6309298; IDCG@3 = 1 -> 0.6309298
    assert metrics.ndcg_at_k(ranked, {6: 1.0}, 3) == pytest.approx(0.6309298, abs=1e-7)
    # fusion's NDCG of the same scores agrees (k = number of candidates: full stable sort)
    assert fusion.ndcg_per_request(scores, np.array([[0.0, 1.0, 0.0]]), 3) == pytest.approx([0.6309298], abs=1e-7)


def test_tied_scores_at_the_top_k_boundary_keep_the_lower_position():
    # Scores 0, 0, 2, 2, 1: positions 2 and 3 tie for first. Documented rule (and fused.rank_candidates,
    # which the evaluate stage uses): position 2 first. The gain is on position 3 only; k = 1:
    # DCG@1 = gain of position 2 = 0 -> NDCG@1 = 0.
    scores = np.array([[0.0, 0.0, 2.0, 2.0, 1.0]])
    gains = np.array([[0.0, 0.0, 0.0, 1.0, 0.0]])
    ranked = fused.rank_candidates(np.arange(5)[None, :], scores)[0]
    assert metrics.ndcg_at_k(ranked, {3: 1.0}, 1) == 0.0  # evaluate's view
    assert fusion.top_k_positions(scores, 1).tolist() == [[2]]
    assert fusion.ndcg_per_request(scores, gains, 1).tolist() == [0.0]


# ---------------------------------------------------------------- HR@k, MRR, Recall@k

def test_hit_rate_at_k():
    gains = {5: 0.0, 7: 1.0}  # 5 is judged but not relevant
    ranked = [5, 6, 7, 8]
    assert metrics.hit_rate_at_k(ranked, gains, 1) == 0.0  # top 1 = 5, gain 0: no hit
    assert metrics.hit_rate_at_k(ranked, gains, 2) == 0.0  # 5, 6
    assert metrics.hit_rate_at_k(ranked, gains, 3) == 1.0  # 7 at position 3
    assert metrics.hit_rate_at_k(ranked, {99: 1.0}, 4) == 0.0  # relevant item never retrieved


def test_reciprocal_rank_is_one_over_the_first_relevant_position():
    ranked = [5, 6, 7, 8]
    assert metrics.reciprocal_rank(ranked, {7: 1.0, 8: 2.0}) == pytest.approx(1 / 3)  # first relevant at 3
    assert metrics.reciprocal_rank(ranked, {5: 0.0, 8: 1.0}) == pytest.approx(1 / 4)  # gain 0 at 1 ignored; 8 at 4
    assert metrics.reciprocal_rank(ranked, {99: 1.0}) == 0.0  # never retrieved
    # not cut at any k: the whole ranking counts
    assert metrics.reciprocal_rank(list(range(100)), {99: 1.0}) == pytest.approx(1 / 100)


def test_recall_at_k_over_all_relevant_items_of_the_request():
    # relevant = {2, 5, 9} (4 is judged with gain 0, so not relevant); 9 is never retrieved
    gains = {2: 1.0, 5: 2.0, 9: 1.0, 4: 0.0}
    ranked = [1, 2, 3, 4, 5]
    assert metrics.recall_at_k(ranked, gains, 3) == pytest.approx(1 / 3)    # top 3 = 1, 2, 3: {2} -> 1/3
    assert metrics.recall_at_k(ranked, gains, 5) == pytest.approx(2 / 3)    # {2, 5} -> 2/3
    assert metrics.recall_at_k(ranked, gains, 100) == pytest.approx(2 / 3)  # 9 never retrieved
    assert metrics.recall_at_k(ranked, {4: 0.0}, 5) == 0.0                  # no relevant item: 0


# ---------------------------------------------------------------- rmse

def test_rmse():
    # errors 1-1 = 0, 2-4 = -2, 3-0 = 3; squares 0, 4, 9; mean 13/3 = 4.3333; sqrt = 2.0816660
    assert metrics.rmse([1, 2, 3], [1, 4, 0]) == pytest.approx(math.sqrt(13 / 3))
    assert metrics.rmse([1, 2, 3], [1, 4, 0]) == pytest.approx(2.0816660, abs=1e-7)
    assert metrics.rmse([0.5, 0.5], [0.5, 0.5]) == 0.0
    # errors 1 and -1: squares 1, 1; mean 1; sqrt 1
    assert metrics.rmse([2.0, 0.0], [1.0, 1.0]) == pytest.approx(1.0)


# ---------------------------------------------------------------- ranking_report

RANKINGS = [["a", "b", "c"], ["d", "e", "f"], ["g", "h", "i"]]
JUDGMENTS = [
    {"b": 2.0, "c": 1.0},   # request 1: graded, relevant at positions 2 and 3
    {"d": 1.0, "z": 1.0},   # request 2: relevant at position 1, and z never retrieved
    {"g": 0.0},             # request 3: no relevant item at all
]


def test_ranking_report_means_every_metric_over_requests():
    # Request 1 (b=2, c=1):
    #   ndcg@1: DCG = 0 (a); IDCG@1 = 2                                         -> 0
    #   ndcg@3: DCG = 0 + 2/log2(3) + 1/log2(4) = 1.2618595 + 0.5 = 1.7618595
    #           IDCG@3 = 2 + 1/log2(3) = 2.6309298                              -> 0.6696718
    #   hr@1 = 0, hr@3 = 1, recall@3 = 2/2 = 1, rr = 1/2
    # Request 2 (d=1, z=1):
    #   ndcg@1: DCG = 1; IDCG@1 = 1                                             -> 1
    #   ndcg@3: DCG = 1; IDCG@3 = 1 + 1/log2(3) = 1.6309298                     -> 0.6131472
    #   hr@1 = 1, hr@3 = 1, recall@3 = 1/2, rr = 1
    # Request 3 (no relevant item): every metric 0
    # Means over the 3 requests:
    #   ndcg@1 = (0 + 1 + 0)/3 = 0.3333333
    #   ndcg@3 = (0.6696718 + 0.6131472 + 0)/3 = 1.2828190/3 = 0.4276063
    #   hr@1 = 1/3, hr@3 = 2/3, recall@3 = (1 + 0.5 + 0)/3 = 0.5, mrr = (0.5 + 1 + 0)/3 = 0.5
    report = metrics.ranking_report(RANKINGS, JUDGMENTS, ks=(1, 3), recall_k=3)
    assert set(report) == {"ndcg@1", "hr@1", "ndcg@3", "hr@3", "recall@3", "mrr"}
    r1_ndcg3 = (2 / LOG2_3 + 0.5) / (2 + 1 / LOG2_3)
    r2_ndcg3 = 1 / (1 + 1 / LOG2_3)
    assert r1_ndcg3 == pytest.approx(0.6696718, abs=1e-7) and r2_ndcg3 == pytest.approx(0.6131472, abs=1e-7)
    assert report == pytest.approx({"ndcg@1": 1 / 3, "hr@1": 1 / 3, "ndcg@3": (r1_ndcg3 + r2_ndcg3) / 3,
                                    "hr@3": 2 / 3, "recall@3": 0.5, "mrr": 0.5})
    assert report["ndcg@3"] == pytest.approx(0.4276063, abs=1e-7)


def test_ranking_report_counts_a_request_without_relevant_items_as_zero():
    # Current behaviour: a request whose judgments hold no positive gain is kept in the mean with 0 for
    # every metric (NDCG, recall are undefined for it), so each mean is scaled by 2/3 here rather than
    # the request being left out. Callers that keep such requests (search_requests keeps a query whose
    # judged items all have relevance 0) report lower absolute numbers; method comparisons are unaffected.
    with_empty = metrics.ranking_report(RANKINGS, JUDGMENTS, ks=(1, 3), recall_k=3)
    without = metrics.ranking_report(RANKINGS[:2], JUDGMENTS[:2], ks=(1, 3), recall_k=3)
    # without: ndcg@3 = (0.6696718 + 0.6131472)/2 = 0.6414095; mrr = (0.5 + 1)/2 = 0.75
    assert without["ndcg@3"] == pytest.approx(0.6414095, abs=1e-7) and without["mrr"] == pytest.approx(0.75)
    assert with_empty == pytest.approx({key: value * 2 / 3 for key, value in without.items()})


def test_ranking_report_defaults_to_k_10_and_recall_100():
    report = metrics.ranking_report([[1, 2]], [{2: 1.0}])
    # DCG@10 = 1/log2(3); IDCG = 1 -> 0.6309298; hr = 1; recall@100 = 1; rr = 1/2
    assert report == pytest.approx({"ndcg@10": 1 / LOG2_3, "hr@10": 1.0, "recall@100": 1.0, "mrr": 0.5})
