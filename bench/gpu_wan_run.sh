#!/usr/bin/env bash
# One device call of the Wan benchmarks on one GPU (docs/performance.md, "Wan on one GPU"): per
# Wan2.1 shape, diffusers + torch.compile, dgrid-bench-wan-denoise in each of its variants and
# diffusers eager (with a kernel profile of one pass), all in this call, then a table of every
# report.
#
#   bench/gpu_wan_run.sh OUT_DIR COMMIT [BUDGET_SECONDS] [SHAPES]
#
# SHAPES: comma-separated, in order (default "wan2.1-14b,wan2.1-1.3b"); timed steps are 4 for the
# 14B shape and 8 for 1.3B, after one untimed warm-up step. dgrid variants (WAN_VARIANTS, default
# "fused,cfgbatch,reference"): fused = the default path (fused CUDA blocks, two CFG passes; it
# also writes a Kineto trace of one step, summarised in the log and in OUT_DIR/profiles/),
# cfgbatch = DGRID_WAN_CFG_BATCH=1 (both CFG passes in one batch-2 forward), reference =
# DGRID_WAN_FUSED=0 (the LibTorch reference blocks); WAN_VARIANTS_14B overrides the list for the
# 14B shape (its runs cost ~35-40 s each). The build (scripts/offline/build.sh, the
# bench and wan_fused_test; needs .offline/debs), then the CUDA test wan_fused_test, run beside the
# first shape's torch.compile compilation, which then waits for them (--hold-file) before its timed
# steps, so nothing is timed while the compiler or the test runs. A later shape's compile run is
# skipped when less than 130 s of the budget (default 560) are left. Needs the diffusers wheels in
# .whl/ (diffusers 0.42.1 and importlib_metadata; the machine has the rest). OUT_DIR gets the JSON
# reports, run.log and the test's log; with PACK_TO set, a tarball of OUT_DIR is (re)written there
# after every stage (the device call returns at most 8 files).
set -uo pipefail
out="$1"; commit="$2"; budget="${3:-560}"; shapes="${4:-wan2.1-14b,wan2.1-1.3b}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
left() { echo $((budget - SECONDS)); }
pack() { [ -z "${PACK_TO:-}" ] || tar czf "$PACK_TO" -C "$out" . 2>/dev/null || true; }
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
    wan_fused_test > "$logs/build.log" 2>&1
  echo $? > "$logs/build.rc"
  echo "[build] rc=$(cat "$logs/build.rc") in $((SECONDS - start)) s"
  if [ "$(cat "$logs/build.rc")" = 0 ]; then  # the CUDA path against the reference path
    ( eval "$(grep -o 'export LD_LIBRARY_PATH=.*' "$logs/build.log" | tail -1)"
      timeout 120 build-gpu/tests/unit/denoiser/wan_fused_test > "$out/wan_fused_test.log" 2>&1
      echo "[test] wan_fused_test rc=$? in $((SECONDS - start)) s"
      grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) +\]|Failure|actual" "$out/wan_fused_test.log" )
  fi
  touch "$done_file" ) &
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
  pack
  variants="${WAN_VARIANTS:-fused,cfgbatch,reference}"
  case "$shape" in *14b) variants="${WAN_VARIANTS_14B:-$variants}" ;; esac
  IFS=, read -ra variant_list <<< "$variants"
  for variant in "${variant_list[@]}"; do
    built && [ "$(left)" -ge 20 ] || { echo "dgrid $variant $shape skipped: $(left) s left"; continue; }
    echo "[t=${SECONDS}s] dgrid $variant $shape"
    env_args=(); prefix="dgrid-$variant-"; extra=()
    case "$variant" in
      fused) prefix="dgrid-"; mkdir -p "$out/profiles"; extra=(--profile_dir=/tmp) ;;
      cfgbatch) env_args=(DGRID_WAN_CFG_BATCH=1) ;;
      reference) env_args=(DGRID_WAN_FUSED=0) ;;
    esac
    timeout "$(left)" env "${env_args[@]}" build-gpu/bench/dgrid-bench-wan-denoise \
      --runs="$shape:$(steps_of "$shape")" --warmup_steps=1 --out_dir="$out" --card="$card" \
      --commit="$commit" --prefix="$prefix" "${extra[@]}" > "$logs/dgrid-$variant-$shape.log" 2>&1
    echo "dgrid $variant $shape rc=$?"; tail -4 "$logs/dgrid-$variant-$shape.log"
    for trace in /tmp/dgrid-*-step-trace.json; do
      [ -f "$trace" ] || continue
      python3 - "$trace" "$out/profiles" <<'PY'
