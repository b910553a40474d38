//! The gRPC transport as clients other than tonic's see it: `TCP_NODELAY` on accepted
//! connections, and the per-connection HTTP/2 limit the server advertises.

mod common;

use std::time::{Duration, Instant};

use common::{Options, raw_grpc::RawGrpc, spawn_app, spawn_app_with};
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
/// The server's first SETTINGS frame, as a raw HTTP/2 client reads it.
async fn advertised_max_concurrent_streams(addr: std::net::SocketAddr) -> usize {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (_send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut ping_pong = connection.ping_pong().expect("the ping handle");
    // The server's SETTINGS come before its answer to a ping, so once the pong is in, they apply.
    tokio::select! {
        result = &mut connection => panic!("the connection ended: {result:?}"),
        pong = ping_pong.ping(h2::Ping::opaque()) => {
            pong.expect("a pong");
        }
    }
    connection.max_concurrent_send_streams()
}

#[tokio::test]
async fn the_server_advertises_a_limit_of_concurrent_streams_per_connection() {
    let app = spawn_app().await;
    assert_eq!(advertised_max_concurrent_streams(app.addr).await, 200, "the default");
    app.stop().await;

    let app = spawn_app_with(Options {
        tweak: Some(Box::new(|settings| settings.transport.max_concurrent_streams = 3)),
        ..Options::default()
    })
    .await;
    assert_eq!(advertised_max_concurrent_streams(app.addr).await, 3, "as configured");
    app.stop().await;
}
