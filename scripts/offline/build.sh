#!/usr/bin/env bash
# Builds dgrid on an air-gapped host (docs/gpu.md): dependencies from the .deb bundle of
# make_bundle.sh, unpacked into a sysroot with `dpkg -x` (never into /), and LibTorch from the host's
# existing Python torch install. CUDA kernels and NCCL are compiled in when nvcc is present.
#
#   scripts/offline/build.sh [ninja targets...]
#
# Environment: DGRID_DEBS (default .offline/debs), DGRID_SYSROOT (default .sysroot), DGRID_BUILD_DIR
# (default build-gpu), DGRID_PYTHON (default: python3 on PATH), DGRID_CUDA_ARCH (default 90a),
# DGRID_JOBS (default: number of cores), DGRID_CMAKE_ARGS (extra configure flags, e.g.
# -DDGRID_PCH=OFF). Prints the environment to export before running binaries.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
debs="${DGRID_DEBS:-$root/.offline/debs}"
sysroot="${DGRID_SYSROOT:-$root/.sysroot}"
build_dir="${DGRID_BUILD_DIR:-$root/build-gpu}"
python="${DGRID_PYTHON:-$(command -v python3)}"
arch="${DGRID_CUDA_ARCH:-90a}"
jobs="${DGRID_JOBS:-$(nproc)}"

ls "$debs"/*.deb >/dev/null 2>&1 || { echo "no .deb files in $debs (run make_bundle.sh on a connected machine)" >&2; exit 1; }
mkdir -p "$sysroot"
stamp="$sysroot/.unpacked"
if [ ! -f "$stamp" ] || [ "$(ls "$debs"/*.deb | sort | md5sum)" != "$(cat "$stamp")" ]; then
  echo "[offline] unpacking $(ls "$debs"/*.deb | wc -l) packages into $sysroot"
  for f in "$debs"/*.deb; do dpkg -x "$f" "$sysroot"; done
  ls "$debs"/*.deb | sort | md5sum > "$stamp"
fi

lib="$sysroot/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LIBRARY_PATH="$lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export PATH="$sysroot/usr/bin:$PATH"

cuda_args=()
if command -v nvcc >/dev/null 2>&1; then
  cuda_args=(-DDGRID_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch"
             -DTORCH_CUDA_ARCH_LIST="${arch:0:1}.${arch:1}")
fi
if [ ! -f "$build_dir/build.ninja" ]; then
  # CMake 4 refuses configs that declare support for CMake < 3.5; Debian's older package configs do.
  cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DDGRID_SYSROOT="$sysroot" -DDGRID_PYTHON="$python" \
    "${cuda_args[@]}" ${DGRID_CMAKE_ARGS:-}
fi
cmake --build "$build_dir" -j "$jobs" ${1:+--target "$@"}
echo "[offline] built in $build_dir; before running its binaries: export LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
