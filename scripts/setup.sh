#!/usr/bin/env bash
# Sets up a fresh Debian 12 machine for dgrid and builds it. Idempotent: each step is skipped when
# already done, so running it again costs seconds.
#   1. Debian packages (compilers, gRPC & co.), installed only where missing;
#   2. a Python virtual environment in .venv with torch==2.11.0 (LibTorch for the C++ build) and the
#      test dependencies of requirements-dev.txt; the deployment checks' tools (checkov,
#      kubernetes-validate, kubectl) in their own .venv-deploy from requirements-deploy.txt;
#   3. models: the default one is committed (models/dgrid-shapes); a tiny random FLUX
#      pipeline for the tests is made once in .dgrid/tiny-flux;
#   4. configure (CMake + Ninja + ccache) and build into build/.
# Environment: DGRID_BUILD_DIR (default build), DGRID_JOBS (default: number of cores),
# DGRID_CMAKE_ARGS (extra configure flags).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build_dir="${DGRID_BUILD_DIR:-build}"
jobs="${DGRID_JOBS:-$(nproc)}"
log() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Debian packages -------------------------------------------------------------------------------
packages=(
  build-essential cmake ninja-build ccache pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libspdlog-dev libfmt-dev libucx-dev libgloo-dev libsentencepiece-dev nlohmann-json3-dev
  libcpp-httplib-dev libpng-dev libjpeg62-turbo-dev libgtest-dev libgmock-dev libssl-dev zlib1g-dev clang-format
  openssl libavcodec-dev libavformat-dev libswscale-dev libwebp-dev
  chromium  # the playground page's browser test (tests/e2e/test_playground.py)
)
python3 -c 'import venv, ensurepip' 2>/dev/null || packages+=(python3-venv)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

# 2. Python virtual environment -----------------------------------------------------------------
stamp=.venv/.requirements-installed
if [ ! -x .venv/bin/python3 ]; then
  log "creating .venv"
  python3 -m venv .venv
fi
if [ ! -f "$stamp" ] || ! cmp -s requirements-dev.txt "$stamp"; then
  log "installing Python packages (torch==2.11.0 and test dependencies; several GB the first time)"
  .venv/bin/python3 -m pip install -q --upgrade pip
  .venv/bin/python3 -m pip install -q -r requirements-dev.txt
  cp requirements-dev.txt "$stamp"
else
  log "Python packages present"
fi

# 2b. Deployment check tools (ctest label `deploy`), apart: checkov pins libraries of its own -------
deploy_stamp=.venv-deploy/.requirements-installed
if [ ! -f "$deploy_stamp" ] || ! cmp -s requirements-deploy.txt "$deploy_stamp"; then
  log "installing the deployment check tools into .venv-deploy"
  [ -x .venv-deploy/bin/python3 ] || python3 -m venv .venv-deploy
  .venv-deploy/bin/python3 -m pip install -q --upgrade pip
  .venv-deploy/bin/python3 -m pip install -q -r requirements-deploy.txt
  cp requirements-deploy.txt "$deploy_stamp"
else
  log "deployment check tools present"
fi

# 3. Models: the default one is committed (models/dgrid-shapes); the tests also use a tiny random
#    FLUX pipeline (.dgrid/tiny-flux), made here once --------------------------------------------
if [ ! -f models/dgrid-shapes/model_index.json ]; then
  log "warning: models/dgrid-shapes is missing: dgrid commands will need --model"
fi
if [ ! -f .dgrid/tiny-flux/model_index.json ]; then
  log "making the tiny random FLUX pipeline in .dgrid/tiny-flux (for the tests)"
  .venv/bin/python3 tools/make_tiny_pipeline.py .dgrid/tiny-flux >/dev/null
fi

# 4. Configure and build --------------------------------------------------------------------------
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/dgrid-ccache}"
export CCACHE_SLOPPINESS="${CCACHE_SLOPPINESS:-pch_defines,time_macros,include_file_mtime,include_file_ctime}"
ccache --max-size=5G >/dev/null 2>&1 || true
if [ ! -f "$build_dir/build.ninja" ]; then
  log "configuring $build_dir"
  # shellcheck disable=SC2086
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DDGRID_PYTHON="$root/.venv/bin/python3" ${DGRID_CMAKE_ARGS:-}
fi
log "building ($jobs jobs)"
cmake --build "$build_dir" -j "$jobs"
log "done: binaries in $build_dir"
