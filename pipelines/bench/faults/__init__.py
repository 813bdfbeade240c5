"""`shopfusion bench faults`: the service and the pipeline under faults, load and bad input, measured.

Each fault of issue #19 is one scenario module here, run against a real multi-worker `bentoml serve` of a
bundle the dvc.yaml stages built (served.py) and a real redis-server; no mocks. A scenario returns a Fault:
{"requests", "errors", "acknowledged", "present", "p95_ms", "baseline_p95_ms", "ok"} plus the named checks
that decide "ok" and the figures behind them. tests/reliability/ runs the same scenarios on the tests' tiny
bundle and asserts each is ok, so `make test` and the benchmark measure one code path.

JSON: {"faults": {name: Fault}, "seconds"}; a table is printed.
"""

from __future__ import annotations

import importlib
import json
import shutil
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pipelines.core.logs import get_logger

log = get_logger(__name__)

# name -> module of pipelines/bench/faults/ with run(context) -> Fault, in the order
SCENARIOS = {
    "logs": "logs",                        # 1. torn and garbage lines, truncated files
    "crash_under_load": "crash",           # 2. workers SIGKILLed under load, then the server
    "redis": "redis",                      # 3. Redis paused and dropped mid-load, down at start, a corrupt SQLite tier
    "disk": "disk",                        # 4. unwritable feedback folder, disk full while serving
    "pii": "pii",                          # 5. PII canaries everywhere a value can land
    "fuzzing": "fuzzing",                  # 6. OpenAPI fuzzing and hostile bodies
    "abuse": "abuse",                      # 7. rate limit, concurrency cap, random keys, random paths
    "slow_clients": "slow_clients",        # 8. trickled headers and bodies
    "data_rules": "data_rules",            # 9. a missing value in every required or typed column
    "airflow": "airflow",                  # 10. the DAGs as a user meets them
    "pipeline": "pipeline",                # 11. override allow-list, promotion lock, key file modes
}


class FaultParams(BaseModel):
    """benchmarks/params.yaml `faults` (the tests pass smaller values)."""

    model_config = ConfigDict(extra="forbid")
    work_dir: str = ".shopfusion/bench/faults"
    pipeline: dict = {}               # params.yaml overrides of the bench shop (dotted keys)
    workers: int = 2
    clients: int = 16                 # concurrent clients of the load scenarios
    load_seconds: float = 30.0        # length of a load phase
    kill_every_seconds: float = 10.0  # crash_under_load: a worker SIGKILLed this often
    fuzz_examples: int = 300          # fuzzing: generated bodies per endpoint
    slow_headers: int = 500           # slow_clients: connections trickling headers
    slow_bodies: int = 100            # slow_clients: connections trickling bodies
    abuse_keys: int = 1000            # abuse: random API keys tried
    abuse_paths: int = 10000          # abuse: requests to random unknown paths
    latency_factor: float = 2.0       # a fault's p95 may be at most this times its baseline


@dataclass
class Fault:
    requests: int = 0
    errors: int = 0
    acknowledged: int | None = None
    present: int | None = None
    p95_ms: float | None = None
    baseline_p95_ms: float | None = None
    checks: dict[str, bool] = field(default_factory=dict)
    figures: dict = field(default_factory=dict)

    def check(self, name: str, holds: bool) -> bool:
        """Record one named condition of the scenario; the fault is ok when every one holds."""
        self.checks[name] = bool(holds)
        return bool(holds)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(self.checks.values())

    def document(self) -> dict:
        out = asdict(self)
        out["ok"] = self.ok
        return out


@dataclass
class FaultContext:
    bundle: Path                      # the serving bundle (serving/bundle.py layout)
    work: Path                        # scratch space; each scenario gets a fresh folder of its own
    params: FaultParams
    pipeline_params: Path | None = None  # the params.yaml the bundle was built with (data_rules, pipeline)

    def folder(self, name: str) -> Path:
        path = self.work / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path

    def queries(self, limit: int = 200) -> list[str]:
        """Search queries a shopper of this catalog would type: first words of its titles."""
        import pandas as pd

        titles = pd.read_parquet(self.bundle / "items.parquet")["title"].astype(str)
        words = titles.str.split().str[:2].str.join(" ")
        return list(dict.fromkeys(words))[:limit]

    def item_ids(self, limit: int = 200) -> list[str]:
        import pandas as pd

        return pd.read_parquet(self.bundle / "items.parquet")["item_id"].astype(str).head(limit).tolist()


