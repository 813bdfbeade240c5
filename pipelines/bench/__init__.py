"""Benchmarks on real data, run through the pipeline that ships (see workspace.py).

Each benchmark returns one result in the common form, written with --json and printed as a table:
{"dataset": str, "protocol": str, "seconds": float,
 "methods": {"<name>": {"kind": "component" | "fusion", "ndcg@10": float, ...}},
 the served method with "shipped": true and "features": the names of its input features}
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table


@dataclass
class BenchResult:
    dataset: str
    protocol: str
    methods: dict[str, dict] = field(default_factory=dict)
    extra: dict = field(default_factory=dict)  # anything else worth keeping (throughput, splits)
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    def add(self, name: str, kind: str, metrics: dict[str, float]) -> None:
        assert kind in ("component", "fusion"), kind
        self.methods[name] = {"kind": kind, **{key: round(float(v), 5) for key, v in metrics.items()}}

    def mark_shipped(self, name: str, features: list[str]) -> None:
        """The method the bento serves, and what it reads."""
        self.methods[name].update({"shipped": True, "features": list(features)})

    def finish(self) -> dict:
        self.seconds = round(time.perf_counter() - self.started, 1)
        return {"dataset": self.dataset, "protocol": self.protocol, "seconds": self.seconds,
                "methods": self.methods, **self.extra}


def report(result: BenchResult, json_out: Path | None) -> dict:
    """Finish the run, print the table, and write the JSON when asked."""
    document = result.finish()
    metric_names = sorted({key for m in result.methods.values() for key, value in m.items()
                           if key != "kind" and isinstance(value, float)})
    table = Table(title=f"{result.dataset}: {result.protocol} ({document['seconds']} s)")
    table.add_column("method")
    table.add_column("kind")
    for name in metric_names:
        table.add_column(name, justify="right")
    for method, values in result.methods.items():
        kind = values["kind"] + (" (shipped)" if values.get("shipped") else "")
        table.add_row(method, kind, *(f"{values[n]:.4f}" if n in values else "" for n in metric_names))
    Console().print(table)
    if document.get("slices"):
        Console().print(slice_table(document["slices"], result.methods))
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document


def slice_table(slices: dict, methods: dict) -> Table:
    """NDCG@10 of every method on each slice of the test requests (rows: slices)."""
    names = list(methods)
    table = Table(title="NDCG@10 by slice")
    table.add_column("slice")
    table.add_column("requests", justify="right")
    for name in names:
        table.add_column(name + (" (shipped)" if methods[name].get("shipped") else ""), justify="right")
    for slice_name, figures in slices.items():
        table.add_row(slice_name, str(figures["requests"]),
                      *(f"{figures[name]['ndcg@10']:.4f}" if name in figures else "" for name in names))
    return table


def pipeline_result(workspace: Path, task: str, dataset: str, protocol: str, stage_seconds: dict) -> BenchResult:
    """The workspace's evaluate metrics of one task as a benchmark result, the served method marked.

    Reads only what the stages wrote: metrics/evaluate.json, the fitted fusion the bento would serve
    (the fuse stage's served.json) and the stages' own summaries.
    """
    from pipelines.ranking.tasks import load_fusions, load_served

    evaluated = json.loads((workspace / "metrics" / "evaluate.json").read_text(encoding="utf-8"))[task]
    result = BenchResult(dataset, protocol)
    for name, values in evaluated.items():
        if isinstance(values, dict) and values.get("kind") in ("component", "fusion"):
            result.add(name, values["kind"], {key: value for key, value in values.items() if key != "kind"})
    served = load_served(workspace / "models" / "fusion", task)
    weighted, stacked = load_fusions(workspace / "models" / "fusion", task)
    result.mark_shipped(served, stacked.feature_names if served == "lambdarank" else list(weighted.weights))
    if "relevance" in evaluated:
        result.methods[served]["rmse"] = evaluated["relevance"]["rmse"]
        result.extra["relevance"] = evaluated["relevance"]
    components = [values["ndcg@10"] for values in result.methods.values() if values["kind"] == "component"]
    shipped = result.methods[served]["ndcg@10"]
    result.extra["shipped"] = {"method": served, "ndcg@10": shipped,
                               "above_every_component": bool(components) and shipped > max(components)}
    result.extra["stage_seconds"] = stage_seconds
    result.extra["requests"] = evaluated.get("requests")
    if "slices" in evaluated:  # evaluate's slices of the test requests (pipelines/ranking/slices.py)
        result.extra["slices"] = evaluated["slices"]
    # "features_stage": the features stage's summary (split sizes); a method's "features" are its input names
    summaries = {"features_stage": workspace / "data" / "features" / "summary.json",
                 "finetune": workspace / "metrics" / "finetune.json", "distill": workspace / "metrics" / "distill.json"}
    for key, path in summaries.items():
        if path.exists():
            result.extra[key] = json.loads(path.read_text(encoding="utf-8"))
    return result


def run_pipeline_benchmark(name: str, source: str, path: Path, task: str, dataset: str, protocol: str,
                           json_out: Path | None, bench_params: Path | None = None) -> dict:
    """Run the dvc.yaml stages up to evaluate on one dataset and report the task's figures.

    name: the benchmark's section of benchmarks/params.yaml (its work_dir, where "{dataset}" is replaced
    by `dataset`, and its `pipeline` overrides); source and path: what ingest reads.
    """
    import tempfile

    from pipelines.bench.workspace import bench_settings, run_stages, write_params

    settings = bench_settings(name, bench_params)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"shopfusion-{name}-") as temporary:
        work_dir = settings.get("work_dir")
        workspace = Path(work_dir.format(dataset=dataset) if work_dir else temporary).resolve()
        overrides = {"ingest.source": source, "ingest.path": str(Path(path).resolve()), **settings.get("pipeline", {})}
        write_params(workspace, overrides)
        seconds = run_stages(workspace, "evaluate")
        result = pipeline_result(workspace, task, dataset, protocol, seconds)
    result.started = started
    return report(result, json_out)
