"""Monitoring as an Airflow DAG: the latest window against the training reference, then retrain if needed.

`monitor` runs pipelines.stages.monitor.run_monitor (Evidently reports and JSON snapshots under
reports/monitor/<UTC stamp>/, the decision in decision.json, latest.json and decisions.jsonl);
`needs_retrain` short-circuits unless a threshold of params.yaml `monitor:` was crossed; then
`trigger_training` starts the training DAG with the reasons in its `reason` param. Evidently and
pandas are imported inside the task, never at parse time.
"""

from __future__ import annotations

from datetime import datetime, timezone

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, task

from pipelines.core.config import load_settings
from pipelines.orchestration import dvc_dag

ROOT = dvc_dag.project_root(__file__)
# The typed settings (pipelines/core/params.py: pydantic only, no pandas at parse time).
SETTINGS = load_settings(ROOT / "params.yaml")
SCHEDULE = SETTINGS.monitor.schedule
START = SETTINGS.orchestration.start_date


@task
def monitor() -> dict:
    from pipelines.core import logs
    from pipelines.stages.monitor import run_monitor

    logs.configure_for_airflow_task()  # logs.configure() writes to stderr, which a task log shows as ERROR
    decision = run_monitor(load_settings(ROOT / "params.yaml"), ROOT)
    print(f"retrain: {decision['retrain']}; reasons: {decision['reasons'] or 'none'}; reports: {decision['reports']}")
    return decision


@task.short_circuit
def needs_retrain(decision: dict) -> bool:
    return decision["retrain"]


with DAG(
    dag_id=dvc_dag.MONITORING_DAG_ID,
    description="Evidently drift and quality reports; triggers shopfusion_training when a threshold is crossed",
    schedule=SCHEDULE,
    start_date=datetime.fromisoformat(START).replace(tzinfo=timezone.utc),
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,
    tags=["shopfusion", "monitoring"],
) as dag:
    decision = monitor()
    trigger = TriggerDagRunOperator(
        task_id="trigger_training",
        trigger_dag_id=dvc_dag.TRAINING_DAG_ID,
        conf={"overrides": {}, "reason": "{{ ti.xcom_pull(task_ids='monitor')['reasons'] | join('; ') }}"},
    )
    needs_retrain(decision) >> trigger
