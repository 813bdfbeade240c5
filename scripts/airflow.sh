#!/usr/bin/env bash
# Start, stop or check the four Airflow 3 processes of ShopFusion: scheduler, dag-processor,
# triggerer and api-server (UI and execution API on http://localhost:8080).
#   scripts/airflow.sh start|stop|status|env
#   scripts/airflow.sh worker [ARGS]   with AIRFLOW__CORE__EXECUTOR=CeleryExecutor: one Celery worker in the
#                                      foreground (Ctrl-C stops it); ARGS go to `airflow celery worker`
# Defaults: AIRFLOW_HOME=.airflow (git-ignored), SQLite, LocalExecutor, parallelism 2 (never
# `airflow standalone`: it starts a worker per core). SHOPFUSION_AIRFLOW_DB=postgresql+psycopg2://...
# puts the metadata in PostgreSQL. Every AIRFLOW__* variable already set wins over these defaults.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export AIRFLOW_HOME=${AIRFLOW_HOME:-$ROOT/.airflow}
export PATH="$ROOT/.venv/bin:$PATH"
export SHOPFUSION_HOME=${SHOPFUSION_HOME:-$ROOT}
export DO_NOT_TRACK=1 SCARF_ANALYTICS=false DVC_NO_ANALYTICS=1
export AIRFLOW__USAGE_DATA_COLLECTION__ENABLED=${AIRFLOW__USAGE_DATA_COLLECTION__ENABLED:-False}
export AIRFLOW__CORE__DAGS_FOLDER=${AIRFLOW__CORE__DAGS_FOLDER:-$ROOT/dags}
export AIRFLOW__CORE__LOAD_EXAMPLES=${AIRFLOW__CORE__LOAD_EXAMPLES:-False}
export AIRFLOW__CORE__EXECUTOR=${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}
export AIRFLOW__CORE__PARALLELISM=${AIRFLOW__CORE__PARALLELISM:-2}
export AIRFLOW__CELERY__WORKER_CONCURRENCY=${AIRFLOW__CELERY__WORKER_CONCURRENCY:-2}
export AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=${AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES:-1}
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL=${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-30}
PORT=${AIRFLOW_PORT:-8080}
export AIRFLOW__API__HOST=${AIRFLOW__API__HOST:-127.0.0.1}
export AIRFLOW__API__PORT=$PORT
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL=${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://localhost:$PORT/execution/}
# A local, loopback-only UI: everyone is admin. Set SHOPFUSION_AIRFLOW_LOGIN=1 to use the simple auth
# manager's generated passwords ($AIRFLOW_HOME/simple_auth_manager_passwords.json.generated) instead.
if [ -z "${SHOPFUSION_AIRFLOW_LOGIN:-}" ]; then
  export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS=${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS:-True}
fi
if [ -n "${SHOPFUSION_AIRFLOW_DB:-}" ]; then
  export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=$SHOPFUSION_AIRFLOW_DB
fi

RUN="$AIRFLOW_HOME/run"
LOGS="$AIRFLOW_HOME/logs"
PROCESSES=(scheduler dag-processor triggerer api-server)

command_for() {
  case "$1" in
    api-server) echo "airflow api-server --port $PORT --workers 1" ;;
    *) echo "airflow $1" ;;
  esac
}

running() { [ -f "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

start() {
  mkdir -p "$RUN" "$LOGS"
  echo "AIRFLOW_HOME=$AIRFLOW_HOME  database: ${AIRFLOW__DATABASE__SQL_ALCHEMY_CONN:-sqlite (default)}"
  airflow db migrate >"$LOGS/db-migrate.log" 2>&1 || { tail -20 "$LOGS/db-migrate.log" >&2; exit 1; }
  for name in "${PROCESSES[@]}"; do
    if running "$name"; then echo "$name already running (pid $(cat "$RUN/$name.pid"))"; continue; fi
    # Own session per process, so stop can end it with all the workers it spawned and nothing else.
    setsid $(command_for "$name") >"$LOGS/$name.log" 2>&1 < /dev/null &
    echo $! >"$RUN/$name.pid"
    echo "$name started (pid $!, log $LOGS/$name.log)"
  done
  for _ in $(seq 60); do
    curl -fs "http://localhost:$PORT/api/v2/monitor/health" >/dev/null 2>&1 && { echo "UI: http://localhost:$PORT"; return 0; }
    sleep 2
  done
  echo "api-server not healthy after 120 s: see $LOGS/api-server.log" >&2
  return 1
}

stop() {
  for name in "${PROCESSES[@]}"; do
    [ -f "$RUN/$name.pid" ] || continue
    pid=$(cat "$RUN/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
      kill -KILL -- "-$pid" 2>/dev/null || true
      echo "$name stopped (pid $pid)"
    fi
    rm -f "$RUN/$name.pid"
  done
}

status() {
  rc=0
  for name in "${PROCESSES[@]}"; do
    if running "$name"; then echo "$name running (pid $(cat "$RUN/$name.pid"))"; else echo "$name stopped"; rc=3; fi
  done
  return $rc
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env) env | grep -E '^(AIRFLOW|SHOPFUSION_HOME)' | sort ;;
  worker)
    if [ "$AIRFLOW__CORE__EXECUTOR" != CeleryExecutor ]; then
      echo "worker: needs AIRFLOW__CORE__EXECUTOR=CeleryExecutor (now $AIRFLOW__CORE__EXECUTOR): see docs/airflow.md" >&2
      exit 2
    fi
    shift
    exec airflow celery worker "$@" ;;
  *) echo "usage: $0 start|stop|status|env|worker" >&2; exit 2 ;;
esac
