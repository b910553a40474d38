//! The gRPC transport as clients other than tonic's see it: `TCP_NODELAY` on accepted
//! connections, and the per-connection HTTP/2 limits the server advertises.

mod common;

use std::time::{Duration, Instant};

use common::{raw_grpc::RawGrpc, spawn_app};
use prost::Message;
use stream_export::{
    emulator::data::KNOWN_USER,
    proto::{ExportUsersRequest, GetTaskRequest, Task},
};

/// Nagle's algorithm on the server's socket holds the trailers of each answer (a small second
/// write) until the client's delayed ACK: 40 ms on Linux. A client that does not write in the
/// meantime, as grpcio does not and this one does not, waits that long on every call.
#[tokio::test]
async fn sequential_calls_of_a_non_tonic_client_do_not_wait_for_delayed_acks() {
    let app = spawn_app().await;
    let mut tonic_client = app.client.clone();
    let submitted = tonic_client
        .export_users(ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() })
        .await
        .unwrap();
    let request = GetTaskRequest { task_id: submitted.into_inner().task_id }.encode_to_vec();

    let mut client = RawGrpc::connect(app.addr).await;
    let path = "/streamexport.v1.ExportService/GetTask";
    // A fresh connection starts in quick-ACK mode; the delay shows once it has left it.
    for _ in 0..5 {
        client.unary(path, &request).await;
    }
    let mut latencies = Vec::new();
    for _ in 0..30 {
        let started = Instant::now();
        let reply = client.unary(path, &request).await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, Some(0), "GetTask succeeds: {reply:?}");
        Task::decode(reply.message).expect("a Task");
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    // Without TCP_NODELAY every call takes 40 ms or more; a debug build on a loaded machine
    // answers in a few.
    assert!(median < Duration::from_millis(20), "median GetTask latency {median:?}; all: {latencies:?}");
    app.stop().await;
}
