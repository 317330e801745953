#!/usr/bin/env bash
# Device run: a kernel-by-kernel profile of one dgrid denoising step (ncu, one double and one single
# block at 1024^2, real clocks), then the side-by-side table of bench/gpu_run.sh for this commit:
# dgrid (fast path), diffusers eager and diffusers + torch.compile on the same card.
#   bench/gpu_profile_run.sh OUT_DIR COMMIT
set -uo pipefail
out="$1"; commit="$2"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
DGRID_JOBS=16 timeout 300 scripts/offline/build.sh dgrid-bench-denoise > "$out/build.log" 2>&1 ||
  { grep -B2 -A12 "error" "$out/build.log" | head -60; exit 1; }
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$out/build.log" | tail -1)"
echo "[t=${SECONDS}s] built; profiling"
timeout 150 ncu --clock-control none --csv --metrics gpu__time_duration.sum \
  build-gpu/bench/dgrid-bench-denoise --runs=1024x1 --warmup_steps=1 --layers=1 --single_layers=1 \
  --matmul_size=256 --matmul_reps=1 > "$out/ncu.csv" 2> /tmp/ncu.err; tail -3 /tmp/ncu.err
python3 - "$out/ncu.csv" <<'PY' | tee "$out/profile.txt"
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if len(r) > 10]
hdr = rows[0]; rows = rows[1:]
ki, vi = hdr.index("Kernel Name"), hdr.index("Metric Value")
ks = [(r[ki], float(r[vi].replace(",", "")) / 1e3) for r in rows]
# The last forward: from the last x_embedder-sized run of kernels; print the final 90 kernels.
tail = ks[-90:]
for i, (k, us) in enumerate(tail):
    print(f"{i:3d} {us:9.1f} us  {k[:120]}")
print(f"sum of last 90: {sum(u for _, u in tail):.1f} us")
PY
echo "[t=${SECONDS}s] side by side"
bash bench/gpu_run.sh "$out" "$commit" 420 2>&1 | tail -12
