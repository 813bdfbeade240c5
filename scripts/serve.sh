#!/usr/bin/env bash
# make serve: the promoted bento (else the one the package stage built last) on http://localhost:3000.
set -euo pipefail
cd "$(dirname "$0")/.."

keys_file=${SHOPFUSION_API_KEYS_FILE:-.secrets/api-keys}
if [[ -z "${SHOPFUSION_API_KEYS:-}" && ! -s "$keys_file" ]]; then
  mkdir -p "$(dirname "$keys_file")"
  python -c 'import secrets; print(secrets.token_urlsafe(24))' > "$keys_file"
  chmod 600 "$keys_file"
  echo "serve: generated an API key in $keys_file (send it as 'Authorization: Bearer <key>')"
fi

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
echo "serve: $tag on http://localhost:${SHOPFUSION_PORT:-3000} (OpenAPI: /docs)"
exec bentoml serve "$tag"
