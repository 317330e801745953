#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs every dgrid test: unit tests, parity suites against
# diffusers/transformers, and integration/e2e tests, all registered with ctest.
# Extra arguments go to ctest (e.g. `scripts/test.sh -L unit`).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
build_dir="${DGRID_BUILD_DIR:-build}"
cd "$root"
ctest --test-dir "$build_dir" --output-on-failure --timeout 900 -j "${DGRID_JOBS:-$(nproc)}" "$@"
