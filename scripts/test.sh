#!/usr/bin/env bash
# One command: set up everything (venv, dependencies, local services) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash scripts/ensure_services.sh
exec .venv/bin/python -m pytest "$@"
