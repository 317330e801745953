#!/usr/bin/env bash
# Sets up (scripts/setup.sh) and runs dgrid's main job.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup.sh"
build_dir="${DGRID_BUILD_DIR:-build}"
cd "$root"
"$build_dir/cli/dgrid" version
