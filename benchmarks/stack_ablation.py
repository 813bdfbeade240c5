"""What each group of the recommend stack's features adds, on a bench workspace the stages built.

Usage: python benchmarks/stack_ablation.py WORKSPACE [--json OUT]
(e.g. .shopfusion/bench/recommend_office after `shopfusion bench recommend`).

It reads the workspace's fitted components and history matcher, computes the stack's features of the
valid and the test requests exactly as the fuse and evaluate stages do (ranking.tasks.stack_inputs), then
fits the same LambdaRank stack (the workspace's params, its seed) on the valid requests with groups of
columns left out and reports each one's test NDCG@10. It fits nothing that ships: a measurement only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COMPONENT_SUFFIXES = ("_score", "_z", "_rank")
ABLATIONS = {
    "components only": lambda name: name.endswith(COMPONENT_SUFFIXES),
    "+ last-item and text features": lambda name: not name.startswith(("activity", "history")),
    "+ history length": lambda name: not name.startswith("activity"),
    "+ item activity (all, shipped)": lambda name: True,
}


def main() -> None:
    from pipelines.core.config import load_settings
    from pipelines.ranking import fusion
    from pipelines.ranking.params import load_components
    from pipelines.ranking.tasks import load_matcher, stack_inputs, task_components, task_data

    workspace = Path(sys.argv[1])
    settings = load_settings(workspace / "params.yaml")
    components = load_components(workspace / "models/recall", task_components("recommend", settings.ranking))
    matcher = load_matcher(workspace / "models/fusion", "recommend")
    splits = {split: task_data("recommend", split, workspace / "data/features", components, settings.ranking)
              for split in ("valid", "test")}
    features = {split: stack_inputs(data, matcher) for split, data in splits.items()}
    names = features["valid"][1]
    results = {}
    for label, keep in ABLATIONS.items():
        columns = [index for index, name in enumerate(names) if keep(name)]
        stack = fusion.LambdaRankFusion(settings.fusion.lambdarank, settings.fusion.metric_k).fit(
            features["valid"][0][:, :, columns], [names[i] for i in columns], splits["valid"].gain_matrix,
            seed=settings.features.seed)
        ndcg = fusion.mean_ndcg(stack.score(features["test"][0][:, :, columns]), splits["test"].gain_matrix, 10)
        results[label] = {"features": len(columns), "trees": stack.best_iteration, "ndcg@10": round(ndcg, 4)}
        print(f"{label:34s} features {len(columns):3d}  trees {stack.best_iteration:4d}  test NDCG@10 {ndcg:.4f}",
              flush=True)
    if "--json" in sys.argv:
        Path(sys.argv[sys.argv.index("--json") + 1]).write_text(
            json.dumps({"workspace": str(workspace), "ablations": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
