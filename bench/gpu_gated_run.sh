#!/usr/bin/env bash
# Device run of the served fast FP8 accumulation and the gated residuals folded into the output
# GEMMs (docs/perf-notes.md, "Served fast accumulation, gated residuals in the output GEMMs"):
# builds the kernels test and the denoise benchmark with CUDA, runs the kernels tests the change
# touched on the GPU (the fused GEMM against the unfused path, the fused blocks against the
# reference blocks, the FP8 and fp8-fast model paths), then times every variant in one process on
# the same card (bf16 = the default path, bf16-gated = the residuals folded into the GEMMs (opt-in),
# fp8, fp8-fast) and compares each with bf16 on the same seeds at 1024^2, decoded by the embedded
# model's VAE.
#   bench/gpu_gated_run.sh OUT_DIR COMMIT [RUNS] [PRECISIONS] [QUALITY_SEEDS]
# Run from a checkout (or `git archive` export) of COMMIT; DGRID_DEBS may point at the .deb bundle.
# The logs, the JSON reports and the quality report come back in OUT_DIR/gated-run.tgz (packed after
# each stage: a device call returns at most 8 files); the logs are also copied to OUT_DIR.
set -uo pipefail
out="$1"; commit="$2"; runs="${3:-1024x28,512x28,256x28}"
precisions="${4:-bf16,bf16-gated,fp8,fp8-fast}"; seeds="${5:-1,2,3}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
work=/tmp/gated-run; rm -rf "$work"; mkdir -p "$work"
pack() { tar czf "$out/gated-run.tgz" -C "$work" . 2>/dev/null || true; }
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
  | tee "$work/nvidia-smi.txt"
DGRID_JOBS="$(nproc)" timeout 400 scripts/offline/build.sh kernels_test dgrid-bench-denoise \
  > "$work/build.log" 2>&1 || { grep -B2 -A12 "error" "$work/build.log" | head -80; cp "$work/build.log" "$out/"; pack; exit 1; }
echo "[t=${SECONDS}s] built"
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$work/build.log" | tail -1)"
timeout 120 build-gpu/tests/unit/kernels/kernels_test \
  --gtest_filter='GatedLinear*:FluxFused*:FluxFp8Model*:Fp8LinearCuda*' > "$work/kernels_test.log" 2>&1
echo "[t=${SECONDS}s] kernels_test rc=$?"
grep -E "^\[ +(FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|rel err|gated GEMM|fp8" \
  "$work/kernels_test.log" | head -40
cp "$work/kernels_test.log" "$out/"
pack
( while sleep 15; do pack; done ) & packer=$!  # partial reports come back if the call is cut
timeout 330 build-gpu/bench/dgrid-bench-denoise --runs="$runs" --precisions="$precisions" \
  --quality_seeds="$seeds" --quality_size=1024 --quality_steps=28 --vae=models/dgrid-shapes/vae \
  --out_dir="$work" --card="$card" --commit="$commit" 2>&1 | grep -v "^\[" | tee "$work/bench.log" \
  | tail -30
kill "$packer" 2>/dev/null
echo "[t=${SECONDS}s] done"
cp "$work/bench.log" "$out/"
cp "$work"/*quality.json "$out/" 2>/dev/null
pack
