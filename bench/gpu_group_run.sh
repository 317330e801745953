#!/usr/bin/env bash
# Device run on a machine with several GPUs (nvidia-h100-x2 / -x4): builds with CUDA, runs the
# kernel, NCCL communicator and sequence-parallel tests (and the FLUX parity suite on the GPU when
# ./build/parity is carried), then times the FLUX.1-dev-shaped denoiser at 1024^2 on one GPU (also
# 512^2, and the reference path DGRID_FUSED_BLOCKS=0) and in every group layout that fits
# (Ulysses, Ring, USP; CFG parallel with true CFG), checks each group's final latents against the
# one-GPU run (bf16, relative error), and runs `dgrid plan` on the discovered topology with the
# cost model calibrated on the one-GPU rows only, checked against every row (out of sample for
# the groups).
# Layouts are skipped once BUDGET_SECONDS (default 330) have passed, so the summary always comes
# back.
#   bench/gpu_group_run.sh OUT_DIR COMMIT [BUDGET_SECONDS] [STEPS]
set -uo pipefail
out="$1"; commit="$2"; budget="${3:-330}"; steps="${4:-28}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
gpus=$(nvidia-smi -L | wc -l)
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card x $gpus"
rep="$out/reports"; logs="$out/logs"; mkdir -p "$rep" "$logs"
DGRID_JOBS=$(nproc) timeout 400 scripts/offline/build.sh kernels_test parallel_comm_test \
  parallel_comm_worker sp_test dgrid-bench-denoise flux_parity_test dgrid > "$logs/build.log" 2>&1 ||
  { grep -B2 -A12 "error" "$logs/build.log" | head -80; exit 1; }
echo "[t=${SECONDS}s] built"
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$logs/build.log" | tail -1)"
export DGRID_SOURCE_DIR="$root" DGRID_BUILD_DIR="$root/build"
t() {  # name, command...
  local name=$1; shift
  "$@" > "$logs/$name.log" 2>&1; echo "$name rc=$? $(grep -E '^\[  (PASSED|FAILED) ' "$logs/$name.log" | tr '\n' ' ')"
}
t kernels_test build-gpu/tests/unit/kernels/kernels_test
t sp_test build-gpu/tests/unit/parallel/sp_test
export DGRID_COMM_WORKER=build-gpu/tests/unit/parallel/parallel_comm_worker
t parallel_comm_test build-gpu/tests/unit/parallel/parallel_comm_test --gtest_filter='*Nccl*'
if [ -d build/parity/flux ]; then
  export DGRID_TEST_DEVICE=cuda
  t flux_parity_cuda build-gpu/tests/parity/flux/flux_parity_test
  unset DGRID_TEST_DEVICE
fi
echo "[t=${SECONDS}s] tests done"
bench=build-gpu/bench/dgrid-bench-denoise
common=(--runs=1024x$steps --out_dir="$rep" --card="$card x $gpus" --commit="$commit" --matmul_reps=5)
port=29600
group() {  # name ulysses ring cfg true_cfg
  local name=$1 u=$2 r=$3 c=$4 tc=$5 n=$(($2 * $3 * $4)) pids=()
  [ "$n" -le "$gpus" ] || return 0
  [ "$SECONDS" -lt "$budget" ] || { echo "$name skipped (time budget)"; return 0; }
  port=$((port + 1))
  for ((k = n - 1; k >= 0; k--)); do
    timeout 240 $bench "${common[@]}" --prefix="dgrid-$name-" --ulysses=$u --ring=$r --cfg=$c \
      --rank=$k --true_cfg=$tc --leader_address=127.0.0.1:$port --save_latents="$out/lat-$name" \
      > "$logs/$name-rank$k.log" 2>&1 &
    pids+=($!)
  done
  local rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
  echo "[t=${SECONDS}s] $name rc=$rc $(grep -E '^1024x1024' "$logs/$name-rank0.log")"
}
group 1gpu 1 1 1 1.0
timeout 120 $bench "${common[@]/--runs=*/--runs=512x$steps}" --prefix=dgrid-1gpu- \
  > "$logs/1gpu-512.log" 2>&1; echo "1gpu 512: $(grep -E '^512x512' "$logs/1gpu-512.log")"
mkdir -p "$out/reference"
DGRID_FUSED_BLOCKS=0 timeout 120 $bench "${common[@]/--out_dir=*/--out_dir=$out/reference}" \
  --prefix=dgrid-1gpu-reference-path- > "$logs/1gpu-reference.log" 2>&1
echo "1gpu reference path (DGRID_FUSED_BLOCKS=0): $(grep -E '^1024x1024' "$logs/1gpu-reference.log")"
group u2 2 1 1 1.0
group r2 1 2 1 1.0
group u4 4 1 1 1.0
group u2r2 2 2 1 1.0
group r4 1 4 1 1.0
group 1gpu-cfg 1 1 1 4.0
group cfg2 1 1 2 4.0
group cfg2u2 2 1 2 4.0
python3 - "$out" <<'PY' | tee "$out/summary.txt"
import glob, json, os, re, sys
import numpy as np
out = sys.argv[1]
def load(n):
    p = f"{out}/lat-{n}-1024.f32"
    return np.fromfile(p, dtype=np.float32) if os.path.exists(p) else None
rows = {}
for p in sorted(glob.glob(f"{out}/reports/dgrid-*.json")):
    m = re.match(r"dgrid-(.*)-(\d+)\.json$", os.path.basename(p))
    r = json.load(open(p))
    rows[(m.group(1), int(m.group(2)))] = r
print(f"{'layout':<10}{'size':>6}{'gpus':>5}{'step_ms':>9}{'speedup':>8}{'rel_err_vs_1gpu':>17}")
for (name, size), r in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    ref = "1gpu-cfg" if "cfg" in name else "1gpu"
    ms = r["median_step_ms"]
    base = rows.get((ref, size), {}).get("median_step_ms", float("nan"))
    a, b = (load(name), load(ref)) if size == 1024 else (None, None)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(b)) if a is not None and b is not None else float("nan")
    print(f"{name:<10}{size:>6}{r['config'].get('gpus', 1):>5}{ms:9.1f}{base / ms:8.2f}{err:17.2e}")
PY
singles=$(ls "$rep"/dgrid-1gpu-512.json "$rep"/dgrid-1gpu-1024.json "$rep"/dgrid-1gpu-cfg-1024.json 2>/dev/null | paste -sd,)
build-gpu/cli/dgrid plan --write-topology "$out/topology.json" --calibrate "$singles" --check "$rep" \
  --json "$out/plan.json" > "$out/plan.txt" 2>&1; echo "dgrid plan rc=$?"; cat "$out/plan.txt"
tar -C "$out" -cf "$out/reports.tar" reports reference && rm -rf "$rep" "$out/reference"
tar -C "$out" -cf "$out/logs.tar" logs && rm -rf "$logs"
rm -f "$out"/lat-*.f32
echo "[t=${SECONDS}s] done"
