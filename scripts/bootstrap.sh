#!/usr/bin/env bash
# Create or refresh the project's virtual environment (.venv) from requirements.lock, and install the one
# Debian package the service reads data from (Fashion-MNIST, for builtin:fashion-mnist and the seed).
# Idempotent: the venv records the sha256 of the lock file and pyproject.toml it was built from,
# and is rebuilt only when either changes.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian's dataset-fashion-mnist (30 MB)" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
      >/tmp/learngene-apt-data.log 2>&1 \
      || echo "bootstrap: dataset-fashion-mnist install failed (see /tmp/learngene-apt-data.log)" >&2
  else
    echo "bootstrap: builtin:fashion-mnist needs the Debian package dataset-fashion-mnist;" \
         "run: sudo apt-get install dataset-fashion-mnist" >&2
  fi
fi
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
