#!/usr/bin/env bash
# On an offline GPU host: build the whole tree with CUDA (scripts/offline/build.sh), run every test
# binary against reference data generated beforehand on a connected machine (./build/parity, made by
# `scripts/test.sh`), run the FLUX parity suite on the GPU, and run the tiny pipeline on the GPU both
# in one process and as a `dgrid up` cluster. Logs go to $OUT (default /tmp/dgrid-gpu-check).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${OUT:-/tmp/dgrid-gpu-check}"
mkdir -p "$out"
export NCCL_NVLS_ENABLE=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
start=$(date +%s)
if ! scripts/offline/build.sh > "$out/build.log" 2>&1; then
  tail -40 "$out/build.log"; exit 1
fi
echo "build: $(( $(date +%s) - start )) s on $(nproc) cores" | tee "$out/summary.txt"
export LD_LIBRARY_PATH="$root/.sysroot/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export DGRID_SOURCE_DIR="$root" DGRID_BUILD_DIR="$root/build"   # reference data lives in ./build
failed=0
run() {  # name, command...
  local name=$1; shift
  if "$@" > "$out/$name.log" 2>&1; then r=pass; else r=FAIL; failed=$((failed + 1)); fi
  echo "$name: $r ($(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/$name.log" | tr '\n' ' '))" | tee -a "$out/summary.txt"
}
for t in build-gpu/tests/unit/*/*_test build-gpu/tests/unit/*/*/*_test build-gpu/tests/parity/*/*_test; do
  [ -x "$t" ] && run "$(basename "$t")" "$t"
done
run flux_parity_test_cuda env DGRID_TEST_DEVICE=cuda build-gpu/tests/parity/flux/flux_parity_test
run fuzz_driver build-gpu/tests/fuzz/safetensors_header_fuzz_driver --corpus=tests/fuzz/corpus/safetensors_header --seed=1 --iterations=100000 --max_seconds=20

# The tiny pipeline on the GPU: one process, then a cluster; the two images must be identical.
dgrid=build-gpu/cli/dgrid
model="$root/.dgrid/tiny-flux"
run local_cuda "$dgrid" generate --local --device cuda --model "$model" --seed 42 -o "$out/local_cuda.png" "a red circle"
ready="$out/ready"; rm -f "$ready"
"$dgrid" up --model "$model" --device cuda --port 0 --http-port 0 --decoders 2 --log-dir "$out/cluster-logs" --ready-file "$ready" > "$out/up.log" 2>&1 &
up=$!
for _ in $(seq 1 600); do [ -s "$ready" ] && break; sleep 0.2; done
read -r grpc http < "$ready"
run cluster_cuda "$dgrid" generate --server "$grpc" --seed 42 -o "$out/cluster_cuda.png" "a red circle"
kill -INT $up; wait $up
if cmp -s "$out/local_cuda.png" "$out/cluster_cuda.png"; then
  echo "cluster == single process on cuda: identical PNG" | tee -a "$out/summary.txt"
else
  echo "cluster != single process on cuda" | tee -a "$out/summary.txt"; failed=$((failed + 1))
fi
echo "failed: $failed" | tee -a "$out/summary.txt"
exit $failed
