"""Benchmarks on real data: every model trained inside the run from the training part only.

Each benchmark returns one result in the common form, written with --json and printed as a table:
{"dataset": str, "protocol": str, "seconds": float,
 "methods": {"<name>": {"kind": "component" | "fusion", "ndcg@10": float, ...}}}
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

    def finish(self) -> dict:
        self.seconds = round(time.perf_counter() - self.started, 1)
        return {"dataset": self.dataset, "protocol": self.protocol, "seconds": self.seconds,
                "methods": self.methods, **self.extra}


def report(result: BenchResult, json_out: Path | None) -> dict:
    """Finish the run, print the table, and write the JSON when asked."""
    document = result.finish()
    metric_names = sorted({key for m in result.methods.values() for key in m if key != "kind"})
    table = Table(title=f"{result.dataset}: {result.protocol} ({document['seconds']} s)")
    table.add_column("method")
    table.add_column("kind")
    for name in metric_names:
        table.add_column(name, justify="right")
    for method, values in result.methods.items():
        table.add_row(method, values["kind"], *(f"{values[n]:.4f}" if n in values else "" for n in metric_names))
    Console().print(table)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return document
