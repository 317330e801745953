#!/usr/bin/env bash
# Fails when a C++/CUDA source is not formatted as .clang-format says (clang-format --dry-run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v clang-format >/dev/null || { echo "clang-format not installed"; exit 1; }
mapfile -t files < <(git ls-files '*.cc' '*.h' '*.cu' 2>/dev/null || find . -name '*.cc' -o -name '*.h' -o -name '*.cu')
clang-format --dry-run -Werror "${files[@]}"
echo "clang-format: ${#files[@]} files clean"
