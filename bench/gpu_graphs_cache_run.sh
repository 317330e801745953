#!/usr/bin/env bash
# One device call for docs/perf-notes.md "CUDA graphs of the FLUX forward pass" and "Step caching's
# safe setting": builds the kernels test, the denoise benchmark and the Gloo/NCCL comm test with
# CUDA; runs the kernels test (GraphCache on the GPU, fp8-fast's accumulation bound); times bf16,
# bf16-stepmod (the modulation linears in every pass, the path before the default modulation
# rows), bf16-graph, fp8-fast and fp8-fast-graph at RUNS in one process with a one-seed quality
# run (graph latents against eager); times the teacache settings at 1024^2 x 28 against
# uncached; and runs parallel_comm_test (under gdb when the host has it, for a backtrace).
#   bench/gpu_graphs_cache_run.sh OUT_DIR COMMIT [RUNS] [CACHES]
# Work goes to /tmp/graphs-run, packed into OUT_DIR/graphs-run.tgz after every stage.
set -uo pipefail
out="$1"; commit="$2"; runs="${3:-1024x28,512x28,256x28}"
caches="${4:-teacache:0.15,teacache:0.2,teacache:0.22,teacache:0.24}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
work=/tmp/graphs-run; rm -rf "$work"; mkdir -p "$work"
pack() { tar czf "$out/graphs-run.tgz" -C "$work" . 2>/dev/null || true; }
stamp() { echo "[t=${SECONDS}s] $*"; }
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv \
  | tee "$work/nvidia-smi.txt"
DGRID_JOBS="$(nproc)" timeout 240 scripts/offline/build.sh kernels_test dgrid-bench-denoise \
  parallel_comm_test parallel_comm_worker > "$work/build.log" 2>&1 \
  || { grep -B2 -A12 "error" "$work/build.log" | head -80; pack; exit 1; }
stamp built
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$work/build.log" | tail -1)"
timeout 120 build-gpu/tests/unit/kernels/kernels_test > "$work/kernels_test.log" 2>&1
stamp "kernels_test rc=$?"
grep -E "^\[ +(FAILED|PASSED|SKIPPED) |Failure|Expected|Which is|rel err|fp8 |accum" \
  "$work/kernels_test.log" | head -40
pack
timeout 260 build-gpu/bench/dgrid-bench-denoise --runs="$runs" \
  --precisions=bf16,bf16-stepmod,bf16-graph,fp8-fast,fp8-fast-graph --quality_seeds=1 \
  --quality_size=1024 \
  --quality_steps=28 --vae=models/dgrid-shapes/vae --out_dir="$work" --card="$card" \
  --commit="$commit" 2>&1 | grep -v "^\[" | tee "$work/bench.log" | tail -30
stamp "graphs bench done"
pack
mkdir -p "$work/cache"
timeout 100 build-gpu/bench/dgrid-bench-denoise --runs=1024x28 --precisions=bf16 \
  --caches="$caches" --vae=models/dgrid-shapes/vae --out_dir="$work/cache" --card="$card" \
  --commit="$commit" 2>&1 | grep -v "^\[" | tee "$work/cache.log" | tail -16
stamp "cache bench done"
pack
if command -v gdb >/dev/null 2>&1; then
  timeout 60 gdb -batch -ex run -ex bt -ex "thread apply all bt 8" \
    --args build-gpu/tests/unit/parallel/parallel_comm_test > "$work/parallel_comm.log" 2>&1
else
  timeout 60 build-gpu/tests/unit/parallel/parallel_comm_test > "$work/parallel_comm.log" 2>&1
  echo "rc=$? (no gdb on this host)" >> "$work/parallel_comm.log"
fi
stamp "parallel_comm_test done"
grep -E "^\[ +(FAILED|PASSED|OK) |SIGSEGV|^#[0-9]|rc=" "$work/parallel_comm.log" | head -40
pack
