"""Bandit benchmark in the click simulator built from a real dataset (e.g. Amazon Office).

Online: every policy serves the same stream of simulated users (same seed) for `impressions`
impressions, learning from each; clicks, reward and regret against the attraction-knowing oracle
are recorded, and the curves written as CSV under reports/feedback/. The REINFORCE re-ranker is
trained first on an exploration log of the static fusion (epsilon-mixed) and served frozen.

Off-policy: a second, independent exploration log of the same logging policy; each policy's final
snapshot is evaluated on it with SNIPS (and IPS) and a 95% interval, next to its exact value in the
simulator (its marginal slot propensities times examination times attraction, averaged over all
users).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from pipelines.bench.workspace import bench_params
from pipelines.core.config import Settings
from pipelines.core.logs import get_logger
from pipelines.feedback import FeedbackParams, ope
from pipelines.feedback.policies import (
    LinearRewardModel,
    SlatePolicy,
    StaticFusion,
    make_policy,
    position_weights,
)
from pipelines.feedback.reinforce import LoggedSlates, train_reinforce
from pipelines.feedback.simulator import (
    ClickSimulator,
    OnlineRun,
    build_simulator,
    load_rechorus,
    run_policy,
)

log = get_logger(__name__)

BANDITS = ("epsilon_greedy", "linucb", "thompson")


class BanditBenchParams(BaseModel):
    """benchmarks/params.yaml `bandit:` (the policies, simulator and estimators are params.yaml `feedback:`)."""

    model_config = ConfigDict(extra="forbid")

    impressions: int = Field(ge=100)  # online impressions per policy
    logged_impressions: int = Field(ge=100)  # exploration log for REINFORCE and the estimators
    curve_points: int = Field(ge=2)
    bootstrap: int = Field(ge=0)  # 0: normal approximation intervals
    reports_dir: str
    seed: int
CURVES_FILE = "online_curves.csv"


def _logging_policy(simulator: ClickSimulator, params: FeedbackParams, seed: int) -> StaticFusion:
    return StaticFusion(simulator.context(0).features.shape[1], params.exploration, params.policy,
                        epsilon=params.reinforce.logging_epsilon, seed=seed)


def exploration_log(simulator: ClickSimulator, params: FeedbackParams, impressions: int, seed: int) -> OnlineRun:
    return run_policy(simulator, _logging_policy(simulator, params, seed), impressions, seed, learn=False)


def _policies(simulator: ClickSimulator, params: FeedbackParams, logged_impressions: int,
              seed: int) -> tuple[dict[str, SlatePolicy], LoggedSlates]:
    dimension = simulator.context(0).features.shape[1]
    policies: dict[str, SlatePolicy] = {"static": StaticFusion(dimension, params.exploration, params.policy)}
    for kind in BANDITS:
        policies[kind] = make_policy(kind, dimension, params.exploration, params.policy, seed=seed)
    training_log = exploration_log(simulator, params, logged_impressions, seed + 1)
    logged = LoggedSlates.from_contexts([simulator.context(u) for u in training_log.users], training_log.candidates,
                                        training_log.rewards, training_log.propensities)
    policies["reinforce"] = train_reinforce(logged, params.exploration, params.reinforce).policy(
        params.exploration, params.policy, seed=seed)
    return policies, logged


def reward_model(logged: LoggedSlates, params: FeedbackParams) -> LinearRewardModel:
    """The doubly robust estimator's reward model, fitted on the training log (not the evaluation log)."""
    model = LinearRewardModel(logged.features.shape[2], params.policy.ridge)
    served = np.take_along_axis(logged.features, logged.candidates[:, :, None], axis=1)
    weights = np.broadcast_to(position_weights(logged.candidates.shape[1], params.policy.position_bias),
                              logged.candidates.shape)
    model.update(served.reshape(-1, served.shape[2]), logged.rewards.reshape(-1), weights.reshape(-1))
    return model


def _curve_rows(name: str, run: OnlineRun, points: int) -> list[dict]:
    clicks = run.clicks.sum(axis=1).cumsum()
    rewards = run.rewards.sum(axis=1).cumsum()
    regret = (run.oracle - run.expected).cumsum()
    checkpoints = np.unique(np.linspace(1, len(clicks), points).astype(int)) - 1
    return [{"policy": name, "impressions": int(i + 1), "cumulative_clicks": int(clicks[i]),
             "cumulative_reward": round(float(rewards[i]), 3), "cumulative_regret": round(float(regret[i]), 3)}
            for i in checkpoints]


