#!/usr/bin/env bash
# Regenerate the TypeScript stubs (ts-proto on @grpc/grpc-js) from proto/ and the
# google.rpc error details into clients/typescript/src/gen/, deleting it first.
# Needs `npm ci` in clients/typescript (the Makefile does it).
# Usage: scripts/gen_proto_ts.sh [OUT_ROOT]   (default clients/typescript; stubs in OUT_ROOT/src/gen)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
package=$here/clients/typescript
out=${1:-$package}
cd "$package"
node_modules/.bin/buf generate --template buf.gen.yaml --output "$out"
