"""A cross-encoder re-ranker: reads (query, item text) together and scores the pair.

The model (trained by `pipelines.models.training.train_cross_encoder`) has two outputs: the ranking gain
(what `score` returns) and the graded relevance of a judged pair (what `predict_relevance`
returns, in the scale of the judgments it was trained on). Too costly to score a whole catalog:
use it on a short candidate list from cheaper components.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipelines.core.config import Settings
from pipelines.core.items import Request, TrainingData
from pipelines.core.params import CrossEncoderParams
from pipelines.models.rankers.base import Ranker

GAIN, RELEVANCE = 0, 1


class CrossEncoderRanker(Ranker):
    name = "cross_encoder"

    def __init__(self, params: CrossEncoderParams):
        self.params = params
        self.texts: list[str] = []
        self.n_items = 0
        self._model = None
        self._tokenizer = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "CrossEncoderRanker":
        return cls(settings.text.cross_encoder)

    def _load(self):
        if self._model is None:
            from pipelines.core.device import pick_device

            self._device = pick_device(self.params.device)
            self._model, self._tokenizer = load_cross_encoder(self.params.model_path)
            self._model.to(self._device.device).eval()
        return self._model, self._tokenizer

    def fit(self, data: TrainingData) -> "CrossEncoderRanker":
        """Keeps the items' texts; the model itself is trained by pipelines.models.training."""
        self.texts = list(getattr(data.items, self.params.field))
        self.n_items = len(self.texts)
        self._load()
        return self

    def predict(self, pairs: Sequence[tuple[str, str]], progress=None) -> np.ndarray:
        """Both outputs [n_pairs, 2] (gain, relevance) of (query, text) pairs, batched by length."""
        import torch

        from pipelines.core.device import autocast

        model, tokenizer = self._load()
        outputs = np.zeros((len(pairs), 2), dtype=np.float32)
        order = np.argsort([len(query) + len(text) for query, text in pairs], kind="stable")
        with torch.inference_mode(), autocast(self._device):
            for start in range(0, len(order), self.params.batch_size):
                chosen = order[start:start + self.params.batch_size]
                features = tokenizer([pairs[i][0] for i in chosen], [pairs[i][1] for i in chosen], truncation=True,
                                     max_length=self.params.max_seq_length, padding=True, return_tensors="pt")
                logits = model(**features.to(self._device.device)).logits.float().cpu().numpy()
                outputs[chosen] = logits
                if progress is not None:
                    progress(len(chosen))
        return outputs

    def predict_relevance(self, pairs: Sequence[tuple[str, str]]) -> np.ndarray:
        """Predicted graded relevance of (query, item text) pairs, in the judgments' scale."""
        return self.predict(pairs)[:, RELEVANCE]

    def score(self, requests: Sequence[Request], candidates: np.ndarray, progress=None) -> np.ndarray:
        candidates = np.asarray(candidates)
        pairs = [(request.query or "", self.texts[item]) for request, row in zip(requests, candidates) for item in row]
        return self.predict(pairs, progress)[:, GAIN].reshape(candidates.shape)

    def save(self, folder: Path) -> None:
        model, tokenizer = self._load()
        folder = Path(folder) / self.name
        model.save_pretrained(str(folder / "model"))
        tokenizer.save_pretrained(str(folder / "model"))
        (folder / "texts.json").write_text(json.dumps(self.texts), encoding="utf-8")
        (folder / "params.json").write_text(self.params.model_dump_json(indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> "CrossEncoderRanker":
        folder = Path(folder) / cls.name
        params = CrossEncoderParams.model_validate(json.loads((folder / "params.json").read_text(encoding="utf-8")))
        ranker = cls(params.model_copy(update={"model_path": str(folder / "model")}))
        ranker.texts = json.loads((folder / "texts.json").read_text(encoding="utf-8"))
        ranker.n_items = len(ranker.texts)
        return ranker


def load_cross_encoder(model_path: str | None):
    """A 2-output sequence classifier (gain, relevance) and its tokenizer; MiniLM when no path."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from pipelines.models.rankers.dense import default_model_path

    path = model_path or default_model_path()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), AutoTokenizer.from_pretrained(path)
