#!/usr/bin/env bash
# Device run of layerwise DiT offload on the FLUX.1-dev shape (docs/perf-notes.md, "Layerwise
# offload of the FLUX.1-dev shape"): builds dgrid-bench-denoise with CUDA and times bf16 with every
# weight on the GPU against --dit-offload layerwise at several prefetch depths, in one process on
# one card (step time, allocator peak), and compares each offloaded run's final latents with the
# plain run's on the same seeds (offload must not change them).
#   bench/gpu_offload_run.sh OUT_DIR COMMIT [RUNS] [PRECISIONS]
# Run from a checkout (or `git archive` export) of COMMIT; DGRID_DEBS may point at the .deb bundle.
set -uo pipefail
out="$1"; commit="$2"; runs="${3:-1024x6,512x6}"
precisions="${4:-bf16,offload:1,offload:2,offload:4}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
work=/tmp/offload-run; rm -rf "$work"; mkdir -p "$work"
pack() { tar czf "$out/offload-run.tgz" -C "$work" . 2>/dev/null || true; }
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,pcie.link.gen.max,pcie.link.width.max \
  --format=csv | tee "$work/nvidia-smi.txt"
DGRID_JOBS="$(nproc)" timeout 300 scripts/offline/build.sh dgrid-bench-denoise \
  > "$work/build.log" 2>&1 \
  || { grep -B2 -A12 "error" "$work/build.log" | head -80; cp "$work/build.log" "$out/"; pack; exit 1; }
echo "[t=${SECONDS}s] built"
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$work/build.log" | tail -1)"
( while sleep 15; do pack; done ) & packer=$!  # partial reports come back if the call is cut
timeout 380 build-gpu/bench/dgrid-bench-denoise --runs="$runs" --precisions="$precisions" \
  --warmup_steps=1 --quality_seeds=1 --quality_size=512 --quality_steps=4 \
  --prefix=offload- --out_dir="$work" --card="$card" --commit="$commit" 2>&1 \
  | grep -v "^\[" | tee "$work/bench.log" | tail -30
echo "[t=${SECONDS}s] done"
kill "$packer" 2>/dev/null
cp "$work/bench.log" "$out/"
pack
