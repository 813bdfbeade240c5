#!/usr/bin/env bash
# make serve: the promoted bento (else the one the package stage built last) on http://localhost:3000.
set -euo pipefail
cd "$(dirname "$0")/.."

keys_file=${SHOPFUSION_API_KEYS_FILE:-.secrets/api-keys}
if [[ -z "${SHOPFUSION_API_KEYS:-}" && ! -s "$keys_file" ]]; then
  mkdir -p "$(dirname "$keys_file")"
  # umask 077 in a subshell: the file is 0600 from its creation, never readable by others for a moment
  (umask 077 && python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$keys_file")
  echo "serve: generated an API key in $keys_file (send it as 'Authorization: Bearer <key>')"
fi

# Absolute paths: the workers of a built bento run in the bento's own folder, not here.
export SHOPFUSION_API_KEYS_FILE=${SHOPFUSION_API_KEYS_FILE:-$PWD/$keys_file}
export SHOPFUSION_PII_KEY_FILE=${SHOPFUSION_PII_KEY_FILE:-$PWD/.secrets/pii.key}
export SHOPFUSION_FEEDBACK_DIR=${SHOPFUSION_FEEDBACK_DIR:-$PWD/data/feedback}
export SHOPFUSION_STATE_DIR=${SHOPFUSION_STATE_DIR:-$PWD/.shopfusion/serving}

if [[ ! -f bentos/bento.json ]]; then
  echo "serve: no bento built yet: run 'make demo' (or 'dvc repro package') first" >&2
  exit 2
fi
tag=$(shopfusion current-tag 2>/dev/null || true)
if [[ -z "$tag" ]]; then
  tag=$(python -c 'import json; print(json.load(open("bentos/bento.json"))["tag"])')
fi
if ! bentoml get "$tag" >/dev/null 2>&1; then
  bentoml import "$(python -c 'import json; print(json.load(open("bentos/bento.json"))["bento_file"])')" >/dev/null  # e.g. after `dvc pull` on another machine
fi
# The real-time stream (POST /events, /items, fresh histories): the local Redis, started here when none answers,
# and one stream processor (`shopfusion stream run`) whose applied events go to the sink the training reads
# (`shopfusion ingest --source stream`). SHOPFUSION_REDIS_URL= (empty) serves the bundle alone.
export SHOPFUSION_REDIS_URL=${SHOPFUSION_REDIS_URL-redis://127.0.0.1:6379/0}
processor_pid=
if [[ -n "$SHOPFUSION_REDIS_URL" ]]; then
  if ! python -c 'import os, redis; redis.Redis.from_url(os.environ["SHOPFUSION_REDIS_URL"], socket_timeout=2).ping()' 2>/dev/null; then
    if [[ "$SHOPFUSION_REDIS_URL" == redis://127.0.0.1:6379/* ]] && command -v redis-server >/dev/null; then
      mkdir -p .shopfusion/redis
      redis-server --port 6379 --bind 127.0.0.1 --dir "$PWD/.shopfusion/redis" --appendonly yes --daemonize yes \
        --logfile "$PWD/.shopfusion/redis/redis.log"
      echo "serve: started redis-server on 127.0.0.1:6379 (data in .shopfusion/redis)"
    else
      echo "serve: no Redis answers at $SHOPFUSION_REDIS_URL: set SHOPFUSION_REDIS_URL, or empty it to serve without the stream" >&2
      exit 2
    fi
  fi
  mkdir -p .shopfusion data/stream
  shopfusion stream run --consumer "serve-$(hostname)" --sink "${SHOPFUSION_STREAM_SINK:-$PWD/data/stream/sink}" \
    > .shopfusion/stream-processor.log 2>&1 &
  processor_pid=$!
  trap '[[ -n "$processor_pid" ]] && kill "$processor_pid" 2>/dev/null; wait "$processor_pid" 2>/dev/null || true' EXIT
  echo "serve: stream processor (pid $processor_pid; log .shopfusion/stream-processor.log; metrics :9464/metrics)"
fi
echo "serve: $tag on http://localhost:${SHOPFUSION_PORT:-3000} (OpenAPI: /docs)"
bentoml serve "$tag"
