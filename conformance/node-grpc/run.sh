#!/usr/bin/env bash
# Loads the stubs from proto/ with @grpc/proto-loader and runs them (node --test) against the
# real binary: every RPC, error details decoded from grpc-status-details-bin, health.
# Installs the locked dependencies with `npm ci`, builds the binary unless STREAM_EXPORT_BIN
# names one. Extra arguments go to `node --test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/conformance/node-grpc"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
if [ -z "${STREAM_EXPORT_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet --bin stream-export)
    export STREAM_EXPORT_BIN="$root/target/debug/stream-export"
fi
cd "$here"
exec node --test --test-reporter=spec --test-timeout=120000 "$@"
