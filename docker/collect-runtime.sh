#!/usr/bin/env bash
# Copies dgrid's programs from a build tree and every shared library they load (ldd, plus the
# dlopen()ed SentencePiece module) into OUT/bin and OUT/lib, for the runtime stage of
# docker/Dockerfile. The C library and the GPU driver's libraries stay out: the base image and the
# NVIDIA container runtime provide those.
#   docker/collect-runtime.sh BUILD_DIR OUT
set -euo pipefail
build="$1"
out="$2"
mkdir -p "$out/bin" "$out/lib"
for program in orchestrator/dgrid-orchestrator services/encoder/dgrid-encoder \
               services/denoiser/dgrid-denoiser services/decoder/dgrid-decoder cli/dgrid; do
  cp "$build/$program" "$out/bin/"
done
find "$build" -name 'libdgrid_spm.so' -exec cp {} "$out/lib/" \;
for binary in "$out"/bin/* "$out"/lib/libdgrid_spm.so; do
  ldd "$binary" | awk '/=> \// { print $3 }'
done | sort -u | grep -Ev '/(libc|libm|libdl|librt|libpthread|ld-linux[^/]*|libcuda|libnvidia-ml)\.so' \
  | while read -r lib; do cp -L "$lib" "$out/lib/"; done
echo "collected $(ls "$out/bin" | wc -l) programs and $(ls "$out/lib" | wc -l) libraries"
