"""Promotion gate and rollback: the pure gate, the registry, the CLI, and (slow) the BentoML store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.core import atomic
from pipelines.core.errors import DataError
from pipelines.stages import promote as promotion
from pipelines.stages.promote import PromotionParams, Refused
from tests.conftest import params_section, write_params_file

BIN = Path(sys.executable).parent
GATE = ["search.lambdarank.ndcg@10", "recommend.lambdarank.ndcg@10"]


def metrics(search: float, recommend: float) -> dict:
    """The shape of metrics/evaluate.json, trimmed to what the gate reads plus a neighbour it ignores."""
    return {"search": {"requests": 40, "bm25": {"kind": "component", "ndcg@10": 0.9},
                       "lambdarank": {"kind": "fusion", "ndcg@10": search, "mrr": 0.5}},
            "recommend": {"requests": 90, "lambdarank": {"kind": "fusion", "ndcg@10": recommend}}}


def bento_info(folder: Path, version: str, search: float, recommend: float) -> Path:
    path = folder / f"bento-{version}.json"
    path.write_text(json.dumps({"tag": f"shopfusion:{version}", "version": version, "revision": "abc123",
                                "created": "2026-11-23T12:00:00+00:00", "bento_file": "bentos/shopfusion.bento",
                                "metrics": metrics(search, recommend)}))
    return path


@pytest.fixture()
def params(tmp_path) -> PromotionParams:
    return params_section("promotion", registry=str(tmp_path / "registry" / "deployments.json"), metrics=GATE, tolerance=0.01)


@pytest.fixture()
def store_calls():
    calls = []

    def store(deployment):
        calls.append(deployment.tag)
        return "present"

    store.calls = calls
    return store


def test_gate_passes_a_better_candidate():
    result = promotion.gate(metrics(0.60, 0.40), metrics(0.55, 0.35), GATE, 0.0)
    assert result.passed and result.failures == ()
    assert len(result.reasons) == 2


def test_gate_rejects_a_worse_candidate_naming_metric_values_and_tolerance():
    result = promotion.gate(metrics(0.60, 0.30), metrics(0.55, 0.35), GATE, 0.01)
    assert not result.passed
    assert result.failures == ("recommend.lambdarank.ndcg@10: candidate 0.30000 < current 0.35000 - tolerance 0.01",)


def test_gate_passes_a_candidate_within_the_tolerance():
    assert promotion.gate(metrics(0.545, 0.35), metrics(0.55, 0.35), GATE, 0.01).passed
    assert not promotion.gate(metrics(0.545, 0.35), metrics(0.55, 0.35), GATE, 0.001).passed


def test_gate_passes_without_a_current_and_fails_a_candidate_without_the_metric():
    assert promotion.gate(metrics(0.1, 0.1), None, GATE, 0.0).passed
    missing = metrics(0.6, 0.4)
    del missing["recommend"]["lambdarank"]
    result = promotion.gate(missing, metrics(0.5, 0.3), GATE, 0.0)
    assert not result.passed and "recommend.lambdarank.ndcg@10: missing" in result.failures[0]


def test_gate_on_a_task_the_evaluate_stage_skipped():
    """No recommend requests (a shop without events): evaluate writes {"requests": 0, "skipped": reason}."""
    skipped = metrics(0.6, 0.4)
    skipped["recommend"] = {"requests": 0, "skipped": "no recommend request in the test split of data/features"}
    neither = promotion.gate(skipped, skipped, GATE, 0.0)  # nothing to compare, nothing lost: reported, passes
    assert neither.passed and neither.reasons[1] == (
        "recommend.lambdarank.ndcg@10: not compared, neither the candidate nor the current deployment has it "
        "(candidate skipped recommend: no recommend request in the test split of data/features)")
    lost = promotion.gate(skipped, metrics(0.5, 0.3), GATE, 0.0)  # the current one had a recommend model
    assert not lost.passed and lost.failures == (
        "recommend.lambdarank.ndcg@10: missing from the candidate's metrics (skipped recommend: no recommend "
        "request in the test split of data/features), current has 0.30000",)
    typo = promotion.gate(skipped, skipped, ["search.lambdarank.ndcg@10", "search.lambdrank.ndcg@10"], 0.0)
    assert not typo.passed and typo.failures == ("search.lambdrank.ndcg@10: missing from the candidate's metrics",)


def test_first_promotion_makes_the_candidate_current(tmp_path, params, store_calls):
    decision = promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, store_calls)
    assert decision["outcome"] == "promoted" and store_calls.calls == ["shopfusion:v1"]
    registry = json.loads(Path(params.registry).read_text())
    assert registry["current"]["tag"] == "shopfusion:v1" and registry["current"]["promoted_at"]
    assert registry["current"]["metrics"] == metrics(0.5, 0.3)
    assert registry["history"] == [] and [d["outcome"] for d in registry["decisions"]] == ["promoted"]


def test_a_better_candidate_replaces_the_current_one_which_goes_to_history(tmp_path, params, store_calls):
    promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, store_calls)
    promotion.promote(bento_info(tmp_path, "v2", 0.55, 0.31), params, store_calls)
    registry = promotion.load_registry(Path(params.registry))
    assert registry.current.tag == "shopfusion:v2"
    assert [d.tag for d in registry.history] == ["shopfusion:v1"]


def test_a_worse_candidate_is_rejected_and_the_current_one_stays(tmp_path, params, store_calls):
    promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, store_calls)
    with pytest.raises(Refused) as refused:
        promotion.promote(bento_info(tmp_path, "v2", 0.45, 0.3), params, store_calls)
    assert refused.value.exit_code == 1
    assert "search.lambdarank.ndcg@10: candidate 0.45000 < current 0.50000 - tolerance 0.01" in str(refused.value)
    registry = promotion.load_registry(Path(params.registry))
    assert registry.current.tag == "shopfusion:v1" and registry.history == []
    assert registry.decisions[-1]["outcome"] == "rejected" and registry.decisions[-1]["tag"] == "shopfusion:v2"
    assert store_calls.calls == ["shopfusion:v1"]  # a rejected bento is not imported


def test_promoting_the_current_bento_again_changes_nothing(tmp_path, params, store_calls):
    info = bento_info(tmp_path, "v1", 0.5, 0.3)
    promotion.promote(info, params, store_calls)
    assert promotion.promote(info, params, store_calls)["outcome"] == "already_current"
    registry = promotion.load_registry(Path(params.registry))
    assert registry.current.tag == "shopfusion:v1" and registry.history == []


def test_rollback_makes_the_previous_deployment_current(tmp_path, params, store_calls):
    promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, store_calls)
    promotion.promote(bento_info(tmp_path, "v2", 0.6, 0.4), params, store_calls)
    decision = promotion.rollback(params, store_calls)
    assert decision["outcome"] == "rolled_back" and decision["previous"] == "shopfusion:v2"
    registry = promotion.load_registry(Path(params.registry))
    assert registry.current.tag == "shopfusion:v1" and registry.history == []
    assert promotion.current_tag(params) == "shopfusion:v1"


def test_a_concurrent_promote_and_rollback_lose_neither(tmp_path, params):
    """The store check runs between reading and writing the registry; it sleeps here to open that window.
    Without the lock both would read current v2 and the later write would drop the other's decision."""
    import threading
    import time

    def slow_store(deployment):
        time.sleep(0.3)
        return "present"

    promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, lambda deployment: "present")
    promotion.promote(bento_info(tmp_path, "v2", 0.6, 0.4), params, lambda deployment: "present")
    promoting = threading.Thread(target=promotion.promote, args=(bento_info(tmp_path, "v3", 0.7, 0.5), params, slow_store))
    promoting.start()
    time.sleep(0.1)
    promotion.rollback(params, slow_store)  # waits for the promote, then rolls v3 back
    promoting.join()
    registry = promotion.load_registry(Path(params.registry))
    assert [decision["outcome"] for decision in registry.decisions] == ["promoted", "promoted", "promoted", "rolled_back"]
    assert registry.current.tag == "shopfusion:v2" and [d.tag for d in registry.history] == ["shopfusion:v1"]


