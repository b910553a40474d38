"""Generates the Python stubs from proto/ at test time and starts the real service binary.

The stubs go to a temporary directory (nothing generated is committed): grpcio-tools'
bundled protoc compiles proto/streamexport/v1/export.proto; `google.api.annotations_pb2`
and `google.rpc.*` come from googleapis-common-protos (a dependency of grpcio-status).
"""

import atexit
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"
SERVICE = "streamexport.v1.ExportService"
# Export jobs cut into shards of 4 (Stream's 25 is the default): the emulator started by
# `serve --emulator` has ten channels, and a job of them then runs several tasks.
JOB_SHARD_SIZE = 4
JOB_FLAGS = ["--job-shard-size", str(JOB_SHARD_SIZE)]
# The one place jobs may archive to (`--archive-allow`), under the `archive_root` fixture.
ARCHIVE_ALLOWED = "allowed"


def _generate_stubs() -> Path:
    out = Path(tempfile.mkdtemp(prefix="stream-export-pystubs-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    code = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO}",
            f"-I{well_known}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO / "streamexport" / "v1" / "export.proto"),
        ]
    )
    if code != 0:
        raise RuntimeError(f"grpc_tools.protoc failed with exit code {code}")
    return out


sys.path.insert(0, str(_generate_stubs()))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def archive_root(tmp_path_factory) -> Path:
    """A folder whose `ARCHIVE_ALLOWED` subfolder the server lets jobs archive to; the rest of
    it, not."""
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(scope="session")
def address(tmp_path_factory, archive_root):
    """Starts `stream-export serve --emulator` on a free loopback port; yields host:port."""
    binary = os.environ.get("STREAM_EXPORT_BIN", str(ROOT / "target" / "debug" / "stream-export"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("server") / "server.log"
    # Its own state directory: not the working directory's default, kept from run to run.
    state_dir = tmp_path_factory.mktemp("state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STREAM_API_", "STREAM_EXPORT_"))}
    env.setdefault("RUST_LOG", "info")
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [
                binary,
                "serve",
                "--emulator",
                "--listen",
                address,
                "--state-dir",
                str(state_dir),
                *JOB_FLAGS,
                "--archive-allow",
                (archive_root / ARCHIVE_ALLOWED).as_uri(),
            ],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 20
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=1)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        break
                except grpc.RpcError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"server did not become healthy (exit code {proc.poll()}):\n{log.read_text()}"
                    )
                time.sleep(0.1)
        yield address
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def channel(address):
    with grpc.insecure_channel(address) as channel:
        yield channel


@pytest.fixture(scope="session")
def stub(channel):
    from streamexport.v1 import export_pb2_grpc

    return export_pb2_grpc.ExportServiceStub(channel)
