#!/usr/bin/env bash
# One device call of the Wan benchmarks on one GPU (docs/performance.md, "Wan on one GPU"): per
# Wan2.1 shape, diffusers + torch.compile, dgrid-bench-wan-denoise and diffusers eager (with a
# kernel profile of one pass), all in this call, then a table of every report.
#
#   bench/gpu_wan_run.sh OUT_DIR COMMIT [BUDGET_SECONDS] [SHAPES]
#
# SHAPES: comma-separated, in order (default "wan2.1-14b,wan2.1-1.3b"); timed steps are 4 for the
# 14B shape and 8 for 1.3B, after one untimed warm-up step. The build (scripts/offline/build.sh,
# only the bench target; needs .offline/debs) runs beside the first shape's torch.compile
# compilation, which then waits for it (--hold-file) before its timed steps, so nothing is timed
# while the compiler runs. A later shape's compile run is skipped when less than 170 s of the
# budget (default 560) are left. Needs the diffusers wheels in .whl/ (diffusers 0.42.1 and
# importlib_metadata; the machine has the rest). OUT_DIR gets the JSON reports and run.log.
set -uo pipefail
out="$1"; commit="$2"; budget="${3:-560}"; shapes="${4:-wan2.1-14b,wan2.1-1.3b}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
left() { echo $((budget - SECONDS)); }
main() {
logs=/tmp/wan-logs; mkdir -p "$logs"
done_file=/tmp/wan-build.done; rm -f "$done_file"
card="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
echo "card: $card"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site
steps_of() { case "$1" in *14b) echo 4 ;; *) echo 8 ;; esac; }

( start=$SECONDS
  DGRID_JOBS="$(nproc)" timeout 420 scripts/offline/build.sh dgrid-bench-wan-denoise \
    > "$logs/build.log" 2>&1
  echo $? > "$logs/build.rc"; touch "$done_file"
  echo "[build] rc=$(cat "$logs/build.rc") in $((SECONDS - start)) s" ) &
build_pid=$!

diffusers() {  # name mode shape [extra args...]
  local name=$1 mode=$2 shape=$3; shift 3
  [ "$(left)" -ge 20 ] || { echo "$name skipped: $(left) s left"; return 0; }
  echo "[t=${SECONDS}s] $name"
  timeout "$(left)" python3 bench/diffusers_wan_denoise.py --mode "$mode" --shape "$shape" \
    --steps "$(steps_of "$shape")" --warmup 1 --out "$out" --card "$card" --commit "$commit" "$@" \
    > "$logs/$name.log" 2>&1
  echo "$name rc=$?"; grep -v -i warn "$logs/$name.log" | tail -6
}
dgrid_ok=0
built() {  # waits for the build once; 0 when the bench binary is there
  if [ "$dgrid_ok" = 0 ]; then
    wait "$build_pid"
    if [ "$(cat "$logs/build.rc" 2>/dev/null)" = 0 ]; then
      eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$logs/build.log" | tail -1)"
      dgrid_ok=1
    else
      dgrid_ok=2; echo "build failed:"; grep -B2 -A10 -E "error|Error" "$logs/build.log" | head -60
      tail -20 "$logs/build.log"
    fi
  fi
  [ "$dgrid_ok" = 1 ]
}

first=1
IFS=, read -ra shape_list <<< "$shapes"
for shape in "${shape_list[@]}"; do
  if [ "$first" = 1 ]; then
    diffusers "compile-$shape" compile "$shape" --hold-file "$done_file" --hold-max-s 480
    first=0
  fi
  if built && [ "$(left)" -ge 20 ]; then
    echo "[t=${SECONDS}s] dgrid $shape"
    timeout "$(left)" build-gpu/bench/dgrid-bench-wan-denoise \
      --runs="$shape:$(steps_of "$shape")" --warmup_steps=1 --out_dir="$out" --card="$card" \
      --commit="$commit" > "$logs/dgrid-$shape.log" 2>&1
    echo "dgrid $shape rc=$?"; tail -4 "$logs/dgrid-$shape.log"
  fi
  diffusers "eager-$shape" eager "$shape" --profile
  if [ "$shape" != "${shape_list[0]}" ]; then
    if [ "$(left)" -ge 170 ]; then diffusers "compile-$shape" compile "$shape"
    else echo "compile-$shape skipped: $(left) s left"; fi
  fi
done
echo "[t=${SECONDS}s] done"
python3 - "$out" <<'PY'
import glob, json, sys
print(f"\n{'report':<34}{'step_ms':>10}{'TFLOP/s':>9}{'frac':>6}{'peak_MiB':>10}{'first_ms':>10}  matmul")
for p in sorted(glob.glob(sys.argv[1] + "/*.json")):
    r = json.load(open(p)); c = r.get("config", {}); m = r.get("metrics", r)
    name = f"{r['tool']} {c.get('shape')} x{c.get('num_inference_steps')}"
    print(f"{name:<34}{m['median_step_ms']:10.1f}{m['achieved_tflops']:9.0f}"
          f"{m['fraction_of_matmul']:6.2f}{m['peak_memory_mb']:10.0f}"
          f"{r.get('first_compiled_call_ms', 0):10.0f}  {m['matmul_tflops']:.0f} "
          f"finite={m['output_finite']}")
    prof = r.get("profile")
    if prof:
        print("    one pass: " + ", ".join(f"{k} {v:.0f} ms" for k, v in prof["categories_ms"].items()))
PY
}
main 2>&1 | tee "$out/run.log"
