#!/usr/bin/env bash
# README command 1: set up, train SparCode on ml-1m, export, start a local Elasticsearch,
# index, show a few searches, and evaluate through Elasticsearch. Without Java/Maven it says
# so and serves from the embedded backend instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
SC=.venv/bin/sparcode
RUN=${SPARCODE_DEMO_RUN:-runs/demo-ml1m-sparcode}
EXPORT=${SPARCODE_DEMO_EXPORT:-exports/demo-ml1m}
ALIAS=${SPARCODE_DEMO_ALIAS:-sparcode-ml1m}
EPOCHS=${SPARCODE_DEMO_EPOCHS:-1}

if [ -f "$RUN/run.json" ]; then
  echo "== reusing trained run $RUN (delete it to retrain)"
else
  resume=${SPARCODE_DEMO_RESUME:+--resume}
  if [ -f "$RUN/config.json" ]; then
    echo "== $RUN was interrupted: resuming it"
    resume=--resume
  fi
  echo "== train SparCode on ml-1m ($EPOCHS epochs; the benchmark uses the full preset)"
  $SC train --model sparcode --dataset ml-1m --split multi-target --out "$RUN" --epochs "$EPOCHS" $resume
fi
echo "== evaluate (served-exact: quantized codes, ReLU(S + b), 9-bit FeatureField values)"
$SC evaluate "$RUN"
echo "== export codes → pseudo-terms"
$SC export "$RUN" --out "$EXPORT" --force

started_es=0
cleanup() { if [ "$started_es" = 1 ]; then $SC es stop || true; fi; }
trap cleanup EXIT
if [ -n "${ELASTICSEARCH_URL:-}" ] || { command -v java >/dev/null && command -v mvn >/dev/null; }; then
  if [ -z "${ELASTICSEARCH_URL:-}" ]; then
    if $SC es status >/dev/null 2>&1; then
      export ELASTICSEARCH_URL=$($SC es status)
    elif .venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9250/_cluster/health', timeout=5)" >/dev/null 2>&1; then
      echo "== using the node that answers on 127.0.0.1:9250 (not started by this checkout)"
      export ELASTICSEARCH_URL=http://127.0.0.1:9250
    else
      echo "== start a local Elasticsearch node"
      $SC es start
      started_es=1
      export ELASTICSEARCH_URL=$($SC es status)
    fi
  fi
  echo "== index into Elasticsearch at alias $ALIAS (new versioned index + atomic alias swap)"
  $SC reindex "$EXPORT" --alias "$ALIAS" --delete-old
  BACKEND=(--backend es --alias "$ALIAS")
else
  echo "== Java and Maven not found: serving from the embedded backend instead of Elasticsearch"
  BACKEND=(--backend local)
fi
for user in 1 2 3; do
  $SC search --run "$RUN" --user "$user" --k 5 "${BACKEND[@]}" --export "$EXPORT"
done
echo "== evaluate through the serving backend"
$SC evaluate "$RUN" "${BACKEND[@]}" --export "$EXPORT"
