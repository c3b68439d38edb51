#!/usr/bin/env bash
# Fails when the committed generated code (and the Envoy template generated from the
# contract) differs from what proto/ generates now.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
scripts/gen.sh "$tmp/python" "$tmp/ts" "$tmp/envoy.yaml"
status=0
diff -r -x __pycache__ gen/python/skm "$tmp/python/skm" >/dev/null || { echo "gen/python is stale: run 'make gen' and commit" >&2; status=1; }
diff -r web/src/gen "$tmp/ts" >/dev/null || { echo "web/src/gen is stale: run 'make gen' and commit" >&2; status=1; }
diff deploy/envoy/envoy.yaml "$tmp/envoy.yaml" >/dev/null || { echo "deploy/envoy/envoy.yaml is stale: run 'make gen' and commit" >&2; status=1; }
[ $status -eq 0 ] && echo "generated code is up to date"
exit $status
