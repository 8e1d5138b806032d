#!/usr/bin/env bash
# run.sh — installs what is missing, builds, and runs the default job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${F2_BUILD_DIR:-build}/fairy2" recipes/default.lua "$@"
