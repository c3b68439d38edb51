#!/usr/bin/env bash
# Generates code from proto/: Python (grpcio-tools protoc + mypy-protobuf stubs) into
# $1 (default gen/python), TypeScript (protoc-gen-es via buf) into $2 (default web/src/gen),
# and the Envoy template routing each public method to its owner into $3 (default
# deploy/envoy/envoy.yaml), from the Python just generated.
set -euo pipefail
cd "$(dirname "$0")/.."
py_out="${1:-gen/python}"
ts_out="${2:-web/src/gen}"
envoy_out="${3:-deploy/envoy/envoy.yaml}"

rm -rf "$py_out/skm"
mkdir -p "$py_out"
mapfile -t files < <(cd proto && find skm -name '*.proto' | LC_ALL=C sort)
.venv/bin/python -m grpc_tools.protoc -Iproto \
  --plugin=protoc-gen-mypy=.venv/bin/protoc-gen-mypy \
  --plugin=protoc-gen-mypy_grpc=.venv/bin/protoc-gen-mypy_grpc \
  --python_out="$py_out" --grpc_python_out="$py_out" \
  --mypy_out="quiet:$py_out" --mypy_grpc_out="quiet:$py_out" \
  "${files[@]}"
# Regular packages (not namespace ones), so mypy and the wheel see them plainly.
find "$py_out/skm" -type d -exec touch {}/__init__.py \;
# The contract as just generated comes first on the path, ahead of the committed gen/python.
PYTHONPATH="$py_out${PYTHONPATH:+:$PYTHONPATH}" .venv/bin/python -m skm_stack.envoy_routes --output "$envoy_out"

rm -rf "$ts_out"
tmp=$(mktemp -d)
web/node_modules/.bin/buf generate --template "$(pwd)/buf.gen.yaml" --output "$tmp"
mkdir -p "$(dirname "$ts_out")"
mv "$tmp/web/src/gen" "$ts_out"
rm -rf "$tmp"