def test_rollback_without_history_is_refused_and_changes_nothing(tmp_path, params, store_calls):
    promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, store_calls)
    with pytest.raises(Refused, match="nothing to roll back to: .*deployments.json has no previous deployment"):
        promotion.rollback(params, store_calls)
    assert promotion.current_tag(params) == "shopfusion:v1"
    with pytest.raises(Refused, match="nothing to roll back"):
        promotion.rollback(params_section("promotion", registry=str(tmp_path / "empty.json")), store_calls)


@pytest.mark.parametrize("content", ["{not json", '{"current": 3, "history": []}', "[]", '{"current": null, "extra": 1}'])
def test_a_corrupted_registry_is_a_clear_error_naming_the_file_and_is_left_alone(tmp_path, params, store_calls,
                                                                                  content):
    registry = Path(params.registry)
    registry.parent.mkdir(parents=True)
    registry.write_text(content)
    with pytest.raises(DataError, match=f"{registry}: not a"):
        promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, store_calls)
    with pytest.raises(DataError, match=str(registry)):
        promotion.rollback(params, store_calls)
    assert registry.read_text() == content and store_calls.calls == []


def test_a_bad_bento_info_names_the_file(tmp_path, params, store_calls):
    with pytest.raises(DataError, match="missing.json: file not found"):
        promotion.promote(tmp_path / "missing.json", params, store_calls)
    no_tag = tmp_path / "no_tag.json"
    no_tag.write_text('{"metrics": {}}')
    with pytest.raises(DataError, match="no_tag.json: field tag"):
        promotion.promote(no_tag, params, store_calls)


def test_a_failed_write_keeps_the_previous_registry(tmp_path, params, store_calls, monkeypatch):
    promotion.promote(bento_info(tmp_path, "v1", 0.5, 0.3), params, store_calls)
    before = Path(params.registry).read_text()

    def crash(*_):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError):
        promotion.promote(bento_info(tmp_path, "v2", 0.6, 0.4), params, store_calls)
    assert Path(params.registry).read_text() == before
    # no temporary file left beside it (the lock file is the registry's, made by the first promote)
    assert sorted(p.name for p in Path(params.registry).parent.iterdir()) == ["deployments.json", "deployments.json.lock"]


