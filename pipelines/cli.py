"""The `shopfusion` command: a thin typer app, each command calls one stage function."""

from __future__ import annotations

import json
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Optional

import typer

from pipelines.core import logs
from pipelines.core.config import load_settings
from pipelines.core.errors import DataError

app = typer.Typer(help="ShopFusion: e-commerce search and recommendation pipeline.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

ParamsOption = typer.Option(None, "--params", help="params.yaml to use (default: ./params.yaml or $SHOPFUSION_PARAMS)")


def _offline() -> None:
    for name, value in (("HF_HUB_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"), ("BENTOML_DO_NOT_TRACK", "true"),
                        ("DVC_NO_ANALYTICS", "1"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(name, value)


def stage(function):
    """Run a command with structured logs; bad input ends in one line on stderr and exit code 2."""

    @wraps(function)
    def wrapper(*args, **kwargs):
        _offline()
        logs.configure(os.environ.get("SHOPFUSION_LOG_LEVEL", "INFO"))
        try:
            return function(*args, **kwargs)
        except DataError as error:
            if error.details is not None:
                _print_json(error.details)
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper


def _write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _print_json(value) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")


@app.command()
@stage
def ingest(
    out: Path = typer.Option(..., "--out", help="folder for catalog.csv, events.csv, queries.csv"),
    source: Optional[str] = typer.Option(None, help="sample | home-depot | rechorus | sequences | stream (the stream "
                                         "sink's events added to params ingest.stream_base; default: params ingest.source)"),
    path: Optional[str] = typer.Option(None, help="the real dataset's folder or file; for stream the sink's folder "
                                       "(default: params ingest.path, for stream else params stream.sink_path)"),
    params: Optional[Path] = ParamsOption,
):
    """Write a source as the three canonical raw tables."""
    from pipelines.stages.ingest import ingest as run_ingest

    settings = load_settings(params)
    counts = run_ingest(source, out, settings, path)
    _print_json(counts)


@app.command()
@stage
def validate(
    raw: Path = typer.Option(..., "--raw", help="folder with the raw tables"),
    out: Path = typer.Option(..., "--out", help="folder for valid/, quarantine/, Data Docs and report.json"),
    metrics: Optional[Path] = typer.Option(None, help="also write the counts here (a DVC metrics file)"),
    params: Optional[Path] = ParamsOption,
):
    """Run the GX suites; split valid and quarantined rows; print the counts as JSON."""
    from pipelines.stages.validate import validate as run_validate

    _print_json(run_validate(raw, out, load_settings(params), metrics))


@app.command()
@stage
def clean(
    valid: Path = typer.Option(..., "--valid", help="folder of valid/<table>.parquet from validate"),
    out: Path = typer.Option(..., "--out", help="folder for the clean tables"),
    metrics: Optional[Path] = typer.Option(None, help="also write the repair counts here (a DVC metrics file)"),
    params: Optional[Path] = ParamsOption,
):
    """Dedupe, repair text, normalize prices and timestamps, sessionize, mask PII."""
    from pipelines.stages.clean import clean as run_clean

    _print_json(run_clean(valid, out, load_settings(params), metrics))


@app.command()
@stage
def features(
    cleaned: Path = typer.Option(Path("data/clean"), "--clean", help="clean's output folder"),
    out: Path = typer.Option(Path("data/features"), "--out", help="folder for the model-ready tables"),
    params: Optional[Path] = ParamsOption,
):
    """Item table, interactions and judgments with their train/valid/test splits, user profiles."""
    from pipelines.stages.features import build_features

    _print_json(build_features(cleaned, out, load_settings(params)))


@app.command()
@stage
def finetune(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="features' output folder"),
    out: Path = typer.Option(Path("models/finetune"), "--out", help="folder for bi_encoder/ and cross_encoder/"),
    metrics: Optional[Path] = typer.Option(None, help="also write examples/s, steps and losses here (DVC metrics)"),
    params: Optional[Path] = ParamsOption,
):
    """Fine-tune the MiniLM bi-encoder and the cross-encoder re-ranker on the training split."""
    from pipelines.stages.finetune import finetune as run_finetune

    _print_json(run_finetune(features_dir, out, load_settings(params), metrics))


@app.command()
@stage
def recall(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="features' output folder"),
    out: Path = typer.Option(Path("models/recall"), "--out", help="folder for one subfolder per component"),
    params: Optional[Path] = ParamsOption,
):
    """Fit every recall component on the training split and save it."""
    from pipelines.stages.recall import fit_recall

    _print_json(fit_recall(features_dir, out, load_settings(params)))


@app.command()
@stage
def distill(
    recall_dir: Path = typer.Option(Path("models/recall"), "--recall", help="recall's output folder (the dense teacher)"),
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="features' output folder"),
    out: Path = typer.Option(Path("models/student"), "--out", help="folder for the student (model/, student.json)"),
    metrics: Optional[Path] = typer.Option(None, help="also write the summary here (a DVC metrics file)"),
    params: Optional[Path] = ParamsOption,
):
    """Distil the dense teacher into a smaller query encoder; compare speed and NDCG@10 on the validation split."""
    from pipelines.stages.distill import distill as run_distill

    summary = run_distill(recall_dir, features_dir, out, load_settings(params))
    if metrics:
        _write_json(metrics, summary)
    _print_json(summary)


