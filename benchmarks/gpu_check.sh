#!/usr/bin/env bash
# The GPU check, one script for a lent CUDA machine (a few minutes of device time):
#   bash benchmarks/gpu_check.sh
# 1. the CUDA tests (tests/model/test_precision.py: reduced precision, channels-last and
#    pinned copies on the device, within REDUCED_TOLERANCE of float32 on the CPU);
# 2. the model alone (benchmarks/bench_model.py --device cuda);
# 3. whole-slide prediction, the sample and the generated 50,000^2 slide, 1 fresh process
#    each (benchmarks/bench_predict.py --device cuda --repeats 1);
# then one table: device, precision, reading threads, patches/s of the model alone, of
# reading alone and end to end, end-to-end / slower stage, peak GPU memory.
# Expected bottleneck on a GPU: reading and JPEG decoding (31-57 MPix/s per core here),
# not the model. On a machine without CUDA it says so and exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device is present here; nothing to measure (run it on a CUDA machine)"
  exit 0
fi
OUT=${OUT:-$(mktemp -d)}
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'device: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
echo "== CUDA tests"
"$PY" -m pytest -p no:cacheprovider -p no:xvfb -q tests/model/test_precision.py 2>&1 | tail -3
echo "== model alone"
"$PY" benchmarks/bench_model.py --device cuda --batch 256 2>&1 | tail -15
echo "== whole slide"
"$PY" benchmarks/bench_predict.py --device cuda --batch 256 --repeats 1 --json "$OUT/predict.json" 2>&1 | tail -6
"$PY" - "$OUT/predict.json" <<'PYEOF'
import json, sys
rows = json.load(open(sys.argv[1]))
print("\n| slide | precision | read threads | model alone /s | read alone /s | end to end /s | e2e / slower | peak GPU MB |")
print("|---|---|---|---|---|---|---|---|")
for label, r in rows.items():
    m = r["median"]
    slower = min(m["read"], m["model"])
    print(f"| {label} | {m['precision']} | {m['threads']:.0f} | {m['model']:.0f} | {m['read']:.0f} | "
          f"{m['end_to_end']:.0f} | {m['end_to_end'] / slower:.2f} | {m['gpu_peak_mb']:.0f} |")
PYEOF