def shopfusion(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "shopfusion"), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SHOPFUSION_LOG_LEVEL": "WARNING", **env})


def write_params(folder: Path, tolerance: float = 0.0) -> Path:
    return write_params_file(folder / "params.yaml", promotion={
        "registry": str(folder / ".shopfusion" / "deployments.json"), "metrics": GATE, "tolerance": tolerance})


def test_cli_rejection_is_one_line_exit_1_and_the_dag_code_on_request(tmp_path):
    """The current bento is written straight into the registry so no BentoML store is needed."""
    params = write_params(tmp_path, tolerance=0.002)
    current = json.loads(bento_info(tmp_path, "v1", 0.5, 0.3).read_text())
    promotion.save_registry(tmp_path / ".shopfusion" / "deployments.json",
                            promotion.Registry(current=promotion.Deployment.model_validate(current)))
    worse = bento_info(tmp_path, "v2", 0.49, 0.3)
    result = shopfusion(tmp_path, "promote", "--bento-info", str(worse), "--params", str(params))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: promotion rejected: shopfusion:v1 stays current, shopfusion:v2 is not promoted: "
        "search.lambdarank.ndcg@10: candidate 0.49000 < current 0.50000 - tolerance 0.002"]
    assert json.loads(result.stdout)["outcome"] == "rejected"  # the decision, for the DAG's task log
    again = shopfusion(tmp_path, "promote", "--bento-info", str(worse), "--params", str(params),
                       "--rejected-exit-code", "99")
    assert again.returncode == 99
    tag = shopfusion(tmp_path, "current-tag", "--params", str(params))  # what scripts/serve.sh serves
    assert (tag.returncode, tag.stdout.strip()) == (0, "shopfusion:v1")
    rollback = shopfusion(tmp_path, "rollback", "--params", str(params))
    assert rollback.returncode == 1 and "nothing to roll back to" in rollback.stderr
    shown = json.loads(shopfusion(tmp_path, "deployments", "--params", str(params)).stdout)
    assert shown["current"]["tag"] == "shopfusion:v1"
    assert [d["outcome"] for d in shown["decisions"]] == ["rejected", "rejected", "refused"]


_BUILD_BENTO = textwrap.dedent("""
    import sys, bentoml
    bento = bentoml.bentos.build(service="service:Tiny", build_ctx=sys.argv[1], name="shopfusion", version=sys.argv[2])
    bentoml.export_bento(bento.tag, sys.argv[3])
    bentoml.delete(bento.tag)
""")

_TINY_SERVICE = textwrap.dedent("""
    import bentoml

    @bentoml.service
    class Tiny:
        @bentoml.api
        def ping(self) -> str:
            return "pong"
""")


@pytest.mark.slow
def test_promote_imports_the_exported_bento_into_the_store(tmp_path):
    """A real (tiny) bento, exported then deleted from a BentoML store in tmp: promote imports it back."""
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml"), "BENTOML_DO_NOT_TRACK": "true"}
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "service.py").write_text(_TINY_SERVICE)
    archive = tmp_path / "bentos" / "shopfusion.bento"
    archive.parent.mkdir()
    built = subprocess.run([sys.executable, "-c", _BUILD_BENTO, str(tmp_path / "build"), "v1", str(archive)],
                           env=env, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-3000:]
    info = bento_info(tmp_path, "v1", 0.5, 0.3)
    document = json.loads(info.read_text())
    document["bento_file"] = str(archive)
    info.write_text(json.dumps(document))
    params = write_params(tmp_path)
    promoted = shopfusion(tmp_path, "promote", "--bento-info", str(info), "--params", str(params),
                          BENTOML_HOME=env["BENTOML_HOME"])
    assert promoted.returncode == 0, promoted.stderr[-3000:]
    assert json.loads(promoted.stdout)["store"] == "imported"
    listed = subprocess.run([str(BIN / "bentoml"), "list", "-o", "json"], env=env, capture_output=True, text=True,
                            timeout=120)
    assert "shopfusion:v1" in listed.stdout, listed.stdout + listed.stderr


def test_the_archive_format_comes_from_the_bytes_not_the_extension(tmp_path):
    import lzma
    import tarfile

    plain = tmp_path / "plain.bento"
    with tarfile.open(plain, "w") as archive:
        archive.add(__file__, arcname="bento.yaml")
    packed = tmp_path / "packed.bento"
    packed.write_bytes(lzma.compress(plain.read_bytes()))
    garbage = tmp_path / "garbage.bento"
    garbage.write_bytes(b"hello" * 100)
    assert promotion.archive_format(plain) == "tar" and promotion.archive_format(packed) == "xz"
    with pytest.raises(DataError, match="garbage.bento: not a bento archive"):
        promotion.archive_format(garbage)
