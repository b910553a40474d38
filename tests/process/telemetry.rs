//! Telemetry: Prometheus metrics on the admin port of the real binary, the caller's W3C trace
//! context passed on to upstream requests, the log lines (plain off a terminal, each field once,
//! gRPC's code names), and the start-up check of the Stream credentials.

use crate::common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::Path, http::HeaderMap, routing::get};
use common::{API_KEY, API_SECRET, Options, TestEmulator, process::ServiceProcess, raw_grpc::RawGrpc, spawn_app_with};
use serde_json::{Value, json};
use stream_export::{
    emulator::{EmulatorConfig, data::KNOWN_USER},
    proto::{
        ExportUserRequest, ExportUsersRequest, GetTaskRequest, WatchTaskRequest,
        export_service_client::ExportServiceClient,
    },
};
use tokio_stream::StreamExt;

#[tokio::test]
async fn prometheus_metrics_cover_calls_upstream_and_watches() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let metrics_port = common::process::free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let base_url = emulator.base_url();
    let service = ServiceProcess::start(
        &["--metrics-listen", &metrics_addr],
        &[("STREAM_BASE_URL", &base_url), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET)],
    );
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap();
    let _ = client.get_task(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap_err();
    let mut watch =
        client.watch_task(WatchTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap().into_inner();
    let _ = watch.next().await;

    let text = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    for expected in [
        r#"stream_export_rpc_requests_total{method="streamexport.v1.ExportService/ExportUser",code="Ok"} 1"#,
        r#"stream_export_rpc_requests_total{method="streamexport.v1.ExportService/GetTask",code="NotFound"} 1"#,
        r#"stream_export_rpc_duration_seconds_bucket{method="streamexport.v1.ExportService/ExportUser",le="#,
        r#"stream_export_upstream_requests_total{operation="ExportUser",status="200"} 1"#,
        r#"stream_export_upstream_requests_total{operation="GetTask",status="404"}"#,
        r#"stream_export_upstream_duration_seconds_bucket{operation="ExportUser",le="#,
        r#"stream_export_upstream_ratelimit_remaining{operation="ExportUser"}"#,
        "stream_export_watch_streams",
        "stream_export_watch_pollers",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
}

/// The service with its metrics port, against a fresh emulator; returns the `/metrics` URL.
async fn service_with_metrics(emulator: &TestEmulator) -> (ServiceProcess, String) {
    let metrics_addr = format!("127.0.0.1:{}", common::process::free_port());
    let base_url = emulator.base_url();
    let service = ServiceProcess::start(
        &["--metrics-listen", &metrics_addr],
        &[("STREAM_BASE_URL", &base_url), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET)],
    );
    service.wait_ready(true).await;
    (service, format!("http://{metrics_addr}/metrics"))
}

/// Waits (a few seconds at most) until `/metrics` has every one of `expected`.
async fn metrics_with(url: &str, expected: &[&str]) -> String {
    let started = std::time::Instant::now();
    loop {
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        if expected.iter().all(|line| text.contains(line)) || started.elapsed() > Duration::from_secs(5) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn calls_to_unknown_methods_share_one_label() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let (service, metrics) = service_with_metrics(&emulator).await;
    let mut client = RawGrpc::connect(([127, 0, 0, 1], service.port).into()).await;
    for i in 0..200 {
        let reply = client.unary(&format!("/probe{i}.Service/Call"), b"").await;
        assert_eq!(reply.status, Some(tonic::Code::Unimplemented as i32));
        let reply = client.unary(&format!("/streamexport.v1.ExportService/Probe{i}"), b"").await;
        assert_eq!(reply.status, Some(tonic::Code::Unimplemented as i32));
    }
    // Known methods of every served service keep their own label.
    let reply = client.unary("/grpc.health.v1.Health/Check", b"").await;
    assert_eq!(reply.status, Some(0));

    let text =
        metrics_with(&metrics, &[r#"stream_export_rpc_requests_total{method="unknown",code="Unimplemented"} 400"#])
            .await;
    for expected in [
        r#"stream_export_rpc_requests_total{method="unknown",code="Unimplemented"} 400"#,
        r#"stream_export_rpc_requests_total{method="grpc.health.v1.Health/Check",code="Ok"}"#,
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(!text.contains("probe") && !text.contains("Probe"), "a path became a label:\n{text}");
    let series = text.lines().filter(|line| line.starts_with("stream_export_rpc_requests_total{")).count();
    assert!(series <= 5, "{series} request series:\n{text}");
    assert!(text.len() < 32 * 1024, "/metrics grew to {} bytes", text.len());
}

#[tokio::test]
async fn streaming_calls_are_counted_with_their_final_code() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let (service, metrics) = service_with_metrics(&emulator).await;
    let mut client = ExportServiceClient::new(service.channel().await);

    // The response starts normally, then the stream ends with NOT_FOUND in its trailers.
    let mut unknown =
        client.watch_task(WatchTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap().into_inner();
    let status = unknown.next().await.expect("an item").expect_err("an unknown task fails");
    assert_eq!(status.code(), tonic::Code::NotFound);

    // A watcher that leaves after the snapshot: the call ends cancelled, not OK.
    let submitted = client
        .export_users(ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut known = client.watch_task(WatchTaskRequest { task_id: submitted.task_id }).await.unwrap().into_inner();
    known.next().await.expect("the snapshot").expect("a snapshot");
    drop(known);

    // A unary caller that gives up before the answer: counted as cancelled too.
    emulator.inject("export_user", 1, serde_json::json!({"kind": "delay", "ms": 3000})).await;
    let call = client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() });
    tokio::time::timeout(Duration::from_millis(300), call).await.expect_err("the caller gives up first");

    let expected = [
        r#"stream_export_rpc_requests_total{method="streamexport.v1.ExportService/WatchTask",code="NotFound"} 1"#,
        r#"stream_export_rpc_requests_total{method="streamexport.v1.ExportService/WatchTask",code="Cancelled"} 1"#,
        r#"stream_export_rpc_requests_total{method="streamexport.v1.ExportService/ExportUser",code="Cancelled"} 1"#,
    ];
    let text = metrics_with(&metrics, &expected).await;
    for expected in expected {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    assert!(
        !text.contains(
            r#"stream_export_rpc_requests_total{method="streamexport.v1.ExportService/WatchTask",code="Ok"}"#
        ),
        "a stream was counted OK when it started:\n{text}"
    );
}

/// `traceparent` and `tracestate` as an upstream request carried them.
type TraceHeaders = (Option<String>, Option<String>);

#[tokio::test]
async fn the_callers_traceparent_reaches_upstream() {
    // A stand-in upstream that records the trace headers it receives.
    let seen: Arc<Mutex<Vec<TraceHeaders>>> = Arc::default();
    let record = Arc::clone(&seen);
    let upstream = Router::new().route(
        "/tasks/{id}",
        get(move |Path(id): Path<String>, headers: HeaderMap| {
            let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
            record.lock().unwrap().push((header("traceparent"), header("tracestate")));
            async move {
                Json::<Value>(json!({"task_id": id, "status": "running", "created_at": "2024-01-01T00:00:00Z",
                    "updated_at": "2024-01-01T00:00:00Z", "duration": "0.10ms"}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await });

    let app = spawn_app_with(Options { base_url_override: Some(format!("http://{addr}")), ..Options::default() }).await;
    let mut client = app.client.clone();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut request = tonic::Request::new(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() });
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request.metadata_mut().insert("tracestate", "vendor=opaque".parse().unwrap());
    client.get_task(request).await.unwrap();
    client.get_task(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [(Some(traceparent.to_owned()), Some("vendor=opaque".to_owned())), (None, None)],
        "the first call's context is passed on, and nothing leaks into the next call"
    );
    app.stop().await;
}

/// The log lines of the service that came with `message`.
fn lines_with<'a>(log: &'a str, message: &str) -> Vec<&'a str> {
    log.lines().filter(|line| line.contains(message)).collect()
}

#[tokio::test]
async fn log_lines_in_a_pipe_are_plain_and_name_each_field_once() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let base_url = emulator.base_url();
    // The log goes to a pipe, and nothing in the environment asks for or against colour.
    let service = ServiceProcess::start(
        &[],
        &[
            ("STREAM_BASE_URL", &base_url),
            ("STREAM_API_KEY", API_KEY),
            ("STREAM_API_SECRET", API_SECRET),
            ("RUST_LOG", "info,stream_export::telemetry=debug"),
        ],
    );
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = tonic::Request::new(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() });
    traced.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    let status = client.get_task(traced).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = service.log();

    assert!(!log.contains('\x1b'), "ANSI escapes in a log written to a pipe:\n{log:?}");

    // The audit event names its caller itself; the call's span does not repeat it.
    let audit = lines_with(&log, " audit:");
    assert!(!audit.is_empty(), "no audit line:\n{log}");
    for line in &audit {
        assert_eq!(line.matches("caller=").count(), 1, "the caller twice: {line}");
        assert!(line.contains("caller=anonymous"), "{line}");
        assert!(!line.contains("trace_id"), "an untraced call names no trace: {line}");
    }
    // The other lines of a call still name the caller (from the span), and a traced call its trace.
    let failed = lines_with(&log, "upstream request failed");
    assert!(
        failed.iter().any(|line| line.contains(r#"caller="anonymous""#)
            && line.contains(r#"trace_id="4bf92f3577b34da6a3ce929d0e0e4736""#)),
        "the failed call's line names its caller and trace:\n{log}"
    );
    for line in &failed {
        assert_eq!(line.matches("caller=").count(), 1, "the caller twice: {line}");
        assert_eq!(line.matches("task_id=").count(), 1, "the task twice: {line}");
    }

    // Status codes are spelled as gRPC spells them, on every line that names one.
    let finished = lines_with(&log, "call finished");
    assert!(finished.iter().any(|line| line.contains(r#"code="OK""#)), "{log}");
    assert!(finished.iter().any(|line| line.contains(r#"code="NOT_FOUND""#)), "{log}");
    for spelling in [r#"code="Ok""#, r#"code="NotFound""#, "code=Ok", "code=NotFound"] {
        assert!(!log.contains(spelling), "{spelling} in:\n{log}");
    }
}

#[tokio::test]
async fn json_log_lines_name_each_field_once() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let base_url = emulator.base_url();
    let service = ServiceProcess::start(
        &["--log-format", "json"],
        &[("STREAM_BASE_URL", &base_url), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET)],
    );
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = service.log();

    let lines: Vec<Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}")))
        .collect();
    let audit = lines.iter().find(|line| line["target"] == "audit").unwrap_or_else(|| panic!("no audit line:\n{log}"));
    assert_eq!(audit["fields"]["caller"], "anonymous", "{audit}");
    assert_eq!(audit["span"]["name"], "grpc", "{audit}");
    assert!(audit["span"].get("caller").is_none(), "the caller twice: {audit}");
    assert!(audit["span"].get("trace_id").is_none(), "an untraced call names no trace: {audit}");
    assert!(audit.get("spans").is_none(), "the span's fields a second time: {audit}");
    assert_eq!(audit["span"]["method"], "streamexport.v1.ExportService/ExportUser", "{audit}");
}

#[tokio::test]
async fn start_up_names_the_upstream_and_checks_the_credentials_once() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let base_url = emulator.base_url();
    let origin = base_url.trim_end_matches('/');

    let service = ServiceProcess::start(
        &[],
        &[("STREAM_BASE_URL", &base_url), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET)],
    );
    service.wait_ready(true).await;
    let log = service.log();
    let accepted = lines_with(&log, "Stream accepted the API key and secret");
    assert!(accepted.len() == 1 && accepted[0].contains(&format!("upstream={origin}")), "{log}");

    // A wrong secret is found at start: one clear line, no secret in it, and no service.
    let wrong_secret = "wrong-secret-0123456789abcdef0123456789";
    let mut misconfigured = ServiceProcess::start(
        &[],
        &[("STREAM_BASE_URL", &base_url), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", wrong_secret)],
    );
    let exit = misconfigured.wait_exit(Duration::from_secs(20)).await.expect("a rejected secret stops start-up");
    assert!(!exit.success(), "{exit:?}");
    let log = misconfigured.log();
    let rejected = lines_with(&log, "Stream rejected the API key or secret");
    assert!(!rejected.is_empty() && rejected[0].contains(&format!("upstream={origin}")), "{log}");
    assert!(!log.contains(wrong_secret) && !log.contains(API_SECRET), "a secret reached the log:\n{log}");
    assert!(!log.contains("serving gRPC"), "it served with rejected credentials:\n{log}");
}

#[tokio::test]
async fn an_unreachable_upstream_at_start_is_logged_and_the_service_serves() {
    let closed = format!("http://127.0.0.1:{}", common::process::free_port());
    let service = ServiceProcess::start(
        &["--upstream-timeout", "2s"],
        &[("STREAM_BASE_URL", &closed), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET)],
    );
    service.wait_ready(true).await;
    let log = service.log();
    let untested = lines_with(&log, "cannot check the Stream credentials now; starting anyway");
    assert!(untested.len() == 1 && untested[0].contains(&format!("upstream={closed}")), "{log}");
}
