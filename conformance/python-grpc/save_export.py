"""The Python example of docs/clients.md: saves a completed export as a JSON-lines file.

`ReadExport` with `RECORD_ENCODING_JSON` sends the records as the export file's own JSON
text, several per message, so the client writes bytes: no `Struct` to decode, no
`json.dumps`. Resumes where a broken stream says to (`next_index`).

Run as a script (the ReadExport benchmark does, and the Python conformance suite imports it):
    python save_export.py HOST:PORT TASK_ID FILE
"""

import sys

import grpc


def save_export(stub, task_id: str, path: str, max_resumes: int = 5) -> int:
    """Writes every record of a completed export to `path`, one JSON line each; returns the count.

    A broken stream is resumed where it broke, after the delay the service asks for; after
    `max_resumes` breaks in a row without a new record, the error is raised.
    """
    import time

    from google.rpc import error_details_pb2
    from grpc_status import rpc_status
    from streamexport.v1 import export_pb2

    count, resumes = 0, 0
    with open(path, "wb") as out:
        while True:
            request = export_pb2.ReadExportRequest(
                task_id=task_id, start_index=count, encoding=export_pb2.RECORD_ENCODING_JSON
            )
            before = count
            try:
                for message in stub.ReadExport(request):
                    out.write(b"\n".join(message.json) + b"\n")
                    count += len(message.json)
                return count
            except grpc.RpcError as error:
                resumes = 0 if count > before else resumes + 1
                if error.code() != grpc.StatusCode.UNAVAILABLE or resumes > max_resumes:
                    raise
                # The stream broke: resume at the first record not received (ErrorInfo's
                # next_index, which is `count` here), unless the service did not say.
                status = rpc_status.from_call(error)
                info, retry = error_details_pb2.ErrorInfo(), error_details_pb2.RetryInfo()
                details = status.details if status is not None else []
                if not any(d.Unpack(info) for d in details):
                    raise
                delay = next((retry.retry_delay.ToTimedelta() for d in details if d.Unpack(retry)), None)
                time.sleep(min(delay.total_seconds(), 30.0) if delay else 1.0)


def _generate_stubs() -> None:
    """Compiles proto/ into a temporary directory on sys.path (grpcio-tools' bundled protoc)."""
    import atexit
    import shutil
    import tempfile
    from pathlib import Path

    from grpc_tools import protoc

    proto = Path(__file__).resolve().parents[2] / "proto"
    well_known = Path(protoc.__file__).resolve().parent / "_proto"
    out = tempfile.mkdtemp(prefix="stream-export-pystubs-")
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    args = ["protoc", f"-I{proto}", f"-I{well_known}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + [str(proto / "streamexport" / "v1" / "export.proto")]) != 0:
        raise RuntimeError("grpc_tools.protoc failed")
    sys.path.insert(0, out)


if __name__ == "__main__":
    target, task_id, path = sys.argv[1:4]
    _generate_stubs()
    from streamexport.v1 import export_pb2_grpc

    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    stub = export_pb2_grpc.ExportServiceStub(grpc.insecure_channel(target, options=options))
    print(save_export(stub, task_id, path))
