//! API calls honour the proxy environment as curl reads it (`HTTP_PROXY`, `HTTPS_PROXY`,
//! `NO_PROXY`): an `http://` API through a forwarding proxy (absolute-form requests, the proxy's
//! credentials from its URL), an `https://` API through a CONNECT tunnel (TLS stays end to end).

use crate::common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use common::{API_KEY, API_SECRET, TestEmulator, process::ServiceProcess};

use stream_export::{
    emulator::{EmulatorConfig, data::KNOWN_USER},
    proto::{ExportUsersRequest, GetTaskRequest, export_service_client::ExportServiceClient},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tonic::Code;

/// `Basic` credentials of `exporter:proxy-pass`, the user and password in the proxy URL.
const PROXY_AUTHORIZATION: &str = "proxy-authorization: Basic ZXhwb3J0ZXI6cHJveHktcGFzcw==";

/// A proxy for one test: records the head of the first request on each connection; relays a
/// plain HTTP request to the host its absolute-form target names (and the rest of the
/// connection after it); refuses a CONNECT with 502.
struct RecordingProxy {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
}

impl RecordingProxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let recorded = Arc::clone(&heads);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, Arc::clone(&recorded)));
            }
        });
        Self { addr, heads }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

async fn relay(mut client: TcpStream, heads: Arc<Mutex<Vec<String>>>) {
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        let Ok(read) = client.read(&mut buffer).await else { return };
        if read == 0 {
            return;
        }
        received.extend_from_slice(&buffer[..read]);
        if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
            break end;
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    heads.lock().unwrap().push(head.clone());
    if head.starts_with("CONNECT ") {
        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n").await;
        return;
    }
    // "GET http://127.0.0.1:port/path HTTP/1.1": the emulator takes the absolute form as it is.
    let target = head.split_whitespace().nth(1).unwrap_or_default();
    let authority = target.trim_start_matches("http://").split('/').next().unwrap_or_default().to_owned();
    let Ok(mut upstream) = TcpStream::connect(authority).await else { return };
    if upstream.write_all(&received).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

fn start(env: &[(&str, String)]) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServiceProcess::start(&[], &env)
}

fn users() -> ExportUsersRequest {
    ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], request_id: String::new() }
}

#[tokio::test]
async fn an_http_api_is_reached_through_the_proxy_unless_no_proxy_names_it() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let proxy = RecordingProxy::start().await;
    let mut env = vec![
        ("STREAM_BASE_URL", emulator.base_url()),
        ("STREAM_API_KEY", API_KEY.to_owned()),
        ("STREAM_API_SECRET", API_SECRET.to_owned()),
        ("HTTP_PROXY", format!("http://exporter:proxy-pass@{}", proxy.addr)),
    ];
    let service = start(&env);
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let created = client.export_users(users()).await.expect("the export starts through the proxy").into_inner();
    assert!(!created.task_id.is_empty());

    let heads = proxy.heads();
    // The process's first API request, the start-up check of the credentials, opened the proxied
    // connection; the submit reused it (this relay records the first head of each connection).
    let head = heads.first().expect("the API was reached through the proxy");
    let expected = format!("GET {}/tasks/", emulator.base_url().trim_end_matches('/'));
    assert!(head.starts_with(&expected), "an absolute-form request, got {head:?}");
    assert!(head.to_ascii_lowercase().contains(&PROXY_AUTHORIZATION.to_ascii_lowercase()), "credentials: {head:?}");
    assert!(!service.log().contains("proxy-pass"), "the proxy's password never reaches the log");
    drop(service);

    env.push(("NO_PROXY", "127.0.0.1".to_owned()));
    let direct = start(&env);
    direct.wait_ready(true).await;
    let mut client = ExportServiceClient::new(direct.channel().await);
    client.export_users(users()).await.expect("the export starts without the proxy");
    assert_eq!(proxy.heads().len(), heads.len(), "NO_PROXY bypasses the proxy");
    assert_eq!(emulator.exports_created().await, 2);
}

#[tokio::test]
async fn an_https_api_is_reached_through_a_connect_tunnel() {
    let proxy = RecordingProxy::start().await;
    let env = [
        ("STREAM_BASE_URL", "https://chat.stream-io-api.invalid".to_owned()),
        ("STREAM_API_KEY", API_KEY.to_owned()),
        ("STREAM_API_SECRET", API_SECRET.to_owned()),
        ("HTTPS_PROXY", format!("http://exporter:proxy-pass@{}", proxy.addr)),
    ];
    let service = start(&env);
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let refused = client.get_task(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "the proxy refused the tunnel: {refused:?}");

    let heads = proxy.heads();
    let head = heads.first().expect("the call went to the proxy");
    assert!(head.starts_with("CONNECT chat.stream-io-api.invalid:443 HTTP/1.1"), "a tunnel, got {head:?}");
    assert!(head.to_ascii_lowercase().contains(&PROXY_AUTHORIZATION.to_ascii_lowercase()), "credentials: {head:?}");
    assert!(!head.contains(API_KEY), "nothing of the request is in the clear: {head:?}");
}
