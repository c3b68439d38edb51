#!/usr/bin/env bash
# buf breaking (FILE rules) against the contract as it stood before the current work:
# the newest commit older than 4 hours (a working session lasts at most 3). Override with
# BREAKING_AGAINST=<git ref>.
set -euo pipefail
cd "$(dirname "$0")/.."
base="${BREAKING_AGAINST:-$(git rev-list -1 --before='4 hours ago' HEAD 2>/dev/null || true)}"
if [ -z "$base" ] || [ -z "$(git ls-tree -d "$base" proto 2>/dev/null)" ]; then
  echo "buf breaking: no earlier contract to compare with (first version of proto/)"
  exit 0
fi
echo "buf breaking against $(git log -1 --format='%h %cs %s' "$base")"
web/node_modules/.bin/buf breaking --against ".git#ref=$base"
