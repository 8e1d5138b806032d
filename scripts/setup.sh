#!/usr/bin/env bash
# setup.sh — installs what is missing (Debian packages, a few PyPI packages) and builds fairy2 into
# build/. Idempotent: re-running installs nothing new and rebuilds incrementally.
# Used by scripts/run.sh and scripts/test.sh; F2_BUILD_DIR and F2_CUDA (AUTO|ON|OFF) override.
set -euo pipefail
cd "$(dirname "$0")/.."

# libopenblas-openmp-dev: the CPU GEMMs (linked statically; docs/performance.md).
apt_packages=(build-essential cmake pkg-config libluajit-5.1-dev lua-cjson-dev libcurl4-openssl-dev
              libopenblas-openmp-dev python3 python3-pip)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Python packages the tests use as independent references, pinned where a test depends on the exact
# behaviour (tokenizers: the Unicode tables of tests/python/test_tokenizer.py). Installed when missing
# or at another version.
py_packages=(numpy==2.4.6)
[ "${F2_SETUP_TEST_DEPS:-0}" = 1 ] && py_packages+=(safetensors==0.8.0 gguf==0.19.0 tokenizers==0.23.3)
# With CUDA: the header-only cuDNN frontend that kernels/attention_cudnn.cpp compiles against (cuDNN
# itself is loaded at run time, when present).
if [ "${F2_CUDA:-AUTO}" != OFF ] && command -v nvcc >/dev/null; then py_packages+=(nvidia-cudnn-frontend==1.32.0); fi
py_missing=()
for spec in "${py_packages[@]}"; do
  have=$(python3 -c "import importlib.metadata as m; print(m.version('${spec%%==*}'))" 2>/dev/null || true)
  [ "$have" = "${spec##*==}" ] || py_missing+=("$spec")
done
if ((${#py_missing[@]})); then
  echo "setup: pip installing ${py_missing[*]}"
  python3 -m pip install -q "${py_missing[@]}" 2>/dev/null ||
    python3 -m pip install -q --break-system-packages "${py_missing[@]}"
fi

build=${F2_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DF2_CUDA="${F2_CUDA:-AUTO}" >/dev/null
cmake --build "$build" -j"$(nproc)"
