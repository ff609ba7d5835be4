#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) from requirements.lock.
# Idempotent: the venv records the sha256 of the lock file and pyproject.toml it was built from,
# and is rebuilt only when either changes.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${LEARNGENE_VENV:-.venv}
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ -f "$VENV/.built-from" ] && [ "$(cat "$VENV/.built-from")" = "$want" ]; then
  exit 0
fi
echo "bootstrap: building $VENV (one time, a few minutes: torch is large)" >&2
rm -rf "$VENV"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
# requirements.lock pins every package; installing the project against it as constraints
# keeps the install reproducible while pyproject.toml stays the single list of what we need.
"$VENV/bin/python" -m pip install --quiet -c requirements.lock -e ".[test]"
echo "$want" > "$VENV/.built-from"
