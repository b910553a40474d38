"""Times unary `GetTask` calls from grpcio, as a Python client makes them: one channel, one call
after another. Prints each call's latency in microseconds, as one JSON list.

Used by the unary benchmark (`benches/service/unary.rs`) for the latency a client of another
stack than tonic sees:
    python unary_latency.py HOST:PORT TASK_ID CALLS
"""

import json
import sys
import time

import grpc

from save_export import _generate_stubs

if __name__ == "__main__":
    target, task_id, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
    _generate_stubs()
    from streamexport.v1 import export_pb2, export_pb2_grpc

    stub = export_pb2_grpc.ExportServiceStub(grpc.insecure_channel(target))
    request = export_pb2.GetTaskRequest(task_id=task_id)
    for _ in range(min(calls, 200)):  # warm-up: the connection, and grpcio's BDP probing
        stub.GetTask(request)
    latencies = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        stub.GetTask(request)
        latencies.append((time.perf_counter_ns() - started) / 1000)
    print(json.dumps(latencies))
