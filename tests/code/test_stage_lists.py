"""The pipeline's stages are listed three times: README's table under "## The pipeline", dvc.yaml's `stages:`
and the Airflow training DAG. All three name the same stages in the same order.

The DAG is loaded the way tests/code/test_dags.py loads it (a DagBag in a subprocess with its own AIRFLOW_HOME),
and its tasks are put in topological order of its edges (ties broken by the DAG's own task order), less the
`promote` task the DAG appends after `package`.
"""

from __future__ import annotations

import re

import pytest
import yaml

from pipelines.orchestration import dvc_dag
from tests.code.test_dags import load_dagbag
from tests.conftest import REPO


def readme_stages(text: str) -> list[str]:
    """First column of the first markdown table under the "## The pipeline" heading, header row excluded."""
    section = re.search(r"^## The pipeline[ \t]*\n(.*?)(?=^## |\Z)", text, flags=re.MULTILINE | re.DOTALL)
    assert section, 'README.md has no "## The pipeline" section'
    rows, started = [], False
    for line in section.group(1).splitlines():
        if line.lstrip().startswith("|"):
            started = True
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif started:
            break  # the table ended
    assert len(rows) > 2, 'no stage table under "## The pipeline"'
    header, separator, body = rows[0], rows[1], rows[2:]
    assert header[0].lower() == "stage" and set(separator[0]) <= set("-: "), rows[:2]
    return [row[0].strip("`* ") for row in body]


def dvc_stages() -> list[str]:
    return list(yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"])


def topological_order(tasks: list[str], edges: list[list[str]]) -> list[str]:
    """Kahn's algorithm; among ready tasks the one earliest in `tasks` goes first."""
    upstream = {task: set() for task in tasks}
    for up, down in edges:
        upstream[down].add(up)
    order: list[str] = []
    while len(order) < len(tasks):
        ready = [task for task in tasks if task not in order and upstream[task] <= set(order)]
        assert ready, f"the DAG has a cycle among {sorted(set(tasks) - set(order))}"
        order.append(ready[0])
    return order


@pytest.fixture(scope="module")
def training_dag(tmp_path_factory):
    return load_dagbag(tmp_path_factory.mktemp("dagbag"))["dags"][dvc_dag.TRAINING_DAG_ID]


def test_readme_parser_reads_the_first_column():
    text = ("# x\n\n## The pipeline\n\nintro\n\n| stage | command |\n|---|---|\n| ingest | `a` |\n| `clean` | b |\n\n"
            "| other | table |\n|---|---|\n| no | no |\n\n## Serving\n\n| stage |\n|---|\n| serve |\n")
    assert readme_stages(text) == ["ingest", "clean"]


def test_topological_order_follows_edges_then_task_order():
    assert topological_order(["c", "a", "b"], [["a", "c"]]) == ["a", "c", "b"]
    assert topological_order(["a", "b", "c"], []) == ["a", "b", "c"]


def test_readme_stage_table_lists_the_dvc_stages_in_order():
    readme = readme_stages((REPO / "README.md").read_text(encoding="utf-8"))
    assert readme == dvc_stages(), "README.md's pipeline table and dvc.yaml's stages differ"


def test_training_dag_tasks_are_the_dvc_stages_in_order(training_dag):
    order = topological_order(training_dag["tasks"], training_dag["edges"])
    stages = dvc_stages()
    if dvc_dag.PACKAGE_STAGE in stages:
        # promote comes right after package, and nothing runs after promote
        assert order[order.index(dvc_dag.PACKAGE_STAGE) + 1:].count(dvc_dag.PROMOTE_TASK) == 1
        assert [down for up, down in training_dag["edges"] if up == dvc_dag.PROMOTE_TASK] == []
        order.remove(dvc_dag.PROMOTE_TASK)
    assert order == stages


def test_readme_stage_table_lists_the_training_dag_tasks_in_order(training_dag):
    order = [task for task in topological_order(training_dag["tasks"], training_dag["edges"])
             if task != dvc_dag.PROMOTE_TASK]
    assert readme_stages((REPO / "README.md").read_text(encoding="utf-8")) == order
