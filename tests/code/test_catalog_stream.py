"""POST /items through the app over a real redis-server: a new product is searchable and recommendable within
the poll interval, one out of stock or removed leaves every answer, a bad batch is refused naming its row and
field, and Redis gone keeps the last catalog. The ranking side (pipelines/ranking/catalog.py) is checked
against the bundle's own components: a product added after training scores as it would have in the index."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipelines.bench.served import RedisServer, wait_until
from pipelines.core.items import Request
from pipelines.ranking.catalog import Product, build_view

pytestmark = pytest.mark.integration
NEW_TITLE = "Zorblax quantum stapler with titanium jaws"


@pytest.fixture()
def live_app(tiny_bundle, tmp_path):
    import torch

    from pipelines.serving.app import ShopFusionApp

    threads = torch.get_num_threads()
    with RedisServer() as redis_server:
        app = ShopFusionApp(tiny_bundle["bundle"], tmp_path / "state", tmp_path / "feedback", redis_url=redis_server.url)
        app.redis_server = redis_server
        try:
            yield app
        finally:
            app.close()
            torch.set_num_threads(threads)


def followed(app, version: int) -> bool:
    return wait_until(lambda: app.engine.catalog_version >= version, 5, 0.02)


def found(answer: dict) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def test_a_new_product_is_searchable_and_a_hidden_one_leaves_the_answers(live_app):
    app = live_app
    posted = app.items([{"item_id": "new-1", "title": NEW_TITLE, "category": "Office > Staplers", "price": 12.5,
                         "stock": 3, "description": "staples forty sheets"}])
    assert posted["accepted"] == 1 and posted["errors"] == []
    assert followed(app, posted["catalog_version"])
    answer = app.search("zorblax quantum stapler", k=5)
    assert "new-1" in found(answer)  # ranked first; exploration moves an item by at most max_shift (3) slots
    top = answer["items"][found(answer).index("new-1")]
    assert top["title"] == NEW_TITLE and top["price"] == 12.5 and top["explanation"]["contributions"]
    assert app.recommend("someone", k=5, context_item_ids=["new-1"])["items"]  # a history holding it is served

    out = app.items([{"item_id": "new-1", "stock": 0}])  # a partial update: the title stays
    assert followed(app, out["catalog_version"])
    assert "new-1" not in found(app.search("zorblax quantum stapler", k=10))
    back = app.items([{"item_id": "new-1", "stock": 7, "price": 9.0}])
    assert followed(app, back["catalog_version"])
    again = [item for item in app.search("zorblax quantum stapler", k=5)["items"] if item["item_id"] == "new-1"]
    assert again and again[0]["title"] == NEW_TITLE and again[0]["price"] == 9.0

    trained = app.engine.base_view.items
    title = trained.titles[0]
    assert trained.ids[0] in found(app.search(title, k=10))
    removed = app.items([{"item_id": str(trained.ids[0]), "removed": True}])
    assert followed(app, removed["catalog_version"])
    assert str(trained.ids[0]) not in found(app.search(title, k=10))
    assert app.similar(str(trained.ids[0]))["fallback"] == "unknown_item"
    assert all(str(trained.ids[0]) not in found(app.recommend(f"user-{n}", k=10)) for n in range(5))


def test_a_bad_batch_is_refused_whole_and_redis_loss_keeps_the_catalog(live_app):
    app = live_app
    refused = app.items([{"item_id": "new-2", "title": "Ok product"}, {"item_id": "new-3", "price": 4.0}])
    assert refused["accepted"] == 0 and refused["errors"] == [
        {"row": 1, "field": "title", "msg": "required for a product the catalog does not hold"}]
    import redis

    client = redis.Redis.from_url(app.redis_server.url)
    assert client.hlen("shopfusion:catalog") == 0 and client.xlen("shopfusion:items") == 0
    in_order = app.items([{"item_id": "new-2", "title": "A"}, {"item_id": "new-2", "price": 2.0}])  # rows in order
    assert in_order["errors"] == [] and in_order["accepted"] == 2
    posted = app.items([{"item_id": "new-2", "title": "Glimmerwick scented candle"}])
    assert followed(app, posted["catalog_version"])
    assert client.xlen("shopfusion:items") == 3
    assert json.loads(client.hget("shopfusion:catalog", "new-2")) | {"updated_at": None} == {
        "item_id": "new-2", "sequence": 1, "title": "Glimmerwick scented candle", "price": 2.0, "updated_at": None}

    app.redis_server.stop()
    from pipelines.serving.live import StreamUnavailable

    with pytest.raises(StreamUnavailable):
        app.items([{"item_id": "new-4", "title": "Never stored"}])
    assert "new-2" in found(app.search("glimmerwick scented candle", k=5))  # the last catalog stays


def test_an_added_product_scores_as_if_it_had_been_indexed(tiny_bundle):
    """Re-adding a trained item's text as a new product gives it the trained item's BM25 and dense scores."""
    from pipelines.core.params import ServingParams
    from pipelines.serving.bundle import verify
    from pipelines.serving.engine import Engine

    manifest = verify(tiny_bundle["bundle"])
    engine = Engine(tiny_bundle["bundle"], ServingParams.model_validate(manifest["serving"]["serving"]), manifest=manifest)
    frame = pd.read_parquet(tiny_bundle["bundle"] / "items.parquet")
    row = frame.iloc[3]
    copy = Product("copy-of-3", 1, title=str(row["text"]))  # the same text the models indexed
    engine.set_catalog([copy], 1)
    n_base = engine.base_view.n_base
    request = Request(query=str(row["title"]))
    for name in ("bm25", "dense"):
        if name not in engine.components:
            continue
        scores = engine.components[name].score([request], np.array([[3, n_base]]))[0]
        assert scores[0] > 0 and scores[1] == pytest.approx(scores[0], rel=1e-3)
    # the behaviour components know nothing of it; the view is rebuilt on a change, reusing its encodings
    assert all(engine.components[name].score([request], np.array([[n_base]]))[0][0] == 0
               for name in engine.components if name not in ("bm25", "dense"))
    view = build_view(engine.base_view, [copy], 2, previous=engine.view)
    assert view.memo.keys() == engine.view.memo.keys() and len(view.items) == n_base + 1


def test_live_counters_lift_an_item_in_the_popularity(live_app):
    """Purchases applied to the live state after the bundle was built make a rarely bought item the most popular
    one: cold-start lists lead with it once the worker refreshed its popularity."""
    from datetime import datetime, timezone

    app = live_app
    engine = app.engine
    rare = str(engine.base_view.items.ids[int(engine.popular[-1])])
    assert rare not in found(app.recommend("nobody-yet", k=3))
    now = datetime.now(timezone.utc).isoformat()
    events = [{"event_id": f"pop-{n}", "user_id": f"u_{n:020x}", "item_id": rare, "event_type": "purchase",
               "timestamp": now, "session_id": None} for n in range(200)]
    assert all(app.live.state.apply_many(events))
    app.catalog_follower._popularity_at = float("-inf")  # due now, not in popularity_refresh_seconds
    app.catalog_follower.refresh_popularity()
    assert rare in found(app.recommend("nobody-yet", k=3))
    scored = engine.components["popularity"].score([Request()], np.array([[engine.items.position[rare]]]))
    assert float(scored[0][0]) >= 200 * engine.base_view.components["popularity"].params.event_weights["purchase"]


def test_explanations_name_the_fresh_event(live_app):
    """A shopper's event from the live stream that a reason points at leads the explanation: "you just viewed X"."""
    from datetime import datetime, timezone

    app = live_app
    key = b"test-key"
    app.key = app.live.key = key  # the pipeline's key, as the service has it
    items = app.engine.base_view.items
    viewed = next(position for position in range(len(items)) if items.categories[position])
    user = app.user_pseudonym("fresh-viewer")
    event = {"event_id": "fresh-1", "user_id": user, "item_id": str(items.ids[viewed]), "event_type": "view",
             "timestamp": datetime.now(timezone.utc).isoformat(), "session_id": None}
    assert app.live.state.apply_many([event]) == [True]
    answer = app.recommend("fresh-viewer", k=10)
    named = f'you just viewed "{items.titles[viewed][:20]}'  # long titles are shortened
    reasons = [reason for item in answer["items"] for reason in item["explanation"]["reasons"]]
    assert any(reason.startswith(named) for reason in reasons)
    searched = app.search(items.categories[viewed].split(">")[-1].strip() or items.titles[viewed], k=10,
                          user_id="fresh-viewer")
    same = [item for item in searched["items"] if item["category"] == items.categories[viewed]
            and item["item_id"] != str(items.ids[viewed])]
    assert same and same[0]["explanation"]["reasons"][0].startswith(named)
