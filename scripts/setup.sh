#!/usr/bin/env bash
# Set up a virtual environment in .venv with napari-stpredict and everything it needs.
#   bash scripts/setup.sh          # editable install for development and the demo
#   bash scripts/setup.sh --wheel  # build the wheel and install that (what CI tests)
# Re-running is cheap: installed packages are kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
# torch/torchvision: these pins are the releases available on this project's Linux
# machines (CPU build from local wheels). Elsewhere `pip install napari-stpredict[qt]`
# picks the right torch for the platform.
if ! .venv/bin/python -c "import torch, torchvision" 2>/dev/null; then
  .venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
fi
if [ "${1:-}" = "--wheel" ]; then
  rm -rf dist
  .venv/bin/pip install -q build hatchling
  .venv/bin/python -m build --wheel --no-isolation --outdir dist . >/dev/null
  WHEEL=$(ls dist/napari_stpredict-*.whl)
  .venv/bin/pip install -q "${WHEEL}[qt,test,spatialdata]"
  # replace any editable install by the wheel itself
  .venv/bin/pip install -q --force-reinstall --no-deps "$WHEEL"
else
  .venv/bin/pip install -q -e ".[qt,test,spatialdata]"
fi
echo "napari-stpredict installed in .venv ($(.venv/bin/python -c 'import napari_stpredict as m; print(m.__version__, m.__file__)'))"
