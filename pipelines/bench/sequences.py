"""Sequential recommendation benchmark on an ID-only sequence file (S3-Rec format, e.g. Amazon Beauty).

Leave-one-out per user: the last item is the test target, the second last the validation target,
everything before is training. Every component is fitted once on the training part; validation
requests carry the training history, test requests the training history plus the validation item.
Items are ranked against the whole catalog with the request's own history items excluded (the
S3-Rec evaluation code does the same). The fusion is fitted on the validation requests only (its
candidates: the union of each component's top-K), then applied to the test requests.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from pipelines.bench import BenchResult, report
from pipelines.core.config import Settings, section
from pipelines.core.items import Items, Request, TrainingData
from pipelines.core.logs import get_logger
from pipelines.core.metrics import ranking_report
from pipelines.data.sources import sequences as sequence_source
from pipelines.models.rankers.base import Ranker
from pipelines.models.rankers.itemcf import ItemCF
from pipelines.models.rankers.popularity import Popularity
from pipelines.models.rankers.sasrec import SASRec
from pipelines.ranking.fused import candidate_scores, pool_candidates, rank_candidates
from pipelines.ranking.fusion import FusionParams, WeightedFusion, rrf

log = get_logger(__name__)

PROTOCOL = ("leave-one-out (last item test, second last validation), full ranking over all items with the "
            "user's history items excluded; fusion fitted on validation targets over the union of each "
            "component's top-{k}, applied to test requests whose history includes the validation item")


class BenchSequencesParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidates: int = Field(100, ge=10)  # each component's top-K pooled for the fusion
    ks: list[int] = [10, 20]
    recall_k: int = Field(100, ge=1)
    seed: int = 0


@dataclass
class Split:
    items: Items
    train: TrainingData
    valid_requests: list[Request]
    valid_targets: np.ndarray
    test_requests: list[Request]
    test_targets: np.ndarray


def load_sequences(path: Path) -> tuple[Items, list[np.ndarray]]:
    """The file through the project's adapter: the catalog and each user's item positions in order."""
    with tempfile.TemporaryDirectory(prefix="bench-sequences-") as folder:
        sequence_source.convert(Path(path), Path(folder))
        catalog = pd.read_csv(Path(folder) / "catalog.csv", dtype=str, keep_default_na=False)
        events = pd.read_csv(Path(folder) / "events.csv", dtype=str, keep_default_na=False)
    items = Items.from_catalog(catalog.drop(columns=["price"]))  # an ID-only catalog has no prices
    events["position"] = events["event_id"].str.rsplit("-", n=1).str[-1].astype(np.int64)
    events["item"] = events["item_id"].map(items.position).astype(np.int64)
    events = events.sort_values(["user_id", "position"], kind="stable")
    sequences = [group.to_numpy() for _, group in events.groupby("user_id", sort=False)["item"]]
    return items, sequences


def leave_one_out(items: Items, sequences: Sequence[np.ndarray]) -> Split:
    """Users with at least three items; the last two never reach the training interactions."""
    kept = [s for s in sequences if len(s) >= 3]
    train_parts = [s[:-2] for s in kept]
    interactions = pd.DataFrame({
        "user": np.repeat(np.arange(len(kept)), [len(part) for part in train_parts]),
        "item": np.concatenate(train_parts),
        "timestamp": np.concatenate([np.arange(len(part)) for part in train_parts]),  # ordinal: order only
    })
    return Split(
        items=items,
        train=TrainingData(items=items, interactions=interactions),
        valid_requests=[Request(history=tuple(s[:-2].tolist())) for s in kept],
        valid_targets=np.array([s[-2] for s in kept]),
        test_requests=[Request(history=tuple(s[:-1].tolist())) for s in kept],
        test_targets=np.array([s[-1] for s in kept]),
    )


def evaluate_top(top_items: np.ndarray, targets: np.ndarray, params: BenchSequencesParams) -> dict[str, float]:
    rankings = [row.tolist() for row in top_items]
    judgments = [{int(target): 1.0} for target in targets]
    return ranking_report(rankings, judgments, ks=params.ks, recall_k=params.recall_k)


def target_gains(candidates: np.ndarray, targets: np.ndarray) -> np.ndarray:
    return (candidates == targets[:, None]).astype(np.float64)


def fit_components(split: Split, settings: Settings) -> tuple[dict[str, Ranker], dict]:
    popularity = Popularity.from_settings(settings).fit(split.train)
    itemcf = ItemCF.from_settings(settings).fit(split.train)
    sasrec = SASRec.from_settings(settings)
    validation = list(zip(split.valid_requests, split.valid_targets.tolist()))
    sasrec.fit(split.train, validation=validation,
               checkpoint_dir=Path(sasrec.params.checkpoint_dir) / "bench-sequences" if sasrec.params.checkpoint_dir else None)
    training = {"sasrec_sequences_per_second": round(sasrec.throughput, 1), "sasrec_epochs": sasrec.history,
                "sasrec_device": sasrec.device.device, "sasrec_resumed_from_epoch": sasrec.resumed_from}
    return {"popularity": popularity, "itemcf": itemcf, "sasrec": sasrec}, training


def run(path: Path, json_out: Path | None, settings: Settings) -> dict:
    params = section(settings, "bench_sequences", BenchSequencesParams)
    fusion_params = section(settings, "fusion", FusionParams)
    items, sequences = load_sequences(path)
    split = leave_one_out(items, sequences)
    result = BenchResult(dataset=Path(path).stem, protocol=PROTOCOL.format(k=params.candidates))
    log.info("sequences bench", extra={"users": len(split.test_requests), "items": len(items),
                                       "train_interactions": len(split.train.interactions)})
    components, training = fit_components(split, settings)

    for name, component in components.items():
        top, _ = component.retrieve(split.test_requests, params.recall_k, exclude_history=True)
        result.add(name, "component", evaluate_top(top, split.test_targets, params))

    valid_candidates = pool_candidates(components, split.valid_requests, params.candidates, exclude_history=True)
    valid_scores = candidate_scores(components, split.valid_requests, valid_candidates)
    fusion = WeightedFusion.from_params(fusion_params).fit(
        valid_scores, target_gains(valid_candidates, split.valid_targets),
        folds=fusion_params.folds, seed=params.seed, metric_k=fusion_params.metric_k)

    test_candidates = pool_candidates(components, split.test_requests, params.candidates, exclude_history=True)
    test_scores = candidate_scores(components, split.test_requests, test_candidates)
    for name, fused in (("fusion_weighted", fusion.score(test_scores)), ("fusion_rrf", rrf(test_scores, fusion_params.rrf_k))):
        rankings = rank_candidates(test_candidates, fused)
        result.add(name, "fusion", ranking_report(rankings, [{int(t): 1.0} for t in split.test_targets],
                                                  ks=params.ks, recall_k=params.recall_k))
    result.extra.update({
        "users": len(split.test_requests), "items": len(items),
        "train_interactions": int(len(split.train.interactions)),
        "fusion": fusion.to_dict(), **training,
    })
    return report(result, json_out)