@app.command()
@stage
def fuse(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="features' output folder"),
    recall_dir: Path = typer.Option(Path("models/recall"), "--recall", help="recall's output folder"),
    out: Path = typer.Option(Path("models/fusion"), "--out", help="folder for the fitted fusions"),
    params: Optional[Path] = ParamsOption,
):
    """Fit the weighted fusion (cross-validated) and the LambdaRank stack on the validation split."""
    from pipelines.stages.fuse import fit_fusion

    _print_json(fit_fusion(features_dir, recall_dir, out, load_settings(params)))


@app.command()
@stage
def evaluate(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="features' output folder"),
    recall_dir: Path = typer.Option(Path("models/recall"), "--recall", help="recall's output folder"),
    fusion_dir: Path = typer.Option(Path("models/fusion"), "--fusion", help="fuse's output folder"),
    metrics_path: Path = typer.Option(Path("metrics/evaluate.json"), "--metrics", help="DVC metrics file"),
    plot: Path = typer.Option(Path("plots/ndcg_at_k.csv"), "--plot", help="DVC plot of NDCG@k"),
    params: Optional[Path] = ParamsOption,
):
    """Every component and fusion on the held-out test split: DVC metrics and an NDCG@k plot."""
    from pipelines.stages.evaluate import evaluate as run_evaluate

    _print_json(run_evaluate(features_dir, recall_dir, fusion_dir, metrics_path, plot, load_settings(params)))


@app.command()
@stage
def package(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="features' output folder"),
    recall_dir: Path = typer.Option(Path("models/recall"), "--recall", help="recall's output folder"),
    fusion_dir: Path = typer.Option(Path("models/fusion"), "--fusion", help="fuse's output folder"),
    student_dir: Optional[Path] = typer.Option(Path("models/student"), "--student", help="distill's output folder"),
    metrics: Path = typer.Option(Path("metrics/evaluate.json"), help="the run's offline metrics"),
    out: Path = typer.Option(Path("bentos"), "--out", help="folder for shopfusion-bento.tar and bento.json"),
    params: Optional[Path] = ParamsOption,
):
    """Build the BentoML bento from the run's artifacts and export it."""
    from pipelines.stages.package import package as build

    _print_json({key: value for key, value in build(features_dir, recall_dir, fusion_dir, student_dir, metrics, out,
                                                      load_settings(params)).items() if key != "metrics"})


@app.command()
@stage
def audit(
    raw: Path = typer.Option(Path("data/raw"), help="raw folder with the generator's defects.csv"),
    validated: Path = typer.Option(Path("data/validated"), help="validate's output folder"),
    cleaned: Path = typer.Option(Path("data/clean"), help="clean's output folder"),
    out: Optional[Path] = typer.Option(None, help="also write the table here as JSON"),
    params: Optional[Path] = ParamsOption,
):
    """Account for every defect the sample generator injected: quarantined or repaired."""
    from pipelines.stages.audit import audit_defects, print_audit

    report = audit_defects(raw, validated, cleaned, load_settings(params))
    print_audit(report)
    if out:
        _write_json(out, report)
    if report["unaccounted"]:
        raise DataError(f"{raw / 'defects.csv'}: {report['unaccounted']} injected defect rows are not accounted for")


