#!/usr/bin/env bash
# Sets up .venv, starts local Elasticsearch and OpenSearch nodes when Java and Maven are present,
# runs the test suite against them, and stops the nodes it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# --- search nodes (tests marked `es` / `opensearch` find them via ELASTICSEARCH_URL / OPENSEARCH_URL)
started=()
stop_nodes() {
  for engine in "${started[@]}"; do .venv/bin/sparcode es stop --engine "$engine" || true; done
}
trap stop_nodes EXIT

# Any CI value but empty/0/false/no means CI (tests/conftest.py reads it the same way).
case "${CI:-}" in ""|0|false|False|FALSE|no) in_ci=false ;; *) in_ci=true ;; esac

# Tests never skip. Outside CI, a node that cannot be had leaves its tests out by marker, loudly.
left_out=()

# answers PORT: a search node on 127.0.0.1:PORT reports its cluster health.
answers() {
  .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/_cluster/health', timeout=5)" "$1" >/dev/null 2>&1
}
# ensure_node ENGINE MARKER URL_VARIABLE PORT: use the URL if set, else a running node, else start one.
ensure_node() {
  local engine=$1 marker=$2 var=$3 port=$4 why=""
  if [ -n "${!var:-}" ]; then return; fi
  if .venv/bin/sparcode es status --engine "$engine" --port "$port" >/dev/null 2>&1; then
    :  # the node this checkout started earlier: use it, and leave it running
  elif answers "$port"; then
    :  # a node this checkout did not start (Docker, another checkout): use it; the tests refuse a wrong engine by name
  elif ! command -v java >/dev/null || ! command -v mvn >/dev/null; then
    why="java and mvn are needed to start $engine (or set $var)"
  elif .venv/bin/sparcode es start --engine "$engine" --port "$port"; then
    started+=("$engine")
  else
    why="could not start $engine"
  fi
  if [ -n "$why" ]; then
    if $in_ci; then
      echo "CI=$CI: $why" >&2
      exit 1
    fi
    echo "NOT TESTED: the tests marked '$marker' ($why)" >&2
    left_out+=("not $marker")
    return
  fi
  export "$var=http://127.0.0.1:${port}"
}
# 1 GB heap each (the default): both fit side by side on a developer machine.
ensure_node elasticsearch es ELASTICSEARCH_URL "${SPARCODE_ES_PORT:-9250}"
ensure_node opensearch opensearch OPENSEARCH_URL "${SPARCODE_OPENSEARCH_PORT:-9260}"

deselect=()
if [ ${#left_out[@]} -gt 0 ]; then
  expression=$(printf ' and %s' "${left_out[@]}")
  deselect=(-m "${expression# and }")
fi

# No exec: the EXIT trap must run to stop the nodes; pytest's status is passed on.
status=0
.venv/bin/python -m pytest -q "${deselect[@]}" "$@" || status=$?
[ ${#left_out[@]} -eq 0 ] || echo "NOT TESTED: ${left_out[*]#not } (no node; see above)" >&2
exit "$status"
