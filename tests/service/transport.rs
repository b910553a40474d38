//! The gRPC transport as clients other than tonic's see it: `TCP_NODELAY` on accepted
//! connections, and the per-connection HTTP/2 limit the server advertises.

use crate::common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    API_KEY, API_SECRET, Options, TestEmulator,
    raw_grpc::{RawGrpc, nodelay_tcp},
    spawn_app, spawn_app_with,
};
use prost::Message;
use stream_export::{
    config::{Settings, TlsSettings, UpstreamSettings, parse_base_url},
    emulator::{EmulatorConfig, data::KNOWN_USER},
    proto::{ExportUsersRequest, ExportUsersResponse, GetTaskRequest, Task},
    startup::Application,
};

/// The lower-quartile latency of 32 sequential `GetTask`s of `task_id` (after 5 to warm up).
///
/// Nagle's algorithm on the server's socket holds the second of two small writes (here the
/// answer to the call, after the answer to the client's PING) until the client's delayed ACK:
/// 40 ms on Linux. A client that does not write in the meantime, as grpcio does not and this
/// one does not, waits that long on every call, so even the fastest quarter of the calls is that
/// slow; a loaded machine slows some calls, not every one (a median did fail under load).
async fn lower_quartile_get_task_latency(client: &mut RawGrpc, task_id: &str) -> Duration {
    let request = GetTaskRequest { task_id: task_id.to_owned() }.encode_to_vec();
    let path = "/streamexport.v1.ExportService/GetTask";
    // A fresh connection starts in quick-ACK mode; the delay shows once it has left it.
    for _ in 0..5 {
        client.unary(path, &request).await;
    }
    let mut latencies = Vec::new();
    for _ in 0..32 {
        let started = Instant::now();
        let reply = client.unary(path, &request).await;
        latencies.push(started.elapsed());
        assert_eq!(reply.status, Some(0), "GetTask succeeds: {reply:?}");
        Task::decode(reply.message).expect("a Task");
    }
    latencies.sort();
    latencies[latencies.len() / 4]
}

/// Submits a user export through `client` and returns its task id.
async fn submit(client: &mut RawGrpc) -> String {
    let request = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() }.encode_to_vec();
    let reply = client.unary("/streamexport.v1.ExportService/ExportUsers", &request).await;
    assert_eq!(reply.status, Some(0), "ExportUsers succeeds: {reply:?}");
    ExportUsersResponse::decode(reply.message).expect("an ExportUsersResponse").task_id
}

// Without TCP_NODELAY every call takes 40 ms or more; a debug build on a loaded machine
// answers in a few.
const FAR_BELOW_A_DELAYED_ACK: Duration = Duration::from_millis(20);

#[tokio::test]
async fn sequential_calls_of_a_non_tonic_client_do_not_wait_for_delayed_acks() {
    let app = spawn_app().await;
    let mut client = RawGrpc::connect(app.addr).await;
    let task_id = submit(&mut client).await;
    let latency = lower_quartile_get_task_latency(&mut client, &task_id).await;
    assert!(latency < FAR_BELOW_A_DELAYED_ACK, "lower-quartile GetTask latency {latency:?}");
    app.stop().await;
}

#[tokio::test]
async fn tls_connections_do_not_wait_for_delayed_acks_either() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap().self_signed(&key).unwrap();
    let upstream = UpstreamSettings::Remote {
        base_url: parse_base_url(&emulator.base_url()).unwrap(),
        api_key: API_KEY.into(),
        api_secret: API_SECRET.into(),
    };
    let mut settings = Settings::new("127.0.0.1:0".parse().unwrap(), upstream);
    settings.state = stream_export::config::StateSettings::Memory;
    let pem_dir = std::env::temp_dir().join(format!("stream-export-nodelay-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&pem_dir).unwrap();
    let (cert_file, key_file) = (pem_dir.join("cert.pem"), pem_dir.join("key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    settings.transport.tls = Some(TlsSettings { cert_file, key_file, client_ca_file: None });
    let app = Application::build(settings).await.unwrap();
    let _ = std::fs::remove_dir_all(&pem_dir);
    let addr = app.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into().unwrap(), nodelay_tcp(addr).await)
        .await
        .expect("a TLS handshake");
    let mut client = RawGrpc::over(tls, "localhost").await;
    let task_id = submit(&mut client).await;
    let latency = lower_quartile_get_task_latency(&mut client, &task_id).await;
    assert!(latency < FAR_BELOW_A_DELAYED_ACK, "lower-quartile GetTask latency over TLS {latency:?}");

    let _ = stop.send(());
    server.await.unwrap().unwrap();
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
