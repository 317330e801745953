#!/usr/bin/env bash
# The GPU training run of the default model, as one command: train, pack, export (float16), grade on
# the held-out captions with diffusers, and leave what comes back in $OUT (at most 8 files: the
# device tool's output folder; any folder works). diffusers travels as a wheel in .whl/ when the
# machine lacks it. The transformer stage stops STOP_AFTER_S seconds (default 480) after this
# script starts, so that packing, export and grading fit in one call of the device tool; GRADE=0
# skips export and grading (a call that a --resume call continues).
#   tools/train_default_model/run_gpu.sh [train.py options...]
# A transformer stage longer than one call: the same options plus --resume in the next call, while
# the machine is still warm (/tmp/run and its flux_state.pt stay there); --minutes is the whole
# stage's length.
set -euo pipefail
OUT="${OUT:-/tmp/dgrid-train-out}"
start=$(date +%s)
mkdir -p "$OUT"
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/diffusers-0.42.1-py3-none-any.whl .whl/importlib_metadata-8.7.0-py3-none-any.whl \
    .whl/zipp-4.1.2-py3-none-any.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1
here="$(dirname "$0")"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python3 "$here/train.py" /tmp/run --stop-at $((start + ${STOP_AFTER_S:-480})) "$@" 2>&1 \
  | grep -v "Writing model shards" | tee "$OUT/train.log"
tar -C /tmp/run -cf - components tokenizers summary.json | split -b 15M - "$OUT/run.tar."
if [ "${GRADE:-1}" = 1 ]; then  # GRADE=0: a call that a --resume call will continue
  python3 "$here/export.py" /tmp/run /tmp/model --dtype float16
  # A grade, not a gate: the run's files are already in $OUT.
  python3 "$here/evaluate.py" /tmp/model --device cuda --dtype float32 --vae-roundtrip 300 \
    --grid "$OUT/heldout_float32.png" 2>&1 | grep -v "^miss" | tee "$OUT/grade.log" || true
fi
echo "whole command: $(($(date +%s) - start)) s"
ls -la "$OUT"
