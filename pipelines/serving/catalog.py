"""The catalog stream (issue #18): POST /items changes products between trainings, every worker follows.

Redis holds, under the stream prefix P: `P items` (every update as it came, a stream trimmed to about
stream.maxlen, for consumers outside the service), `P catalog` (a hash: item_id -> the product's current state
as JSON, updates merged field by field), `P catalog:version` (incremented by each update) and `P catalog:seq`
(the sequence numbers of products the bundle does not know: their positions after its items, the same in
every worker and replica). One Lua script applies a batch atomically.

Each worker runs a `CatalogFollower` thread: it reads the version every `stream.catalog_poll_ms`, and on a
change loads the hash and has the engine build the new catalog view (pipelines/ranking/catalog.py): the
added products encoded by the serving encoder and scored by BM25 with the trained index's statistics. A
worker that cannot reach Redis keeps its last catalog and retries.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone

from redis.exceptions import RedisError

from pipelines.core.logs import get_logger
from pipelines.feedback.catalog_state import PRODUCT_FIELDS, CatalogKeys, decode_state, read_catalog, read_version
from pipelines.ranking.catalog import Product

log = get_logger(__name__)

# KEYS: catalog hash, sequence counter, version counter, items stream. ARGV: maxlen, then per product:
# item_id, its update (JSON: only the fields sent), 1 when the bundle does not know it (it needs a sequence number)
UPDATE_SCRIPT = """
for index = 2, #ARGV, 3 do
  local item_id, update, unknown = ARGV[index], cjson.decode(ARGV[index + 1]), ARGV[index + 2] == '1'
  local stored = redis.call('HGET', KEYS[1], item_id)
  local product = stored and cjson.decode(stored) or {item_id = item_id, sequence = 0}
  for name, value in pairs(update) do product[name] = value end
  if product.sequence == 0 and unknown then product.sequence = redis.call('INCR', KEYS[2]) end
  local encoded = cjson.encode(product)
  redis.call('HSET', KEYS[1], item_id, encoded)
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'product', encoded)
end
return redis.call('INCR', KEYS[3])
"""


def check_items(rows: list[dict], known_ids, stored_ids) -> list[dict]:
    """Errors {"row", "field", "msg"} of a batch of product updates (already typed by the API's schema): a
    product neither the bundle nor the catalog stream holds needs a title (the catalog contract's required
    field), in its first row of the batch. Rows apply in order: a later row of an item_id merges over an earlier
    one. Whether a row is valid depends on the catalog's state, not on its shape: the service answers 409."""
    errors, titled = [], set()
    for index, row in enumerate(rows):
        item_id = row["item_id"]
        if row.get("title"):
            titled.add(item_id)
        if item_id not in known_ids and item_id not in stored_ids and item_id not in titled:
            errors.append({"row": index, "field": "title", "msg": "required for a product the catalog does not hold"})
    return errors


def stored_item_ids(client, keys: CatalogKeys, item_ids: list[str]) -> set[str]:
    flags = client.pipeline(transaction=False)
    for item_id in item_ids:
        flags.hexists(keys.hash, item_id)
    return {item_id for item_id, held in zip(item_ids, flags.execute()) if held}


def publish_items(client, keys: CatalogKeys, rows: list[dict], known_ids, maxlen: int) -> int:
    """Apply checked updates (each a dict of item_id and the fields sent) in one atomic script; the new version."""
    updated_at = datetime.now(timezone.utc).isoformat()
    args: list = [maxlen]
    for row in rows:
        update = {name: row[name] for name in PRODUCT_FIELDS if name in row}
        args += [row["item_id"], json.dumps({**update, "updated_at": updated_at}), "0" if row["item_id"] in known_ids else "1"]
    return int(client.eval(UPDATE_SCRIPT, 4, *keys.script_keys(), *args))


def read_products(client, keys: CatalogKeys) -> tuple[int, list[Product]]:
    """(version, every product the catalog stream holds), read in one transaction."""
    version, stored = read_catalog(client, keys)
    return version, [_product(decode_state(value)) for value in stored.values()]


def _product(state: dict) -> Product:
    price = state.get("price")
    stock = state.get("stock")
    return Product(str(state["item_id"]), int(state.get("sequence") or 0), state.get("title") or "",
                   state.get("description") or "", state.get("category") or "", state.get("brand") or "",
                   float(price) if isinstance(price, (int, float)) and math.isfinite(price) else None,
                   int(stock) if isinstance(stock, (int, float)) else None, bool(state.get("removed") or False))


class CatalogFollower:
    """A daemon thread that keeps the engine's catalog at the catalog stream's version and, every
    `popularity_seconds`, its popularity at the live counters (`popularity`: () -> item id -> score, or None)."""

    def __init__(self, client, keys: CatalogKeys, engine, poll_seconds: float,
                 popularity: Callable[[], dict[str, float]] | None = None, popularity_seconds: float = 0.0):
        self.client, self.keys, self.engine, self.poll_seconds = client, keys, engine, poll_seconds
        self.popularity, self.popularity_seconds, self._popularity_at = popularity, popularity_seconds, -math.inf
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="catalog-follower", daemon=True)
        self.failures = 0

    def start(self) -> "CatalogFollower":
        self.sync()  # the first answers already rank over the current catalog when Redis is up
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def sync(self) -> bool:
        """Load the catalog if it changed; False when Redis could not be read (the last catalog stays)."""
        try:
            if read_version(self.client, self.keys) == self.engine.catalog_version:
                return True
            version, products = read_products(self.client, self.keys)
        except (RedisError, OSError) as error:
            self.failures += 1
            if self.failures % 100 == 1:
                log.warning("catalog stream unreachable: the last catalog stays", extra={"error": type(error).__name__})
            return False
        self.engine.set_catalog(products, version)
        return True

    def refresh_popularity(self) -> None:
        """The live counters into the popularity, when due; Redis unreachable leaves the last scores."""
        if self.popularity is None or time.monotonic() - self._popularity_at < self.popularity_seconds:
            return
        self._popularity_at = time.monotonic()
        try:
            scores = self.popularity()
        except (RedisError, OSError):
            return  # counted by the sync's warning when Redis is gone
        self.engine.set_live_popularity(scores)

    def _run(self) -> None:
        failed_version = None
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh_popularity()
                self.sync()
            except Exception:  # a bad product state must not end the thread: logged once per catalog version
                version = self.engine.catalog_version
                if version != failed_version:
                    log.exception("catalog update failed")
                failed_version = version
