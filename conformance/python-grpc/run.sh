#!/usr/bin/env bash
# Generates Python stubs from proto/ (grpcio-tools, into a temporary directory) and runs them
# against the real binary: every RPC, error details, health and reflection.
# Creates the venv .venv/python-grpc at the repository root, builds the binary unless
# STREAM_EXPORT_BIN names one, and runs pytest (extra arguments go to pytest).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$root/.venv/python-grpc"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/conformance/python-grpc/requirements.txt"
if [ -z "${STREAM_EXPORT_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet --bin stream-export)
    export STREAM_EXPORT_BIN="$root/target/debug/stream-export"
fi
cd "$root"
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider "$root/conformance/python-grpc" "$@"
