#!/usr/bin/env bash
# Device run of layerwise DiT offload on the Wan2.1 shapes (docs/perf-notes.md, "Layerwise offload
# of the Wan2.1-14B shape"; issue #20's target: the best prefetch depth within 15% of the plain step
# time at <= 40% of its memory, 832x480x81). Builds dgrid-bench-wan-denoise with CUDA and, per shape,
# times every weight on the GPU against --dit-offload layerwise at each prefetch depth in one
# process on one card (step time, allocator peak), with the offloaded runs' final latents compared
# with the plain run's on the same seed (offload must not change them). Then the same with both CFG
# passes in one batched forward (DGRID_WAN_CFG_BATCH=1), which copies each block once per step
# instead of twice.
#   bench/gpu_wan_offload_run.sh OUT_DIR COMMIT [RUNS] [OFFLOADS] [CFG_BATCH_OFFLOADS]
# RUNS default "wan2.1-14b:3", OFFLOADS "none,1,2", CFG_BATCH_OFFLOADS "none,2" (empty: skipped).
# Run from a checkout (or `git archive` export) of COMMIT; DGRID_DEBS may point at the .deb bundle.
# If the build with precompiled headers fails, it is retried once with DGRID_PCH=OFF (the log says).
set -uo pipefail
out="$1"; commit="$2"; runs="${3:-wan2.1-14b:3}"; offloads="${4:-none,1,2}"
cfg_batch_offloads="${5-none,2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work=/tmp/wan-offload-run; rm -rf "$work"; mkdir -p "$work"
pack() { tar czf "$out/wan-offload-run.tgz" -C "$work" . 2>/dev/null || true; }
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv | tee "$work/nvidia-smi.txt"
free -g | tee -a "$work/nvidia-smi.txt"
start=$SECONDS
if ! DGRID_JOBS="$(nproc)" timeout 330 scripts/offline/build.sh dgrid-bench-wan-denoise \
     > "$work/build.log" 2>&1; then
  echo "[t=${SECONDS}s] build failed; retrying with DGRID_PCH=OFF"
  grep -B2 -A12 "error" "$work/build.log" | head -60
  cp "$work/build.log" "$work/build-pch.log"
  if ! DGRID_BUILD_DIR="$root/build-gpu-nopch" DGRID_CMAKE_ARGS=-DDGRID_PCH=OFF \
       DGRID_JOBS="$(nproc)" timeout 330 scripts/offline/build.sh dgrid-bench-wan-denoise \
       > "$work/build.log" 2>&1; then
    grep -B2 -A12 "error" "$work/build.log" | head -80; cp "$work/build.log" "$out/"; pack; exit 1
  fi
  bin=build-gpu-nopch/bench/dgrid-bench-wan-denoise
else
  bin=build-gpu/bench/dgrid-bench-wan-denoise
fi
echo "[t=${SECONDS}s] built in $((SECONDS - start)) s ($bin)"
grep -c "invalid-pch\|Winvalid-pch" "$work/build.log" | sed 's/^/invalid-pch warnings: /'
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$work/build.log" | tail -1)"
( while sleep 15; do pack; done ) & packer=$!  # partial reports come back if the call is cut
timeout 400 "$bin" --runs="$runs" --offload="$offloads" --warmup_steps=1 --prefix=offload- \
  --out_dir="$work" --card="$card" --commit="$commit" 2>&1 | grep -v "^\[" \
  | tee "$work/bench.log" | tail -12
echo "[t=${SECONDS}s] two-pass CFG done"
if [ -n "$cfg_batch_offloads" ] && [ "$SECONDS" -lt 420 ]; then
  DGRID_WAN_CFG_BATCH=1 timeout $((560 - SECONDS)) "$bin" --runs="$runs" \
    --offload="$cfg_batch_offloads" --warmup_steps=1 --prefix=offload-cfgbatch- --out_dir="$work" \
    --card="$card" --commit="$commit" 2>&1 | grep -v "^\[" | tee "$work/bench-cfgbatch.log" \
    | tail -8
  echo "[t=${SECONDS}s] batched CFG done"
fi
kill "$packer" 2>/dev/null
pack
