#!/usr/bin/env bash
# Regenerate the protobuf modules from spec/. `--check` fails when the committed files differ.
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/emberbox/_proto
target=$out
if [ "${1:-}" = "--check" ]; then target=$(mktemp -d); fi
python -m grpc_tools.protoc -I spec/envd --python_out="$target" --pyi_out="$target" \
  spec/envd/process/process.proto spec/envd/filesystem/filesystem.proto
python -m grpc_tools.protoc -I spec/node --python_out="$target" --pyi_out="$target" \
  spec/node/node/node.proto
pkgs=(process filesystem node)
for pkg in "${pkgs[@]}"; do touch "$target/$pkg/__init__.py"; done
if [ "${1:-}" = "--check" ]; then
  for pkg in "${pkgs[@]}"; do
    for f in "$pkg/${pkg}_pb2.py" "$pkg/${pkg}_pb2.pyi"; do
      diff -u "$out/$f" "$target/$f" || { echo "generated $f is stale: run scripts/generate_proto.sh" >&2; exit 1; }
    done
  done
  echo "generated protobuf modules are up to date"
fi
