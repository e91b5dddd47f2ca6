#!/usr/bin/env bash
# Regenerates proto/*_pb2*.py from proto/telemetry.proto with the pinned grpcio-tools.
# The .proto is staged at runwire/proto/ so the generated code imports `runwire.proto.*`,
# which is where setuptools installs the proto/ folder.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/src/runwire/proto" "$stage/out"
cp "$here/proto/telemetry.proto" "$stage/src/runwire/proto/"
"$python" -m grpc_tools.protoc -I "$stage/src" \
  --python_out="$stage/out" --pyi_out="$stage/out" --grpc_python_out="$stage/out" \
  runwire/proto/telemetry.proto
cp "$stage/out/runwire/proto/"telemetry_pb2*.py* "${OUT_DIR:-$here/proto}/"
