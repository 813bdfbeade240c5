"""Search benchmark on Home Depot: the pipeline that ships, measured on unseen queries over the full catalog.

Protocol. The dvc.yaml stages run in a workspace whose source is the Home Depot file (ingest
--source home-depot; benchmarks/params.yaml `search.pipeline` sets its budgets): features holds out
a seeded 20 % of the unique normalized queries as test and 16 % as validation; finetune and recall
learn from the rest, fuse fits the fusions and the relevance model on validation, evaluate ranks
the test queries' candidates from the full catalog (54,667 products). Gain = relevance - 1 on the
original 1..3 scale (the adapter's 0..2); unjudged = 0. The result is evaluate's own figures, the
the fusion the bento serves (the fuse stage's served.json) marked as shipped, and the relevance model's RMSE.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.bench import run_pipeline_benchmark

PROTOCOL = ("the dvc.yaml stages on Home Depot; unseen 20% of normalized queries (seeded), candidates from the "
            "full catalog, gain = relevance - 1 (1..3 scale)")


def run(path: Path, json_out: Path | None, bench_params: Path | None = None) -> dict:
    return run_pipeline_benchmark(
        "search", "home-depot", path, "search", "home-depot",
        PROTOCOL, json_out, bench_params)
