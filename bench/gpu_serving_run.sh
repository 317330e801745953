#!/usr/bin/env bash
# Device run of the serving-side GPU checks (docs/perf-notes.md, "Batching, step caching and a
# real out-of-memory on the GPU"): builds common_test, kernels_test and dgrid-bench-denoise with
# CUDA, then
#   1. the work queue's real CUDA out-of-memory test (issue #22 item 4),
#   2. the gated-GEMM probe and its accuracy tests (kernels_test GatedLinear*),
#   3. the batched loop at 512^2 and 256^2, B = 1, 2, 4, 8 (issue #21 item 1's GPU target),
#   4. at 1024^2 x 28 steps: bf16 and bf16-gated step times in one process, and each step-cache
#      setting's speed-up and PSNR against the uncached image (issue #21 items 2 and 4).
#   bench/gpu_serving_run.sh OUT_DIR COMMIT [CACHES]
# Run from a checkout (or `git archive` export) of COMMIT; DGRID_DEBS may point at the .deb bundle.
# Logs and JSON reports come back in OUT_DIR/serving-run.tgz (packed after each stage), the logs
# also as files.
set -uo pipefail
out="$1"; commit="$2"
caches="${3:-fbcache:0.05,fbcache:0.08,fbcache:0.12,fbcache:0.2,teacache:0.25,teacache:0.4,teacache:0.6}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
work=/tmp/serving-run; rm -rf "$work"; mkdir -p "$work"
pack() { tar czf "$out/serving-run.tgz" -C "$work" . 2>/dev/null || true; }
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
  | tee "$work/nvidia-smi.txt"
DGRID_JOBS="$(nproc)" timeout 330 scripts/offline/build.sh common_test kernels_test \
  dgrid-bench-denoise > "$work/build.log" 2>&1 \
  || { grep -B2 -A12 "error" "$work/build.log" | head -80; cp "$work/build.log" "$out/"; pack; exit 1; }
echo "[t=${SECONDS}s] built"
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$work/build.log" | tail -1)"

timeout 60 build-gpu/tests/unit/common/common_test --gtest_filter='WorkQueue.*' \
  > "$work/work_queue_test.log" 2>&1
echo "[t=${SECONDS}s] work_queue tests rc=$?"
grep -E "^\[ +(FAILED|PASSED|SKIPPED|OK) |Failure|Expected|Which is|RealCuda" \
  "$work/work_queue_test.log" | head -20
cp "$work/work_queue_test.log" "$out/"

timeout 90 build-gpu/tests/unit/kernels/kernels_test --gtest_filter='GatedLinear*' \
  > "$work/kernels_test.log" 2>&1
echo "[t=${SECONDS}s] kernels_test rc=$?"
grep -E "^\[ +(FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|rel err|gated GEMM" \
  "$work/kernels_test.log" | head -20
cp "$work/kernels_test.log" "$out/"
pack

( while sleep 15; do pack; done ) & packer=$!  # partial reports come back if the call is cut
bench=build-gpu/bench/dgrid-bench-denoise
timeout 150 "$bench" --runs=512x28,256x28 --precisions=bf16 --batches=1,2,4,8 --prefix=serving- \
  --out_dir="$work" --card="$card" --commit="$commit" 2>&1 | grep -v "^\[" \
  | tee "$work/bench-batch.log" | tail -16
echo "[t=${SECONDS}s] batches done"
timeout 240 "$bench" --runs=1024x28 --precisions=bf16,bf16-gated --caches="$caches" \
  --vae=models/dgrid-shapes/vae --prefix=serving-1024- --out_dir="$work" --card="$card" \
  --commit="$commit" 2>&1 | grep -v "^\[" | tee "$work/bench-cache.log" | tail -30
echo "[t=${SECONDS}s] done"
kill "$packer" 2>/dev/null
cp "$work"/bench-*.log "$out/"
pack
