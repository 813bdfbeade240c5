"""The catalog stream's Redis names and stored product states (issue #18), shared by the service that writes
them (POST /items, pipelines/serving/catalog.py) and the stream sink that snapshots them for the next training
(pipelines/feedback/sink.py): one definition of the keys and of a stored state, below both.

Under the stream prefix P: `P catalog` (a hash: item_id -> the product's current state as a JSON object,
{item_id, sequence, title, description, category, brand, price, stock, removed, updated_at}, updates merged
field by field: a field never sent is absent), `P catalog:version` (incremented by each update),
`P catalog:seq` (sequence numbers of the products the bundle does not know) and `P items` (every update).
"""

from __future__ import annotations

import json

PRODUCT_FIELDS = ("title", "description", "category", "brand", "price", "stock", "removed")


class CatalogKeys:
    def __init__(self, prefix: str):
        self.hash, self.sequence = f"{prefix}catalog", f"{prefix}catalog:seq"
        self.version, self.stream = f"{prefix}catalog:version", f"{prefix}items"

    def script_keys(self) -> list[str]:
        return [self.hash, self.sequence, self.version, self.stream]


def read_version(client, keys: CatalogKeys) -> int:
    """The catalog stream's version; 0 when nothing was ever published."""
    return int(client.get(keys.version) or 0)


def read_catalog(client, keys: CatalogKeys) -> tuple[int, dict]:
    """(version, the hash as stored: item_id -> state JSON), read in one transaction."""
    pipe = client.pipeline(transaction=True)
    pipe.get(keys.version)
    pipe.hgetall(keys.hash)
    version, stored = pipe.execute()
    return int(version or 0), stored


def decode_state(raw) -> dict:
    """A stored state (JSON, bytes or text) as a dict; a ValueError when it is not a JSON object."""
    state = json.loads(raw)
    if not isinstance(state, dict):
        raise ValueError(f"a catalog state is a JSON object, not {type(state).__name__}")
    return state
