#!/usr/bin/env bash
# One job of the resumable training run on the device machine (train_job.py): it resumes from the
# state in $STATE (the previous job's returned files, carried in; none: start from --init) and
# leaves the new state and its logs in $OUT (at most 8 files: state.json, three 15 MiB chunks,
# train.log, train_job.jsonl, bench.log, compile_cache.bin). Training stops STOP_AFTER_S seconds
# after this script starts (default 540), so that the state is written well inside a 600 s call.
#   BENCH=1: first the step measurements and the bf16 failure reproduction (gpu_bench.py), whose
#            result picks the precision when PRECISION=auto (the default); REPRO_VARIANTS names
#            the reproduction's variants (default: all), BENCH_FP32=0 skips the float32 timing.
#   tools/train_default_model/job.sh [train_job.py options...]
set -uo pipefail
start=$(date +%s)
OUT="${OUT:-/tmp/job-out}"
STATE="${STATE:-.trainstate}"
mkdir -p "$OUT"
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/diffusers-0.42.1-py3-none-any.whl \
    .whl/importlib_metadata-8.7.0-py3-none-any.whl .whl/zipp-4.1.2-py3-none-any.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
here="$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee -a "$OUT/bench.log"
PREC="${PRECISION:-auto}"
BLAS=()
if [ "${BENCH:-0}" = 1 ]; then
  python3 "$here/gpu_bench.py" ceilings 2>&1 | tee -a "$OUT/bench.log"
  python3 "$here/gpu_bench.py" repro ${REPRO_VARIANTS:+--variants "$REPRO_VARIANTS"} 2>&1 \
    | tee -a "$OUT/bench.log"
  if [ "${BENCH_FP32:-1}" = 1 ]; then
    python3 "$here/gpu_bench.py" time fp32 --batches 1024 2>&1 | tee -a "$OUT/bench.log"
  fi
fi
if [ "$PREC" = auto ]; then
  summary=$(grep repro_summary "$OUT/bench.log" 2>/dev/null | tail -1)
  if echo "$summary" | grep -q '"full": true'; then PREC=bf16
  elif echo "$summary" | grep -q '"full_no_cudnn": true'; then PREC=bf16; BLAS=(--sdpa no-cudnn)
  elif echo "$summary" | grep -q '"full_cublaslt": true'; then PREC=bf16; BLAS=(--blas cublaslt)
  else PREC=fp32; fi
fi
if [ "${BENCH:-0}" = 1 ] && [ "$PREC" = bf16 ]; then
  python3 "$here/gpu_bench.py" time bf16 --batches 1024,2048 "${BLAS[@]}" 2>&1 | tee -a "$OUT/bench.log"
fi
echo "bench and setup: $(($(date +%s) - start)) s; precision $PREC ${BLAS[*]}" | tee -a "$OUT/bench.log"
stop=$((start + ${STOP_AFTER_S:-540}))
python3 "$here/train_job.py" "$OUT" --state "$STATE" --stop-at $stop --precision "$PREC" \
  "${BLAS[@]}" "$@" 2>&1 | grep -v "Writing model shards" | tee -a "$OUT/train.log"
rc=${PIPESTATUS[0]}
if [ "$rc" != 0 ] && [ ! -f "$OUT/state.json" ] && [ "$PREC" != fp32 ]; then
  echo "train_job.py failed ($rc) in $PREC before its first save: again in fp32" | tee -a "$OUT/train.log"
  python3 "$here/train_job.py" "$OUT" --state "$STATE" --stop-at $stop --precision fp32 "$@" 2>&1 \
    | tee -a "$OUT/train.log"
fi
echo "whole command: $(($(date +%s) - start)) s"
ls -la "$OUT"