import collections, json, os, sys
sys.path.insert(0, "bench")
from profile_step import category
trace, dest = sys.argv[1], sys.argv[2]
events = json.load(open(trace)).get("traceEvents", [])
kernels = [e for e in events if e.get("cat") == "kernel" and "dur" in e]
cats, per_kernel = collections.defaultdict(float), collections.defaultdict(lambda: [0.0, 0])
for e in kernels:
    cats[category(e["name"])] += e["dur"] / 1e3
    per_kernel[e["name"]][0] += e["dur"] / 1e3
    per_kernel[e["name"]][1] += 1
span = (max(e["ts"] + e["dur"] for e in kernels) - min(e["ts"] for e in kernels)) / 1e3 if kernels else 0
top = sorted(per_kernel.items(), key=lambda kv: -kv[1][0])[:25]
summary = {"what": "one dgrid sampler step (both CFG passes, guidance, UniPC), CUDA kernels",
           "kernels_ms": sum(cats.values()), "first_to_last_kernel_ms": span,
           "categories_ms": dict(sorted(cats.items(), key=lambda kv: -kv[1])),
           "top_kernels": [{"name": n[:160], "ms": ms, "count": c} for n, (ms, c) in top]}
name = os.path.basename(trace).replace("-step-trace.json", "-step-profile.json")
json.dump(summary, open(os.path.join(dest, name), "w"), indent=1)
print(f"profile of one step: kernels {summary['kernels_ms']:.1f} ms over {span:.1f} ms: " +
      ", ".join(f"{k} {v:.1f}" for k, v in summary["categories_ms"].items()))
for n, (ms, c) in top[:12]:
    print(f"    {ms:9.1f} ms {c:5d}x  {n[:110]}")
PY
      rm -f "$trace"
    done
    pack
  done
  diffusers "eager-$shape" eager "$shape" --profile
  pack
  if [ "$shape" != "${shape_list[0]}" ]; then
    if [ "$(left)" -ge 130 ]; then diffusers "compile-$shape" compile "$shape"
    else echo "compile-$shape skipped: $(left) s left"; fi
    pack
  fi
done
echo "[t=${SECONDS}s] done"
python3 - "$out" <<'PY'
import glob, json, sys
import os
print(f"\n{'report':<44}{'step_ms':>10}{'TFLOP/s':>9}{'frac':>6}{'peak_MiB':>10}{'first_ms':>10}  matmul")
for p in sorted(glob.glob(sys.argv[1] + "/*.json")):
    r = json.load(open(p)); c = r.get("config", {}); m = r.get("metrics", r)
    name = f"{os.path.basename(p)[:-5]} x{c.get('num_inference_steps')}"
    print(f"{name:<44}{m['median_step_ms']:10.1f}{m['achieved_tflops']:9.0f}"
          f"{m['fraction_of_matmul']:6.2f}{m['peak_memory_mb']:10.0f}"
          f"{r.get('first_compiled_call_ms', 0):10.0f}  {m['matmul_tflops']:.0f} "
          f"finite={m['output_finite']}")
    prof = r.get("profile")
    if prof:
        print("    one pass: " + ", ".join(f"{k} {v:.0f} ms" for k, v in prof["categories_ms"].items()))
PY
}
main 2>&1 | tee "$out/run.log"
pack
