#!/usr/bin/env bash
# Generates Go stubs from proto/ (protoc-gen-go, protoc-gen-go-grpc, into a temporary GOPATH)
# and runs them (go test) against the real binary: every RPC, error details read with
# status.FromError(err).Details(), health and reflection.
# No module proxy: Debian's packages hold Go, grpc-go, protobuf-go and genproto, built in GOPATH
# mode (see the toolchain notes). Installs them with apt-get when missing, builds the binary
# unless STREAM_EXPORT_BIN names one. Extra arguments go to `go test`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$root/conformance/go-grpc"

# golang-github-golang-protobuf-1-5-dev, not the 1.3 package: with 1.3, decoding a message
# that holds a Timestamp panics.
packages=(golang-go golang-google-grpc-dev golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
    golang-google-genproto-dev protoc-gen-go protoc-gen-go-grpc protobuf-compiler)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    timeout 600 "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ -z "${STREAM_EXPORT_BIN:-}" ]; then
    (cd "$root" && cargo build --quiet --bin stream-export)
    export STREAM_EXPORT_BIN="$root/target/debug/stream-export"
fi

# Debian's Go sources: the folder above src/google.golang.org/grpc.
gocode="$(dpkg -L golang-google-grpc-dev | sed -n 's|/src/google.golang.org/grpc$||p' | head -n 1)"
[ -d "$gocode/src" ] || { echo "no Go sources of golang-google-grpc-dev found" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/stream-export-go.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/src/stream-export-conformance"
# The stubs land at the proto's go_package path under $work/src. google/api/annotations.proto
# maps to genproto's package; the well-known types come with protobuf-compiler (/usr/include).
protoc -I "$root/proto" --go_out="$work/src" --go-grpc_out="$work/src" \
    "$root/proto/streamexport/v1/export.proto"
cp "$here"/*_test.go "$work/src/stream-export-conformance/"

export GO111MODULE=off GOPATH="$work:$gocode" GOPROXY=off GOFLAGS= GOTOOLCHAIN=local
cd "$work/src/stream-export-conformance"
exec go test -count=1 -timeout 300s -v "$@" .
