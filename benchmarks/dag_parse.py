"""Parse time of each DAG file (target: at most 1 s each). Usage: python benchmarks/dag_parse.py [--json OUT]"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    from airflow.dag_processing.dagbag import DagBag

    timings = {}
    for path in sorted((REPO / "dags").glob("*.py")):
        started = time.perf_counter()
        bag = DagBag(dag_folder=str(path))
        timings[path.name] = {"seconds": round(time.perf_counter() - started, 3), "dags": len(bag.dags),
                              "import_errors": len(bag.import_errors)}
    document = {"files": timings, "target_seconds": 1.0,
                "all_within_target": all(t["seconds"] <= 1.0 for t in timings.values())}
    for name, timing in timings.items():
        print(f"{name:32s} {timing['seconds']:7.3f} s  dags={timing['dags']}  import_errors={timing['import_errors']}")
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps(document, indent=2) + "\n")


if __name__ == "__main__":
    main()