def write_curves(rows: list[dict], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CURVES_FILE
    with path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_curves(rows: list[dict], folder: Path) -> list[Path]:
    """Cumulative reward and regret against impressions, one line per policy, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for measure in ("cumulative_reward", "cumulative_regret"):
        figure, axis = plt.subplots(figsize=(7, 4.5))
        for policy in dict.fromkeys(row["policy"] for row in rows):
            points = [row for row in rows if row["policy"] == policy]
            axis.plot([row["impressions"] for row in points], [row[measure] for row in points], label=policy)
        axis.set_xlabel("impressions")
        axis.set_ylabel(measure.replace("_", " "))
        axis.set_title(f"Click simulator: {measure.replace('_', ' ')} by policy")
        axis.legend()
        axis.grid(alpha=0.3)
        paths.append(folder / f"{measure}.png")
        figure.savefig(paths[-1], dpi=100, bbox_inches="tight")
        plt.close(figure)
    return paths


def off_policy(simulator: ClickSimulator, policy: SlatePolicy, logged: OnlineRun, model: LinearRewardModel,
               bootstrap: int, seed: int) -> dict:
    """SNIPS, IPS and DR of a frozen policy on the exploration log, and its exact value in the simulator."""
    marginals = {int(user): policy.marginals(simulator.context(user)) for user in range(simulator.n_users)}
    slot_weights = position_weights(simulator.slate_size, policy.params.position_bias)
    predicted = {u: slot_weights[:, None] * model.mean(simulator.context(u).features)[None, :] for u in marginals}
    truth = float(np.mean([(marginals[u] * simulator.examination[:, None] * simulator.attraction[u]).sum()
                           for u in range(simulator.n_users)]) * simulator.reward_per_click)
    slots = np.arange(logged.candidates.shape[1])
    target = np.array([marginals[int(u)][slots, c] for u, c in zip(logged.users, logged.candidates)])
    snips = ope.snips(logged.rewards, target, logged.propensities, bootstrap=bootstrap, seed=seed)
    ips = ope.ips(logged.rewards, target, logged.propensities)
    model_logged = np.array([predicted[int(u)][slots, c] for u, c in zip(logged.users, logged.candidates)])
    direct = np.array([(marginals[int(u)] * predicted[int(u)]).sum() for u in logged.users])
    dr = ope.doubly_robust(logged.rewards, target, logged.propensities, model_logged, direct)
    return {"true_value": round(truth, 5), "ope_snips": round(snips.value, 5),
            "ope_ci": [round(snips.low, 5), round(snips.high, 5)], "ope_ips": round(ips.value, 5),
            "ope_dr": round(dr.value, 5), "ope_dr_ci": [round(dr.low, 5), round(dr.high, 5)],
            "ope_covers_truth": snips.covers(truth)}


def run_bandit_bench(path: Path, json_out: Path | None, settings: Settings, bench_file: Path | None = None) -> dict:
    started = time.perf_counter()
    params = settings.feedback
    bench = bench_params("bandit", BanditBenchParams, bench_file)
    simulator = build_simulator(load_rechorus(Path(path)), settings)
    policies, training_log = _policies(simulator, params, bench.logged_impressions, bench.seed)
    model = reward_model(training_log, params)
    results, curves, runs = {}, [], {}
    with Progress(transient=True) as progress:
        for name, policy in policies.items():
            task = progress.add_task(f"online {name}", total=bench.impressions)
            learn = name not in ("static", "reinforce")
            runs[name] = run_policy(simulator, policy, bench.impressions, bench.seed + 2, learn=learn,
                                    progress=lambda: progress.advance(task))
            curves += _curve_rows(name, runs[name], bench.curve_points)
    static_clicks = int(runs["static"].clicks.sum())
    evaluation_log = exploration_log(simulator, params, bench.logged_impressions, bench.seed + 3)
    for name, policy in policies.items():
        run = runs[name]
        results[name] = {
            "clicks": int(run.clicks.sum()), "reward": round(float(run.rewards.sum()), 2),
            "clicks_vs_static": round(float(run.clicks.sum()) / max(static_clicks, 1) - 1.0, 4),
            "regret": round(float((run.oracle - run.expected).sum()), 2),
            "online_mean_expected_reward": round(float(run.expected.mean()), 5),
            **off_policy(simulator, policy, evaluation_log, model, bench.bootstrap, bench.seed),
        }
    curves_path = write_curves(curves, Path(bench.reports_dir))
    plots = plot_curves(curves, Path(bench.reports_dir))
    best = max(BANDITS, key=lambda name: results[name]["clicks"])
    document = {
        "impressions": bench.impressions, "users": simulator.n_users, "slate_size": simulator.slate_size,
        "candidates": len(simulator.context(0)), "logged_impressions": bench.logged_impressions,
        "logging_policy": f"static fusion, epsilon={params.reinforce.logging_epsilon}",
        "oracle_mean_reward": round(float(runs["static"].oracle.mean()), 5),
        "policies": results,
        "targets": {"best_bandit": best, "best_bandit_clicks_vs_static": results[best]["clicks_vs_static"],
                    "clicks_target_met": results[best]["clicks_vs_static"] >= 0.05,
                    "snips_covering_truth": sum(r["ope_covers_truth"] for r in results.values()),
                    "snips_target_met": sum(r["ope_covers_truth"] for r in results.values()) >= 3},
        "curves": str(curves_path), "plots": [str(path) for path in plots], "seconds": round(time.perf_counter() - started, 1),
    }
    _print(document)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    log.info("bandit bench done", extra={"seconds": document["seconds"], "best": best})
    return document


def _print(document: dict) -> None:
    table = Table(title=f"bandit re-ranking: {document['impressions']} simulated impressions per policy "
                        f"({document['seconds']} s)")
    for column in ("policy", "clicks", "vs static", "regret", "true value", "SNIPS", "95% CI", "covers", "DR"):
        table.add_column(column, justify="left" if column == "policy" else "right")
    for name, row in document["policies"].items():
        table.add_row(name, str(row["clicks"]), f"{row['clicks_vs_static']:+.1%}", f"{row['regret']:.0f}",
                      f"{row['true_value']:.4f}", f"{row['ope_snips']:.4f}",
                      f"[{row['ope_ci'][0]:.4f}, {row['ope_ci'][1]:.4f}]", "yes" if row["ope_covers_truth"] else "no",
                      f"{row['ope_dr']:.4f}")
    Console(width=120).print(table)
