#!/usr/bin/env bash
# Sets up .venv, starts a local Elasticsearch node when Java and Maven are present, runs the
# test suite against it, and stops the node again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# --- Elasticsearch (tests marked `es` discover it from ELASTICSEARCH_URL) -----------------
ES_PORT=${SPARCODE_ES_PORT:-9250}
started_es=0
stop_es() {
  if [ "$started_es" = 1 ]; then .venv/bin/sparcode es stop || true; fi
}
trap stop_es EXIT
if [ -z "${ELASTICSEARCH_URL:-}" ]; then
  if .venv/bin/sparcode es status --port "$ES_PORT" >/dev/null 2>&1; then
    :  # a node someone else started: use it, and leave it running
  elif command -v java >/dev/null && command -v mvn >/dev/null; then
    if .venv/bin/sparcode es start --port "$ES_PORT"; then
      started_es=1
    elif [ "${CI:-}" = "true" ]; then
      echo "CI=true: could not start Elasticsearch" >&2
      exit 1
    fi
  elif [ "${CI:-}" = "true" ]; then
    echo "CI=true: java and mvn are needed to start Elasticsearch (or set ELASTICSEARCH_URL)" >&2
    exit 1
  fi
  export ELASTICSEARCH_URL="http://127.0.0.1:${ES_PORT}"
fi

# No exec: the EXIT trap must run to stop the node; pytest's status is passed on.
status=0
.venv/bin/python -m pytest -q "$@" || status=$?
exit "$status"
