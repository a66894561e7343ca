#!/usr/bin/env bash
# Sets up .venv, starts a local Elasticsearch node when Java and Maven are present, runs the
# test suite against it, and stops the node again.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
