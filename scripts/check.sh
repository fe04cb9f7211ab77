#!/usr/bin/env bash
# The project's test command: lint, format check, type check, tests. Run from the repo root
# after `pip install -e '.[dev]' --config-settings editable_mode=strict` (mypy reads the strict
# editable link tree under build/, which maps compiler/, passes/, ... onto the ai_vmm package).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"
mypy
echo "== pytest"
python -m pytest -q -m "not gpu and not heavy" --durations=15 "$@"