bench_app = typer.Typer(help="Benchmarks on the real datasets (every model trained inside the run).",
                        no_args_is_help=True)
app.add_typer(bench_app, name="bench")

JsonOption = typer.Option(None, "--json", help="write the result here as JSON")
BenchParamsOption = typer.Option(None, "--bench-params", help="benchmark settings (default: benchmarks/params.yaml)")


@bench_app.command("search")
@stage
def bench_search(
    path: Path = typer.Option(Path("../shared/datasets/home-depot-search-relevance"), help="Home Depot folder or train.csv"),
    json_out: Optional[Path] = JsonOption,
    bench_params: Optional[Path] = BenchParamsOption,
):
    """Search on Home Depot: the dvc.yaml stages in a workspace; unseen test queries, full catalog."""
    from pipelines.bench import search

    search.run(path, json_out, bench_params)


@bench_app.command("recommend")
@stage
def bench_recommend(
    path: Path = typer.Option(Path("../shared/datasets/amazon-office"), help="a folder in the amazon-office layout"),
    json_out: Optional[Path] = JsonOption,
    bench_params: Optional[Path] = BenchParamsOption,
):
    """Recommendation on a ReChorus folder: the dvc.yaml stages in a workspace; each test positive ranked
    among its 99 given negatives."""
    from pipelines.bench import recommend

    recommend.run(path, json_out, bench_params)


@bench_app.command("sequences")
@stage
def bench_sequences(
    path: Path = typer.Option(Path("../shared/datasets/amazon-sequences/Beauty.txt"), help="a <Name>.txt sequence file"),
    json_out: Optional[Path] = JsonOption,
    bench_params: Optional[Path] = BenchParamsOption,
):
    """Sequential recommendation: the dvc.yaml stages in a workspace; leave-one-out, full ranking over all items."""
    from pipelines.bench import sequences

    sequences.run(path, json_out, bench_params)


@app.command()
@stage
def ope(
    feedback: Path = typer.Option(Path("data/feedback"), help="the service's log (served.jsonl, events.jsonl)"),
    task: Optional[str] = typer.Option(None, help="search or recommend (default: both)"),
    json_out: Optional[Path] = typer.Option(None, "--json", help="also write the estimates here"),
    params: Optional[Path] = ParamsOption,
):
    """What the served lists earned, and what the plain fused order would have (IPS, SNIPS over logged propensities)."""
    from pipelines.feedback.logged import estimate_logged

    result = estimate_logged(feedback, load_settings(params).feedback.rewards, task)
    if json_out:
        _write_json(json_out, result)
    _print_json(result)


@app.command()
@stage
def monitor(
    reference: Optional[Path] = typer.Option(None, help="the training reference: features' folder (default: params monitor.reference)"),
    current: Optional[Path] = typer.Option(None, help="canonical tables of the latest data (default: params monitor.current)"),
    feedback: Optional[Path] = typer.Option(None, help="the serving feedback log, file or folder (default: params monitor.feedback)"),
    out: Optional[Path] = typer.Option(None, help="reports folder (default: params monitor.reports)"),
    params: Optional[Path] = ParamsOption,
):
    """Evidently drift and quality reports of the latest window; prints the retrain decision as JSON."""
    from pipelines.stages.monitor import run_monitor

    _print_json(run_monitor(load_settings(params), Path("."), reference, current, feedback, out))


