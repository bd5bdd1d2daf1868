#!/usr/bin/env bash
# Regenerate the Python stubs (with mypy-protobuf type stubs) from proto/ into
# clients/python/src/eventbroker/v1/, deleting whatever was there first.
# Usage: scripts/gen_proto.sh [OUT_ROOT]   (default clients/python/src)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/clients/python/src}
python=${PYTHON:-$here/.venv/bin/python}
rm -rf "$out/eventbroker/v1"
mkdir -p "$out/eventbroker/v1"
PATH="$(dirname "$python"):$PATH" "$python" -m grpc_tools.protoc -I"$here/proto" \
  --python_out="$out" --grpc_python_out="$out" \
  --mypy_out="$out" --mypy_grpc_out="$out" \
  "$here"/proto/eventbroker/v1/*.proto
cat > "$out/eventbroker/v1/__init__.py" <<'PY'
"""Generated protobuf and gRPC stubs for eventbroker.v1 (do not edit: `make proto`)."""
PY
