#!/usr/bin/env bash
# The one device run of the denoise benchmarks (docs/performance.md): diffusers eager, then the
# dgrid build and dgrid-bench-denoise, then diffusers + torch.compile with the time that is left,
# then a table of every report. Needs the diffusers wheels in .whl/ (docs/perf-notes.md).
#   bench/gpu_run.sh OUT_DIR COMMIT [BUDGET_SECONDS]
set -uo pipefail
out="$1"; commit="$2"; budget="${3:-540}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
left() { echo $((budget - SECONDS)); }
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
timeout 90 python3 bench/diffusers_denoise.py --mode eager --size 1024 --steps 28 --out "$out" \
  --card "$card" --commit "$commit" 2>&1 | tail -5
echo "[t=${SECONDS}s] building"
DGRID_JOBS=16 timeout 330 scripts/offline/build.sh dgrid-bench-denoise > "$out/build.log" 2>&1 ||
  { tail -40 "$out/build.log"; exit 1; }
echo "[t=${SECONDS}s] built"
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$out/build.log" | tail -1)"
timeout 150 build-gpu/bench/dgrid-bench-denoise --runs=1024x28,512x28,2048x4 --out_dir="$out" \
  --card="$card" --commit="$commit" 2>&1 | grep -v "^\[" | tail -12
echo "[t=${SECONDS}s] compile run, $(left) s left"
timeout "$(left)" python3 bench/diffusers_denoise.py --mode compile --size 1024 --steps 28 \
  --out "$out" --card "$card" --commit "$commit" 2>&1 | grep -v Warning | tail -5
echo "[t=${SECONDS}s] done"
python3 - "$out" <<'PY'
import glob, json, sys
print(f"\n{'report':<28}{'step_ms':>9}{'total_ms':>10}{'TFLOP/s':>9}{'frac':>6}{'peak_MiB':>10}{'first_ms':>10}")
for p in sorted(glob.glob(sys.argv[1] + "/*.json")):
    r = json.load(open(p)); c = r["config"]
    name = f"{r['tool']} {c['width']}x{c['height']}x{c['num_inference_steps']}"
    print(f"{name:<28}{r['median_step_ms']:9.1f}{r['total_duration_ms']:10.0f}{r['achieved_tflops']:9.0f}"
          f"{r['fraction_of_matmul']:6.2f}{r['peak_memory_mb']:10.0f}{r.get('first_compiled_call_ms', 0):10.0f}"
          f"  matmul {r['matmul_tflops']:.0f} finite={r['output_finite']}")
PY
