#!/usr/bin/env bash
# Device run of the fused-block pass (docs/perf-notes.md): builds the kernels test and the denoise
# benchmark with CUDA, checks the fused kernels and the fast path against their references (and the
# FLUX parity suite on the GPU, when ./build/parity holds reference data), then times the denoiser
# with the fast path off (DGRID_FUSED_BLOCKS=0, the previous code path) and on, in the same run on
# the same card.
#   bench/gpu_fused_run.sh OUT_DIR COMMIT [RUNS]
set -uo pipefail
out="$1"; commit="$2"; runs="${3:-1024x28,512x28,2048x4}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
DGRID_JOBS=16 timeout 330 scripts/offline/build.sh kernels_test flux_parity_test \
  dgrid-bench-denoise > "$out/build.log" 2>&1 || { grep -B2 -A12 "error" "$out/build.log" | head -80; exit 1; }
echo "[t=${SECONDS}s] built"
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$out/build.log" | tail -1)"
export DGRID_SOURCE_DIR="$root" DGRID_BUILD_DIR="$root/build"
build-gpu/tests/unit/kernels/kernels_test > "$out/kernels_test.log" 2>&1
echo "kernels_test rc=$?"; grep -E "^\[  (FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|rel" "$out/kernels_test.log" | head -30
if [ -d build/parity/flux ]; then
  DGRID_TEST_DEVICE=cuda build-gpu/tests/parity/flux/flux_parity_test > "$out/flux_parity_cuda.log" 2>&1
  echo "flux parity on cuda rc=$?"; grep -E "^\[  (FAILED|PASSED) |Failure" "$out/flux_parity_cuda.log" | head -10
fi
mkdir -p "$out/unfused"
DGRID_FUSED_BLOCKS=0 timeout 120 build-gpu/bench/dgrid-bench-denoise --runs=1024x28 \
  --out_dir="$out/unfused" --card="$card" --commit="$commit" 2>&1 | grep -v "^\[" | tail -4
echo "[t=${SECONDS}s] fused:"
timeout 200 build-gpu/bench/dgrid-bench-denoise --runs="$runs" --out_dir="$out" --card="$card" \
  --commit="$commit" 2>&1 | grep -v "^\[" | tail -8
echo "[t=${SECONDS}s] done"
