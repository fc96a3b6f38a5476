#!/usr/bin/env bash
# Set up (system packages, .venv with the built wheel) and run the whole test suite
# under a virtual X server. Extra arguments go to pytest. `--fast` first: the development lane.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--fast" ]; then
  # The development lane: the checkout as installed by setup.sh (editable), no apt, no
  # wheel build, no viewer, no Dask cluster, no test over ~2 s on 2 cores. CI runs the full suite.
  shift
  [ -x .venv/bin/python ] || bash scripts/setup.sh
  .venv/bin/ruff check src tests benchmarks scripts evaluation
  .venv/bin/python -m mypy
  exec .venv/bin/python -m pytest -p no:cacheprovider -p no:xvfb -m "not slow" -q "$@"
fi
bash scripts/install_system_deps.sh
bash scripts/setup.sh --wheel
# Lint first (the rule set is in pyproject.toml): a finding fails the run.
.venv/bin/ruff check src tests benchmarks scripts evaluation
.venv/bin/ruff format --check src tests benchmarks scripts evaluation
# Types of the packages listed in pyproject.toml's [tool.mypy] (run from the checkout).
.venv/bin/python -m mypy
# Tests import the installed wheel, not src/, so missing package data fails here.
export STPREDICT_TESTING_WHEEL=1
set +e
.venv/bin/python -m pytest -p no:cacheprovider "$@"
rc=$?
set -e
# pytest exits 5 when no test ran: that is a failure here.
[ "$rc" -eq 5 ] && echo "no tests ran" >&2
exit "$rc"
