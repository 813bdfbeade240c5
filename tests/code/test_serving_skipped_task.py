"""A bundle whose shop had no recommend requests (no behaviour events): packaged without a recommend fusion,
/recommend answers with the popularity fallback and says why, /search ranks as usual."""

from __future__ import annotations

import json

import pytest

from pipelines.feedback.log import SERVED
from pipelines.serving.app import NO_MODEL_NOTES
from pipelines.serving.bundle import verify
from tests.conftest import bundle_run, served_app, with_sections


@pytest.fixture(scope="module")
def app(no_events_run, tmp_path_factory):
    with served_app(no_events_run["bundle"], tmp_path_factory.mktemp("app_no_events")) as served:
        yield served


def test_the_bundle_is_packaged_without_a_recommend_fusion(no_events_run):
    manifest = verify(no_events_run["bundle"])
    assert manifest == no_events_run["manifest"]
    fusion_files = [name for name in manifest["files"] if name.startswith("fusion/")]
    assert "fusion/search/weighted.json" in fusion_files
    assert any(name.startswith("fusion/search/lambdarank/") for name in fusion_files)
    assert not [name for name in fusion_files if name.startswith("fusion/recommend")]
    assert manifest["metrics"]["recommend"] == no_events_run["metrics"]["recommend"]
    assert manifest["metrics"]["recommend"]["requests"] == 0 and manifest["metrics"]["recommend"]["skipped"]


def test_recommend_answers_with_the_popularity_fallback_and_says_why(app):
    popular = list(app.engine.items.ids[app.engine.popular[:5]])
    fallbacks = app.counters["fallbacks"]
    cold = app.recommend("somebody-new", k=5)
    assert cold["fallback"] == "no_recommend_model" and cold["policy"] == "popularity"
    assert cold["notes"] == [NO_MODEL_NOTES["recommend"]]
    assert [item["item_id"] for item in cold["items"]] == popular
    context = [popular[0], "NO-SUCH-ITEM"]
    warm = app.recommend("somebody-new", k=5, context_item_ids=context)  # a history: still no model to rank it
    assert warm["fallback"] == "no_recommend_model" and len(warm["items"]) == 5
    assert popular[0] not in {item["item_id"] for item in warm["items"]}, "what the user has is left out"
    assert [item["item_id"] for item in warm["items"]][:4] == popular[1:5]
    assert any("NO-SUCH-ITEM" in note for note in warm["notes"])
    assert app.counters["fallbacks"] == fallbacks + 2


def test_search_ranks_normally_with_the_bandit_on_search_only(app):
    assert set(app.engine.fusions) == {"search"}
    assert app.bandit is not None and set(app.bandit.policies) == {"search"}
    title = app.engine.items.titles[7]
    answer = app.search(title, k=5)
    assert answer["fallback"] is None and answer["policy"] != "popularity" and len(answer["items"]) == 5
    assert str(app.engine.items.ids[7]) in [item["item_id"] for item in answer["items"]][:3]
    for item in answer["items"]:
        explanation = item["explanation"]
        assert set(explanation["contributions"]) == {"bm25", "popularity", "title"}
        total = sum(explanation["contributions"].values()) + explanation["base"]
        assert total == pytest.approx(item["score"], abs=1e-4)


def test_fallback_lists_are_logged_for_the_feedback_loop(app):
    answer = app.recommend("another-new-user", k=3)
    rows = [json.loads(line) for line in (app.root / "feedback" / SERVED).read_text().splitlines()]
    row = next(row for row in rows if row["request_id"] == answer["request_id"])
    assert row["task"] == "recommend" and row["policy"] == "popularity" and row["slate_features"] == []
    assert row["items"] == [item["item_id"] for item in answer["items"]]


@pytest.fixture(scope="module")
def no_queries_bundle(tiny_run, tiny_settings, tmp_path_factory):
    """The other way round: events but no judged queries, so the fuse stage skips search."""
    settings = with_sections(tiny_settings, ranking={"search_components": ["bm25", "popularity"],
                                                     "recommend_components": ["popularity", "itemcf"],
                                                     "candidates_per_component": 30, "eval_ks": [5, 10]})
    run = bundle_run(tiny_run, settings, tmp_path_factory.mktemp("no_queries"), "no-queries", empty_table="queries")
    assert run["summary"]["search"]["requests"] == 0 and run["summary"]["search"]["skipped"]
    return run["bundle"]


def test_a_bundle_without_a_search_model_starts_and_answers_search_with_no_results(no_queries_bundle, tmp_path):
    with served_app(no_queries_bundle, tmp_path) as served:
        assert set(served.engine.fusions) == {"recommend"} and set(served.bandit.policies) == {"recommend"}
        answer = served.search(served.engine.items.titles[0], k=5)
        assert answer["items"] == [] and answer["fallback"] == "no_search_model"
        assert answer["notes"] == [NO_MODEL_NOTES["search"]]
        item = str(served.engine.items.ids[0])  # a context item: a history for the recommend model to rank from
        recommended = served.recommend("somebody-new", k=5, context_item_ids=[item])
        assert recommended["fallback"] is None and len(recommended["items"]) == 5
        assert item not in {entry["item_id"] for entry in recommended["items"]}
