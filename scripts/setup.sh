#!/usr/bin/env bash
# Creates .venv with sparcode and its test extras. Idempotent: a second run only re-checks, and
# reaches no package index (so demo.sh and test.sh work offline) while .venv holds a finished
# install of this very pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# The sha256 of the pyproject.toml last installed, written only once the install has succeeded.
STAMP=.venv/.sparcode-installed

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }

if [ -x .venv/bin/python ] && ! python_ok .venv/bin/python; then
  echo "setup.sh: .venv runs $(.venv/bin/python -V 2>&1), sparcode needs Python 3.11 or newer;" \
       "delete .venv and run again (PYTHON=python3.11 picks the interpreter)" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  if ! python_ok "$PYTHON"; then
    echo "setup.sh: $PYTHON is not Python 3.11 or newer; run with PYTHON=python3.11 (or another >= 3.11)" >&2
    exit 1
  fi
  "$PYTHON" -m venv .venv
fi
want=$(.venv/bin/python -c 'import hashlib; print(hashlib.sha256(open("pyproject.toml", "rb").read()).hexdigest())')
# From / so the source tree cannot stand in for the install; pip check: every requirement is still there.
if [ "$(cat "$STAMP" 2>/dev/null)" = "$want" ] && (cd / && "$OLDPWD/.venv/bin/python" -c 'import sparcode.cli') 2>/dev/null \
   && .venv/bin/python -m pip check >/dev/null 2>&1; then
  exit 0
fi
rm -f "$STAMP"  # an install that fails below must not leave an older stamp vouching for .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "$want" > "$STAMP"