def run_scenario(name: str, context: FaultContext) -> Fault:
    module = importlib.import_module(f"pipelines.bench.faults.{SCENARIOS[name]}")
    started = time.perf_counter()
    try:
        fault = module.run(context)
    except Exception as exc:  # a scenario that breaks is a failed fault, reported, never a lost run
        log.error("fault scenario failed", extra={"fault": name, "error": repr(exc)})
        fault = Fault(checks={"ran": False}, figures={"error": repr(exc), "traceback": traceback.format_exc()[-2000:]})
    fault.figures["seconds"] = round(time.perf_counter() - started, 1)
    return fault


def build_bundle(workspace: Path, overrides: dict, revision: str = "faults") -> tuple[Path, Path]:
    """The bench shop (or the source `overrides` name) through dvc.yaml's stages up to evaluate
    (benchmarks/workspace.py), assembled into a serving bundle as `package` assembles it, `revision` its version;
    returns (bundle, the workspace's params.yaml)."""
    from pipelines.bench.workspace import run_stages, write_params
    from pipelines.core.config import load_settings
    from pipelines.serving.bundle import assemble
    from pipelines.stages.package import bundle_contents

    params_path = write_params(workspace, {"ingest.source": "sample", **overrides})
    run_stages(workspace, "evaluate")
    settings = load_settings(params_path)
    contents = bundle_contents(settings)
    metrics = json.loads((workspace / "metrics" / "evaluate.json").read_text(encoding="utf-8"))
    bundle = workspace / "bundle"
    assemble(workspace / "data" / "features", workspace / "models" / "recall", workspace / "models" / "fusion", None,
             bundle, contents["components"], revision, contents, metrics)
    return bundle, params_path


def use_shop_key(workspace: Path) -> None:
    """The servers this run starts read the bench shop's pseudonym key, as `make serve` points the service at
    the pipeline's (SHOPFUSION_PII_KEY_FILE): without it /events cannot pseudonymize and answers 503."""
    import os

    key_file = workspace / ".secrets" / "pii.key"
    if key_file.exists() and not os.environ.get("SHOPFUSION_PII_KEY"):
        os.environ["SHOPFUSION_PII_KEY_FILE"] = str(key_file)


def print_table(document: dict) -> None:
    table = Table(title=f"faults ({document['seconds']} s)")
    for column in ("fault", "requests", "errors", "acknowledged", "present", "p95 ms", "baseline p95 ms", "ok"):
        table.add_column(column, justify="left" if column == "fault" else "right")
    for name, fault in document["faults"].items():
        cells = [fault[key] for key in ("requests", "errors", "acknowledged", "present", "p95_ms", "baseline_p95_ms")]
        failed = [check for check, holds in fault["checks"].items() if not holds]
        table.add_row(name, *("" if cell is None else str(cell) for cell in cells),
                      "yes" if fault["ok"] else "NO: " + ", ".join(failed))
    Console().print(table)


def run_faults(params: FaultParams, names: list[str] | None, json_out: Path | None,
               bundle: Path | None = None) -> dict:
    names = names or list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise ValueError(f"unknown faults {unknown}; known: {', '.join(SCENARIOS)}")
    started = time.perf_counter()
    work = Path(params.work_dir).resolve()
    pipeline_params = None
    if bundle is None:
        bundle, pipeline_params = build_bundle(work / "shop", params.pipeline)
        use_shop_key(work / "shop")
    context = FaultContext(Path(bundle), work / "runs", params, pipeline_params)
    faults = {}
    with Progress(transient=True) as progress:
        task = progress.add_task("faults", total=len(names))
        for name in names:
            progress.update(task, description=f"fault: {name}")
            faults[name] = run_scenario(name, context).document()
            log.info("fault measured", extra={"fault": name, "ok": faults[name]["ok"]})
            progress.advance(task)
    document = {"faults": faults, "seconds": round(time.perf_counter() - started, 1)}
    print_table(document)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    return document
