#!/usr/bin/env bash
# gpu_check.sh BUILD_DIR [OUT_DIR] — on a GPU machine, runs every GPU-labelled test (C, Lua, Python)
# and every benchmark of a build made elsewhere (no ctest: its files hold the build machine's paths).
# Prints one line per test and a summary; logs go to OUT_DIR (default: BUILD_DIR/gpu-logs).
set -uo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: gpu_check.sh BUILD_DIR [OUT_DIR]}
out=${2:-$build/gpu-logs}
mkdir -p "$out"
build=$(cd "$build" && pwd)
export F2_BIN=$build/fairy2 F2_LIB=$build/libfairy2.so F2_SOURCE_DIR=$PWD F2_BUILD_DIR=$build
export F2_GEMM_CACHE=${F2_GEMM_CACHE:-$out/gemm-algos.tsv}   # the GEMM algorithm choices of this check, not ~/.cache's
# cuDNN from PyTorch's wheels (nvidia-cudnn-*), when there, for the attention's default path (test_gpu_attention's cuDNN cases).
cudnn_dir=$(python3 -c "import nvidia.cudnn as m; print(list(m.__path__)[0])" 2>/dev/null || true)
[ -n "$cudnn_dir" ] && [ -d "$cudnn_dir/lib" ] && export LD_LIBRARY_PATH="$cudnn_dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$F2_BIN" --version | tee -a "$out/gpu.txt"

passed=0 failed=0 skipped=0
run() {   # run NAME CMD...
  local name=$1; shift
  local start=$SECONDS
  "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local summary
  summary=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$out/$name.log" | tail -1)
  case $rc in
    0) passed=$((passed + 1)); echo "PASS $name ($((SECONDS - start)) s) $summary" ;;
    77) skipped=$((skipped + 1)); echo "SKIP $name: $(tail -1 "$out/$name.log")" ;;
    *) failed=$((failed + 1)); echo "FAIL $name (rc $rc) $summary"; tail -15 "$out/$name.log" | sed 's/^/    /' ;;
  esac
}
mode=${F2_GPU_CHECK:-gpu}   # gpu: GPU-labelled tests only; all: every test
pat='test_gpu_*'; [ "$mode" = all ] && pat='test_*'
for t in "$build"/$pat; do [ -x "$t" ] && [ -f "$t" ] && run "c_$(basename "$t")" "$t"; done
for t in tests/lua/$pat.lua; do [ -f "$t" ] && run "lua_$(basename "$t" .lua)" "$F2_BIN" "$t"; done
for t in tests/python/$pat.py; do [ -f "$t" ] && run "py_$(basename "$t" .py)" python3 "$t"; done
echo "$passed passed, $failed failed, $skipped skipped"
if [ "${F2_GPU_BENCH:-1}" = 1 ]; then
  for b in "$build"/bench_*; do
    [ -x "$b" ] || continue
    echo "== $(basename "$b")"
    "$b" 2>&1 | tee "$out/$(basename "$b").log"
  done
fi
[ "$failed" = 0 ]
