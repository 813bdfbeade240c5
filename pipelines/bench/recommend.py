"""Recommendation benchmark on a ReChorus-layout folder (e.g. Amazon Office): the pipeline that ships.

Protocol. The dvc.yaml stages run in a workspace whose source is the folder (ingest --source rechorus;
benchmarks/params.yaml `recommend.pipeline` sets what the dataset needs): the adapter writes the given
holdout (one dev and one test row per user, each with 99 sampled negatives), features holds those rows
out as they are given (features.interaction_split: given: dev -> valid, test -> test, the rest train)
with each row's candidates = its positive among its negatives in a seeded random order. Recall fits
every component once on the train split; fuse fits the fusions on the valid rows (history = train);
evaluate ranks each test positive among its 99 given negatives (history = train + valid). The result is
evaluate's own figures, the fusion the bento serves (the fuse stage's served.json) marked as shipped.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.bench import run_pipeline_benchmark

PROTOCOL = ("the dvc.yaml stages on a ReChorus folder; each test positive ranked among its given negatives; "
            "history = train + dev; components fitted once on train, fusions on the dev rows")


def dataset_name(path: Path) -> str:
    found = sorted(Path(path).glob("*.item2index"))
    return found[0].stem if found else Path(path).name


def run(path: Path, json_out: Path | None, bench_params: Path | None = None) -> dict:
    return run_pipeline_benchmark(
        "recommend", "rechorus", path, "recommend", dataset_name(path),
        PROTOCOL, json_out, bench_params)
