#!/usr/bin/env bash
# Regenerate the protobuf modules from spec/. `--check` fails when the committed files differ.
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/emberbox/_proto
target=$out
if [ "${1:-}" = "--check" ]; then target=$(mktemp -d); fi
python -m grpc_tools.protoc -I spec/envd --python_out="$target" --pyi_out="$target" \
  spec/envd/process/process.proto spec/envd/filesystem/filesystem.proto
for pkg in process filesystem; do touch "$target/$pkg/__init__.py"; done
if [ "${1:-}" = "--check" ]; then
  for f in process/process_pb2.py process/process_pb2.pyi filesystem/filesystem_pb2.py filesystem/filesystem_pb2.pyi; do
    diff -u "$out/$f" "$target/$f" || { echo "generated $f is stale: run scripts/generate_proto.sh" >&2; exit 1; }
  done
  echo "generated protobuf modules are up to date"
fi