@bench_app.command("faults")
@stage
def bench_faults(
    json_out: Optional[Path] = JsonOption,
    only: Optional[list[str]] = typer.Option(None, "--only", help="run these faults only (repeatable; default: all)"),
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="serve this bundle folder (default: build the bench shop)"),
    bench_params: Optional[Path] = BenchParamsOption,
):
    """The service and the pipeline under faults, load and bad input (issue #19): one row per fault; exit 1 if any fails."""
    from pipelines.bench.faults import FaultParams, run_faults
    from pipelines.bench.workspace import bench_params as section

    document = run_faults(section("faults", FaultParams, bench_params), only, json_out, bundle)
    if not all(fault["ok"] for fault in document["faults"].values()):
        raise typer.Exit(1)


@bench_app.command("drift")
@stage
def bench_drift(
    json_out: Optional[Path] = JsonOption,
    params: Optional[Path] = ParamsOption,
    bench_params: Optional[Path] = BenchParamsOption,
):
    """Drift detection: seeded windows with an injected shift (category mix, price scale, query vocabulary) and stable ones."""
    from pipelines.bench.drift import drift_bench

    result = drift_bench(load_settings(params), json_out, bench_file=bench_params)
    _print_json({key: result[key] for key in ("trials", "detected", "stable_windows", "false_alarms", "seconds")})


@bench_app.command("bandit")
@stage
def bench_bandit(
    path: Path = typer.Option(Path("../shared/datasets/amazon-office"), help="a folder in the amazon-office layout"),
    json_out: Optional[Path] = JsonOption,
    params: Optional[Path] = ParamsOption,
    bench_params: Optional[Path] = BenchParamsOption,
):
    """Bandit re-rankers against static fusion in a click simulator, with off-policy estimates."""
    from pipelines.bench.bandit import run_bandit_bench

    run_bandit_bench(path, json_out, load_settings(params), bench_params)


@bench_app.command("stream")
@stage
def bench_stream(
    path: Path = typer.Option(Path("../shared/datasets/amazon-office"), help="a folder in the amazon-office layout"),
    json_out: Optional[Path] = JsonOption,
    bench_params: Optional[Path] = BenchParamsOption,
):
    """The live stream (issue #18): a bundle from the train interactions, the dev ones replayed through POST /events
    while /recommend serves; events/s, freshness, p95, live versus frozen HR@10 / NDCG@10, a SIGKILL replay."""
    from pipelines.bench import stream

    stream.run(path, json_out, bench_params)


stream_app = typer.Typer(help="The real-time behaviour stream (issue #18): publish events, run the processor.",
                         no_args_is_help=True)
app.add_typer(stream_app, name="stream")

RedisUrlOption = typer.Option(None, "--redis-url", help="default: $SHOPFUSION_REDIS_URL, else redis://127.0.0.1:6379/0")


def _redis_client(url: Optional[str]):
    import redis

    return redis.Redis.from_url(url or os.environ.get("SHOPFUSION_REDIS_URL") or "redis://127.0.0.1:6379/0")


@stream_app.command("publish")
@stage
def stream_publish(
    path: Path = typer.Option(..., "--path", help="a CSV or Parquet file of canonical events"),
    rate: Optional[float] = typer.Option(None, "--rate", min=0.001, help="events a second (default: as fast as Redis takes them)"),
    redis_url: Optional[str] = RedisUrlOption,
    params: Optional[Path] = ParamsOption,
):
    """Check, pseudonymize and publish a file of events; each refused row on one line (exit 2 if any)."""
    from pipelines.core.privacy import load_key
    from pipelines.feedback.stream import StreamNames, check_events, pseudonymize_events, read_events_file, replay

    settings = load_settings(params)
    events, errors = check_events(read_events_file(path))
    for error in errors:
        typer.echo(f"{path}: row {error['row']}: field {error['field']}: {error['msg']}", err=True)
    events = pseudonymize_events(events, load_key(settings.privacy))
    names = StreamNames.from_prefix(settings.stream.prefix)
    sent = replay(_redis_client(redis_url), names, events, settings.stream.maxlen, settings.stream.max_batch, rate)
    _print_json({"published": sent, "refused_rows": len({error["row"] for error in errors}), "stream": names.stream})
    if errors:
        raise typer.Exit(2)


