#!/usr/bin/env bash
# Builds and runs layerwise_offload_smoke.cc on a CUDA host from the repository root:
#   bash tests/unit/denoiser/cuda/layerwise_offload_smoke.sh [TOKENS...]
# Needs LibTorch with CUDA (the python3 on PATH, or PYTHON, imports torch) and abseil headers and
# static libraries (ABSL_DIR/include and ABSL_DIR/lib; default /usr: ../shared GPU-HOST.md says
# how to bring them to a host without them). Compiles only layerwise_offload.cc and
# common/torch_status.cc beside the test.
set -euo pipefail
PY=${PYTHON:-python3}
T=$($PY -c "import torch, os; print(os.path.dirname(torch.__file__))")
ABSL=${ABSL_DIR:-/usr}
ABSL_LIB=$ABSL/lib
[ -d "$ABSL/lib/x86_64-linux-gnu" ] && ls "$ABSL"/lib/x86_64-linux-gnu/libabsl_*.a >/dev/null 2>&1 &&
  ABSL_LIB=$ABSL/lib/x86_64-linux-gnu
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
g++ -std=c++20 -O2 -I. -I"$ABSL/include" -isystem "$T/include" \
  -isystem "$T/include/torch/csrc/api/include" -I/usr/local/cuda/include \
  tests/unit/denoiser/cuda/layerwise_offload_smoke.cc \
  services/denoiser/models/layerwise_offload.cc common/torch_status.cc -o /tmp/layerwise_offload_smoke \
  -L"$T/lib" -Wl,-rpath,"$T/lib" -Wl,--no-as-needed -ltorch -ltorch_cuda -ltorch_cpu -lc10_cuda -lc10 \
  -Wl,--as-needed -Wl,--start-group "$ABSL_LIB"/libabsl_*.a -Wl,--end-group -lpthread
for tokens in ${@:-8192 32768}; do
  echo "tokens $tokens"
  /tmp/layerwise_offload_smoke "$tokens"
done
