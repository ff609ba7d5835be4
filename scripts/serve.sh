#!/usr/bin/env bash
# One command: set up everything (venv, dependencies, migrations, a seeded learngene registry) and start
# the service on the embedded default (SQLite + local artifact folder + in-process worker).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/learngene serve "$@"
