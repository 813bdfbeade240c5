"""Sequential recommendation benchmark on an ID-only sequence file (S3-Rec format, e.g. Amazon Beauty).

Protocol. The dvc.yaml stages run in a workspace whose source is the file (ingest --source sequences;
benchmarks/params.yaml `sequences.pipeline` sets what the dataset needs): features holds out by
leave-one-out (features.interaction_split: leave_one_out: each user's last item is test, the second
last valid, the rest train). Recall fits every component once on train; fuse fits the fusions on the
valid targets (history = train); evaluate ranks each test target against the full catalog with the
user's history items excluded (history = train + valid; the fusions rank the union of each component's
top ranking.candidates_per_component). The result is evaluate's own figures, the method
fusion the bento serves (the fuse stage's served.json) marked as shipped.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.bench import run_pipeline_benchmark

PROTOCOL = ("the dvc.yaml stages on a sequence file; leave-one-out (last item test, second last valid), full "
            "ranking over all items with the user's history excluded; components fitted on train, fusions on valid")


def run(path: Path, json_out: Path | None, bench_params: Path | None = None) -> dict:
    return run_pipeline_benchmark(
        "sequences", "sequences", path, "recommend", Path(path).stem,
        PROTOCOL, json_out, bench_params)
