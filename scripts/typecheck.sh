#!/usr/bin/env bash
# Run mypy (strict, config in pyproject.toml) on the celeriac package as installed: core/ is
# `celeriac`, plugins/ is `celeriac.plugins`. mypy cannot follow setuptools' editable finder,
# so this builds a throwaway tree of symlinks with that layout and points mypy at it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/celeriac"
for entry in "$root"/core/*; do ln -s "$entry" "$tree/celeriac/$(basename "$entry")"; done
ln -s "$root/plugins" "$tree/celeriac/plugins"
cd "$root"
MYPYPATH="$tree" "$root/.venv/bin/mypy" --cache-dir "$root/.mypy_cache" -p celeriac "$@"
