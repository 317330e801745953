#!/usr/bin/env bash
# Device run on a machine with several GPUs: builds with CUDA,
# then times the FLUX VAE decode (random FLUX.1-shaped AutoencoderKL, bf16) of one SIZE x SIZE
# picture on 1 GPU and split over 2, 4 and 8 GPUs where the machine has them (one process per
# rank, NCCL; services/decoder/parallel_vae.h), each group's image checked against every rank's
# own single-GPU decode; with WAN_VAE (an AutoencoderKLWan folder carried to the machine) the same
# for an 832x480, 81-frame Wan video. Reports: OUT_DIR/reports/dgrid-vae-decode-<shape>-r<rank>of<ranks>.json;
# summary.txt has the median time, speed-up and peak memory per rank.
#   bench/gpu_vae_decode_run.sh OUT_DIR COMMIT [SIZE] [WAN_VAE]
set -uo pipefail
out="$1"; commit="$2"; size="${3:-2048}"; wan="${4:-}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
gpus=$(nvidia-smi -L | wc -l)
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card x $gpus"
rep="$out/reports"; logs="$out/logs"; mkdir -p "$rep" "$logs"
DGRID_JOBS=$(nproc) timeout 400 scripts/offline/build.sh dgrid-bench-vae-decode \
  > "$logs/build.log" 2>&1 || { grep -B2 -A12 "error" "$logs/build.log" | head -80; exit 1; }
eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$logs/build.log" | tail -1)"
bench=build-gpu/bench/dgrid-bench-vae-decode
port=29700
run_groups() {  # name, bench flags...
  local name=$1; shift
  for n in 1 2 4 8; do
    [ "$n" -le "$gpus" ] || continue
    port=$((port + 1)); pids=()
    for ((k = n - 1; k >= 0; k--)); do
      timeout 300 $bench "$@" --ranks=$n --rank=$k --leader_address=127.0.0.1:$port \
        --out_dir="$rep" --card="$card x $gpus" --commit="$commit" \
        > "$logs/$name-$n-rank$k.log" 2>&1 &
      pids+=($!)
    done
    rc=0; for p in "${pids[@]}"; do wait "$p" || rc=1; done
    echo "[t=${SECONDS}s] $name $n GPU(s) rc=$rc $(grep -h 'median' "$logs/$name-$n-rank0.log")"
  done
}
run_groups flux --size="$size"
[ -n "$wan" ] && run_groups wan --wan_vae="$wan" --width=832 --height=480 --frames=81
python3 - "$rep" <<'PY' | tee "$out/summary.txt"
import glob, json, sys
runs = {}
for p in glob.glob(f"{sys.argv[1]}/dgrid-vae-decode-*-r*of*.json"):
    r = json.load(open(p))
    runs.setdefault(r["config"]["shape"], {}).setdefault(r["config"]["ranks"], []).append(r)
for shape, by_n in sorted(runs.items()):
    base = max(r["median_decode_ms"] for r in by_n[1]) if 1 in by_n else float("nan")
    for n in sorted(by_n):
        ms = max(r["median_decode_ms"] for r in by_n[n])
        peaks = [round(r.get("peak_memory_mb", 0))
                 for r in sorted(by_n[n], key=lambda r: r["config"]["rank"])]
        err = max(r.get("against_single_rank", {}).get("max_abs", 0) for r in by_n[n])
        print(f"{shape} on {n} GPU(s): {ms:.1f} ms, speed-up {base / ms:.2f}x, "
              f"peak allocated MiB per rank {peaks}, max abs vs 1 GPU {err:.3g}")
PY
