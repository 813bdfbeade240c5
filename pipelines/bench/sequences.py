"""Sequential recommendation benchmark on an ID-only sequence file (S3-Rec format, e.g. Amazon Beauty).

Protocol. The dvc.yaml stages run in a workspace whose source is the file (ingest --source sequences;
benchmarks/params.yaml `sequences.pipeline` sets what the dataset needs): features holds out by
leave-one-out (features.interaction_split: leave_one_out: each user's last item is test, the second
last valid, the rest train). Recall fits every component once on train; fuse fits the fusions on the
valid targets (history = train); evaluate ranks each test target against the full catalog with the
user's history items excluded (history = train + valid; the fusions rank the union of each component's
top ranking.candidates_per_component). The result is evaluate's own figures, the method
serving.fusion.recommend names marked as shipped.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from pipelines.bench import pipeline_result, report
from pipelines.bench.workspace import bench_settings, run_stages, write_params

PROTOCOL = ("the dvc.yaml stages on a sequence file; leave-one-out (last item test, second last valid), full "
            "ranking over all items with the user's history excluded; components fitted on train, fusions on valid")


def run(path: Path, json_out: Path | None, bench_params: Path | None = None) -> dict:
    settings = bench_settings("sequences", bench_params)
    dataset = Path(path).stem
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="shopfusion-sequences-") as temporary:
        work_dir = settings.get("work_dir")
        workspace = Path(work_dir.format(dataset=dataset) if work_dir else temporary).resolve()
        overrides = {"ingest.source": "sequences", "ingest.path": str(Path(path).resolve()),
                     **settings.get("pipeline", {})}
        write_params(workspace, overrides)
        seconds = run_stages(workspace, "evaluate")
        result = pipeline_result(workspace, "recommend", dataset, PROTOCOL, seconds)
    result.started = started
    return report(result, json_out)
