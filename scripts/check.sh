#!/usr/bin/env bash
# The project's checks, in the order that fails fastest: lint, format, types, then tests.
# Kernel tests need root; under CI=true a skipped test fails the run (see tests/conftest.py).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff check" && ruff check src tests bench
echo "== ruff format --check" && ruff format --check src tests bench
echo "== mypy" && mypy
echo "== pytest" && exec pytest "$@"
