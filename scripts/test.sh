#!/usr/bin/env bash
# test.sh — installs what is missing, builds, and runs every test (ctest). GPU-labelled tests run
# where a GPU is usable and report "skipped" elsewhere. Extra arguments go to ctest (e.g. -L gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
F2_SETUP_TEST_DEPS=1 bash scripts/setup.sh
ctest --test-dir "${F2_BUILD_DIR:-build}" --output-on-failure -j"$(nproc)" "$@"
