#!/usr/bin/env bash
# gpu_pack.sh BUILD_DIR OUT_TARBALL — packs what a GPU machine without this project's build
# dependencies needs from a build made here (-DF2_CUDA=ON): the fairy2 executable, libfairy2.so, the GPU
# tests and the benchmarks, stripped, as one xz tarball (the fat binaries compress about 4x). On the
# GPU machine: mkdir -p g && tar xJf TARBALL -C g && bash scripts/gpu_check.sh g OUT_DIR
set -euo pipefail
build=${1:?usage: gpu_pack.sh BUILD_DIR OUT_TARBALL}
out=${2:?usage: gpu_pack.sh BUILD_DIR OUT_TARBALL}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
for f in "$build"/fairy2 "$build"/libfairy2.so "$build"/test_gpu_* "$build"/bench_*; do
  [ -f "$f" ] && [ -x "$f" ] || continue
  strip -o "$stage/$(basename "$f")" "$f" 2>/dev/null || cp "$f" "$stage/"
done
tar -C "$stage" -cJf "$out" .
ls -la "$out"
