#!/usr/bin/env bash
# get_port.sh — puts the third-party PyTorch port of Fairy2i (WrinkleFree-Monorepo, packages/fairy2) into
# third_party/wrinklefree/ (git-ignored), for the port baselines of tests/bench/torch_baselines.py, which
# import it from there at run time. Its code never enters our files.
#
#   scripts/get_port.sh [GIT_DIR [COMMIT]]
#
# GIT_DIR: a clone or bare mirror of the monorepo; without it the repository is cloned (shallow) from
# https://github.com/DeepOpt-com/WrinkleFree-Monorepo into a temporary folder. COMMIT defaults to HEAD.
# Replaces an existing third_party/wrinklefree/ and writes the source commit to its COMMIT file.
set -euo pipefail
cd "$(dirname "$0")/.."

url=https://github.com/DeepOpt-com/WrinkleFree-Monorepo
src=${1:-}
rev=${2:-HEAD}
dest=third_party/wrinklefree

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ -z "$src" ]; then
  git clone -q --depth 1 "$url" "$tmp/repo"
  src=$tmp/repo
fi
if ! git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then
  echo "get_port: $src is not a git directory" >&2
  exit 1
fi
commit=$(git -C "$src" rev-parse --verify "$rev^{commit}" 2>/dev/null) || {
  echo "get_port: $src has no commit $rev" >&2
  exit 1
}
if ! git -C "$src" cat-file -e "$commit:packages/fairy2/src/fairy2/__init__.py" 2>/dev/null; then
  echo "get_port: $src at $commit has no packages/fairy2/src/fairy2" >&2
  exit 1
fi

mkdir -p "$tmp/out"
# Archive the subtree itself: walking the whole monorepo tree trips over blobs a partial mirror lacks.
git -C "$src" archive "$commit:packages/fairy2" | tar -x -C "$tmp/out"
echo "$commit" > "$tmp/out/COMMIT"
rm -rf "$dest"
mkdir -p third_party
mv "$tmp/out" "$dest"
echo "get_port: $dest from $commit ($(du -sh "$dest" | cut -f1)); import path $dest/src"
