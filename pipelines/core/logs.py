"""Structured logs: one JSON object a line on stderr. Never pass raw PII as a field.

Inside an Airflow 3 task the lines must keep their level: the task runner shows every line a task process
writes to stderr as ERROR (and to stdout as INFO), while records of Airflow's own logging keep theirs. So a
Python task calls `configure_for_airflow_task()` (each line handed to Airflow's logging at its level), and
the training DAG's operator logs each line of a stage's output at the level the line names (`line_level`).
"""

from __future__ import annotations

import logging
import sys
import time

import orjson

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + "Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        entry.update({key: value for key, value in record.__dict__.items() if key not in _RESERVED})
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info).splitlines()[-1]
        # orjson: a served request logs a line; numbers stay numbers, anything else is written as str()
        return orjson.dumps(entry, default=str, option=orjson.OPT_SERIALIZE_NUMPY).decode("utf-8")


# logging's level of each "level" JsonFormatter writes (levelname.lower())
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}
# A logger of Airflow's own logging in a task process: it reaches the task log with each record's level.
AIRFLOW_TASK_LOGGER = "airflow.task"


class RelayHandler(logging.Handler):
    """Hands each record, formatted as its JSON line, to another logger at the record's own level."""

    def __init__(self, target: logging.Logger):
        if target.name.startswith("pipelines"):
            raise ValueError(f"relay to {target.name}: a logger of this project would receive its own records")
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.target.log(record.levelno, self.format(record))
        except Exception:  # a logging failure must not fail the work that logged
            self.handleError(record)


def line_level(line: str, default: int = logging.INFO) -> int:
    """The level a line of these logs names (its "level"); `default` for any other line (DVC's, a print)."""
    if not line.startswith('{"'):
        return default
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return default
    return LEVELS.get(entry.get("level"), default) if isinstance(entry, dict) else default


def configure(level: str = "INFO", relay: logging.Logger | None = None) -> None:
    """JSON lines on stderr; with `relay`, each line goes to that logger instead, at its record's level."""
    handler = RelayHandler(relay) if relay is not None else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("pipelines")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def configure_for_airflow_task(level: str = "INFO") -> None:
    """In an Airflow task process: the JSON lines through Airflow's logging, so INFO shows as INFO, not ERROR."""
    configure(level, relay=logging.getLogger(AIRFLOW_TASK_LOGGER))


def get_logger(name: str) -> logging.Logger:
    """Use as log.info("rows written", extra={"table": "events", "rows": n})."""
    return logging.getLogger(name if name.startswith("pipelines") else f"pipelines.{name}")
