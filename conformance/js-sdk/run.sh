#!/usr/bin/env bash
# Runs the official Stream Chat JS SDK (stream-chat, server-side) against the emulator binary:
# QueryChannels and a channel export. Installs the locked dependencies with `npm ci`, builds the
# binary unless STREAM_EXPORT_BIN names one. Extra arguments go to `node --test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/conformance/js-sdk"
(cd "$here" && npm ci --no-audit --no-fund --loglevel=error)
if [ -z "${STREAM_EXPORT_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet --bin stream-export)
    export STREAM_EXPORT_BIN="$root/target/debug/stream-export"
fi
cd "$here"
exec node --test --test-reporter=spec --test-timeout=120000 "$@"
