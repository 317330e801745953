#!/usr/bin/env bash
# Device run of the FP8 linear layers (docs/perf-notes.md, "FP8 linear layers"): builds the kernels
# test and the denoise benchmark with CUDA, runs the kernels test on the GPU (the FP8 kernels and
# _scaled_mm against the CPU-checked reference, the FP8 model paths, and the fused kernels the
# change touched), then times every precision of the DiT's linear layers in one process on the same
# card (default bf16, fp8 and fp8 with fast accumulation, at 1024^2 and 512^2) and compares fp8
# with bf16 on the same seeds at 1024^2, decoded by the embedded model's VAE.
#   bench/gpu_fp8_run.sh OUT_DIR COMMIT [RUNS] [PRECISIONS] [QUALITY_SEEDS]
# Everything goes to a work folder, packed into OUT_DIR/fp8-run.tgz after each stage (a device call
# returns at most 8 files); the quality report and the logs are also copied to OUT_DIR.
set -uo pipefail
out="$1"; commit="$2"; runs="${3:-1024x28,512x28}"; precisions="${4:-bf16,fp8,fp8-fast}"
seeds="${5:-1,2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
work=/tmp/fp8-run; rm -rf "$work"; mkdir -p "$work"
pack() { tar czf "$out/fp8-run.tgz" -C "$work" . 2>/dev/null || true; }
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
  | tee "$work/nvidia-smi.txt"
DGRID_JOBS="$(nproc)" timeout 420 scripts/offline/build.sh kernels_test dgrid-bench-denoise \
  > "$work/build.log" 2>&1 || { grep -B2 -A12 "error" "$work/build.log" | head -80; pack; exit 1; }
echo "[t=${SECONDS}s] built"
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$work/build.log" | tail -1)"
timeout 150 build-gpu/tests/unit/kernels/kernels_test > "$work/kernels_test.log" 2>&1
echo "[t=${SECONDS}s] kernels_test rc=$?"
grep -E "^\[ +(FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|rel err|fp8 " "$work/kernels_test.log" \
  | head -40
cp "$work/kernels_test.log" "$out/"
pack
timeout 300 build-gpu/bench/dgrid-bench-denoise --runs="$runs" --precisions="$precisions" \
  --quality_seeds="$seeds" --quality_size=1024 --quality_steps=28 --vae=models/dgrid-shapes/vae \
  --out_dir="$work" --card="$card" --commit="$commit" 2>&1 | grep -v "^\[" | tee "$work/bench.log" \
  | tail -24
echo "[t=${SECONDS}s] done"
cp "$work/bench.log" "$out/"
cp "$work"/*quality.json "$out/" 2>/dev/null
pack
