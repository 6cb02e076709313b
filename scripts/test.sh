#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite. Tests read ../shared/data and never use the network.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --dev
exec .venv/bin/python -m pytest -q -n 2 "$@"
