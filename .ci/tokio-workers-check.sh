#!/usr/bin/env bash
# Shows how many Tokio worker threads the service starts under a CPU quota: runs the binary in
# a fresh cgroup (v2 `cpu.max`, or v1 `cpu.cfs_quota_us`) per quota and counts its
# `tokio-rt-worker` threads. Needs root and a writable cgroup hierarchy; not part of .ci/run.
# Usage: .ci/tokio-workers-check.sh [binary]   (default target/debug/stream-export)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${1:-${CARGO_TARGET_DIR:-$root/target}/debug/stream-export}"
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
    base=/sys/fs/cgroup; version=2
    grep -qw cpu "$base/cgroup.subtree_control" || echo +cpu >"$base/cgroup.subtree_control"
else
    base=/sys/fs/cgroup/cpu; version=1
fi
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

count() { # $1: quota in µs per 100 ms period, or "none"; rest: extra env
    local quota="$1"; shift
    local cg="$base/stream-export-workers-$$"
    if [ "$quota" != none ]; then
        mkdir "$cg"
        if [ "$version" = 2 ]; then echo "$quota 100000" >"$cg/cpu.max"
        else echo 100000 >"$cg/cpu.cfs_period_us"; echo "$quota" >"$cg/cpu.cfs_quota_us"; fi
        env "$@" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" \
            "$bin" serve --emulator --listen "127.0.0.1:$port" >/dev/null 2>&1 &
    else
        env "$@" "$bin" serve --emulator --listen "127.0.0.1:$port" >/dev/null 2>&1 &
    fi
    local pid=$!
    sleep 1.5
    local workers
    workers="$(cat /proc/$pid/task/*/comm | grep -c '^tokio-rt-worker$' || true)"
    kill "$pid"; wait "$pid" 2>/dev/null || true
    [ "$quota" != none ] && rmdir "$cg"
    printf 'cgroup v%s  quota %-7s %-26s -> %s workers\n' "$version" "$quota" "$*" "$workers"
}
echo "machine: $(nproc) CPUs"
count none
count 50000
count 100000
count 150000
count 200000
count none TOKIO_WORKER_THREADS=5
