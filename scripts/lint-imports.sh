#!/usr/bin/env bash
# Check the import contracts in pyproject.toml ([tool.importlinter]) with import-linter.
# comm/, tracking/, datasets/ and sim/ install as v2x.comm, ... (setuptools package-dir), which
# import-linter cannot follow, so the check runs on a copy laid out as the installed package.
# Usage: scripts/lint-imports.sh [SOURCE_ROOT]   (default: the repository this script is in)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
src=${1:-$here}
bin=${LINT_IMPORTS:-$here/.venv/bin/lint-imports}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/v2x" "$tmp/v2x"
for part in comm tracking datasets sim; do
    cp -r "$src/$part" "$tmp/v2x/$part"
done
cd "$tmp"
PYTHONPATH="$tmp" "$bin" "$src/pyproject.toml" --no-cache