@stream_app.command("run")
@stage
def stream_run(
    consumer: Optional[str] = typer.Option(None, "--consumer", help="name in the consumer group (default: <host>-<pid>; "
                                           "a fixed name resumes its own pending entries after a restart)"),
    sink: Optional[Path] = typer.Option(None, "--sink", help="write the applied events as hourly Parquet partitions "
                                        "into this folder (default: params stream.sink_path; null there: no sink)"),
    metrics_port: Optional[int] = typer.Option(None, "--metrics-port", min=0, help="serve Prometheus metrics on this "
                                               "port (default: params stream.metrics_port; 0: none)"),
    redis_url: Optional[str] = RedisUrlOption,
    params: Optional[Path] = ParamsOption,
):
    """Apply the stream to the online state in Redis until SIGTERM or SIGINT; several may run in one group."""
    import signal
    import socket
    import threading

    from pipelines.feedback.live_state import LiveState
    from pipelines.feedback.sink import Sink
    from pipelines.feedback.stream import StreamNames, StreamProcessor

    settings = load_settings(params)
    section, client = settings.stream, _redis_client(redis_url)
    names = StreamNames.from_prefix(section.prefix)
    sink_path = sink or section.sink_path or None  # an empty sink_path is no sink, as null
    state = LiveState.from_params(client, names.state_prefix, section, settings.clean.session_gap_minutes * 60,
                                  sink_queue=sink_path is not None)
    events_sink = Sink.from_params(Path(sink_path), state.sink_queue_key(), section) if sink_path else None
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    processor = StreamProcessor(client, names, state, consumer or f"{socket.gethostname()}-{os.getpid()}",
                                section.batch, section.block_ms, section.claim_idle_ms, sink=events_sink,
                                metrics=_processor_metrics(section.metrics_port if metrics_port is None else metrics_port))
    _print_json(processor.run(stop))


def _processor_metrics(port: int):
    """The processor's Prometheus metrics, served on `port` (0: counted, not served). A port another processor of
    this host already serves is logged and skipped: metrics never stop a processor."""
    from pipelines.core.logs import get_logger
    from pipelines.feedback.stream_metrics import ProcessorMetrics

    metrics = ProcessorMetrics()
    if port:
        try:
            metrics.serve(port)
        except OSError as error:
            get_logger(__name__).warning("stream processor metrics not served: port taken", extra={"port": port, "error": str(error)})
    return metrics


@app.command()
@stage
def promote(
    bento_info: Optional[Path] = typer.Option(None, "--bento-info", help="the package stage's bento.json (default: params promotion.bento_info)"),
    rejected_exit_code: int = typer.Option(1, "--rejected-exit-code", help="exit code when the gate rejects the candidate (the training DAG uses 99: skipped)"),
    params: Optional[Path] = ParamsOption,
):
    """Make the packaged bento current if its gate metrics are at least the current one's (minus the tolerance)."""
    from pipelines.stages.promote import Refused
    from pipelines.stages.promote import promote as run_promote

    settings = load_settings(params).promotion
    try:
        _print_json(run_promote(bento_info or Path(settings.bento_info), settings))
    except Refused as refused:
        refused.exit_code = rejected_exit_code
        raise


@app.command()
@stage
def rollback(params: Optional[Path] = ParamsOption):
    """Make the previous deployment current again."""
    from pipelines.stages.promote import rollback as run_rollback

    _print_json(run_rollback(load_settings(params).promotion))


@app.command()
@stage
def deployments(
    decisions: int = typer.Option(5, help="how many of the latest promote/rollback decisions to show"),
    params: Optional[Path] = ParamsOption,
):
    """The current deployment, the history (newest last) and the latest decisions, as JSON."""
    from pipelines.stages.promote import deployments as show_deployments

    _print_json(show_deployments(load_settings(params).promotion, decisions))


@app.command("current-tag")
@stage
def current_tag(params: Optional[Path] = ParamsOption):
    """Print the current bento tag (for `bentoml serve $(shopfusion current-tag)`)."""
    from pipelines.stages.promote import current_tag as read_current_tag

    typer.echo(read_current_tag(load_settings(params).promotion))


if __name__ == "__main__":
    app()
