"""The training pipeline as an Airflow DAG: one task per dvc.yaml stage, generated at parse time.

dvc.yaml stays the one place the stages are wired: a stage added there is a new task here, and an
edge runs from a stage to every stage that reads a path it writes. Each task runs
`dvc repro --single-item <stage>` then `dvc push <stage>` in the project (SHOPFUSION_HOME, or the
repository holding this dags/ folder). With the `overrides` param set in the trigger form, e.g.
{"sample.n_users": 500}, each stage runs as a DVC experiment: `dvc exp run --single-item <stage>
-S sample.n_users=500`. A stage that exits with the data-error code (validate on bad data) fails
at once, without retries, and its downstream tasks do not run; other failures are retried with
exponential backoff. When dvc.yaml has a `package` stage, a last `promote` task runs
`shopfusion promote`: the gate's decision is in its log, and a rejected candidate (the current bento
stays) ends the task *skipped*, not failed: the run stays green and the rejection stays visible in the
grid. A stage's JSON log lines reach the task log at their own level (see StageOutputLog). Parse time
reads two YAML files and imports nothing heavy.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from functools import cached_property

from airflow.providers.standard.hooks.subprocess import SubprocessHook
from airflow.providers.standard.operators.bash import BashOperator
from airflow.sdk import DAG, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pipelines.core import logs
from pipelines.orchestration import dvc_dag

ROOT = dvc_dag.project_root(__file__)
SETTINGS = dvc_dag.orchestration_params(ROOT)
STAGES = dvc_dag.read_stages(ROOT / "dvc.yaml")


class StageOutputLog:
    """The hook's logger, except that a line of the command's output is logged at the level it names.

    SubprocessHook logs each output line with log.info("%s", line), so a stage's warnings and errors (its
    JSON lines, pipelines.core.logs) would all read as INFO; any other line (DVC's, a print) stays INFO.
    """

    def __init__(self, log):
        self._log = log

    def info(self, message, *args, **kwargs):
        output_line = message == "%s" and len(args) == 1 and isinstance(args[0], str)
        self._log.log(logs.line_level(args[0]) if output_line else logging.INFO, message, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._log, name)


class StageOutputHook(SubprocessHook):
    @property
    def log(self):
        return StageOutputLog(super().log)


class DvcStageOperator(BashOperator):
    """A BashOperator that fails without retries when the command reports bad data: retrying cannot fix it,
    and logs each JSON line of the stage at its own level."""

    @cached_property
    def subprocess_hook(self):
        return StageOutputHook()

    def execute(self, context):
        try:
            return super().execute(context)
        except AirflowException as error:
            if f"exit code {dvc_dag.DATA_ERROR_EXIT}." in str(error):
                raise AirflowFailException(f"stage {self.task_id} rejected its input data (see the log above)") from error
            raise


def stage_command(stage: str, overrides) -> str:
    """Rendered at run time with the run's params, so the task's Rendered Template shows the exact commands."""
    return dvc_dag.stage_script(stage, overrides, push=SETTINGS.push)


with DAG(
    dag_id=dvc_dag.TRAINING_DAG_ID,
    description="dvc.yaml stages: " + " -> ".join(STAGES),
    schedule=SETTINGS.schedule,
    start_date=datetime.fromisoformat(SETTINGS.start_date).replace(tzinfo=timezone.utc),
    catchup=False,
    is_paused_upon_creation=True,
    max_active_runs=1,   # one DVC workspace: two runs would race on the same outputs
    max_active_tasks=1,  # and DVC holds a repo lock while a stage runs
    params={
        "overrides": Param({}, type="object",
                           description='params.yaml overrides, e.g. {"sample.n_users": 500}; '
                                       "non-empty runs each stage as `dvc exp run -S key=value`"),
        # a non-empty default: the UI's trigger form treats an empty required string as missing and keeps the
        # Trigger button disabled, so a manual run with the defaults must say something
        "reason": Param("manual run", type="string", minLength=1,
                        description="why this run was started (set by the monitoring DAG)"),
    },
    user_defined_macros={"stage_command": stage_command},
    default_args={
        "retries": SETTINGS.retries,
        "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds),
        "retry_exponential_backoff": SETTINGS.retry_backoff,
        "max_retry_delay": timedelta(seconds=SETTINGS.max_retry_delay_seconds),
    },
    tags=["shopfusion", "training"],
) as dag:
    tasks = {
        name: DvcStageOperator(
            task_id=name,
            bash_command="{{ stage_command('%s', params.overrides) }}" % name,
            cwd=str(ROOT),
            skip_on_exit_code=None,  # BashOperator skips on 99 by default: a stage exiting 99 has failed
            doc_md=f"`{stage.cmd}`\n\nreads: {', '.join(stage.deps) or '-'}\n\nwrites: {', '.join(stage.outs) or '-'}",
        )
        for name, stage in STAGES.items()
    }
    for upstream, downstream in dvc_dag.stage_edges(STAGES):
        tasks[upstream] >> tasks[downstream]
    if dvc_dag.PACKAGE_STAGE in tasks:
        tasks[dvc_dag.PACKAGE_STAGE] >> DvcStageOperator(
            task_id=dvc_dag.PROMOTE_TASK,
            bash_command=dvc_dag.promote_script(),
            cwd=str(ROOT),
            skip_on_exit_code=dvc_dag.REJECTED_EXIT,
            doc_md="`shopfusion promote`: the packaged bento becomes current only if its gate metrics "
                   "(params `promotion`) are at least the current one's; rejected = skipped, reasons in the log",
        )
