//! OpenTelemetry: the real binary exporting its spans over OTLP/gRPC to a real receiver (the
//! published `TraceService`), configured by the standard `OTEL_*` variables only.

use crate::common;

use std::time::{Duration, Instant};

use common::{
    TestEmulator,
    otlp::{self, OtlpReceiver, ReceivedSpan},
    process::ServiceProcess,
    redis::RedisServer,
};
use serde_json::json;
use stream_export::{
    emulator::{EmulatorConfig, data::KNOWN_USER},
    proto::{
        ExportUserRequest, ExportUsersRequest, GetTaskRequest, ReadExportRequest, WatchTaskRequest,
        export_service_client::ExportServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::{Code, Request};

/// Credentials of these tests: distinctive, so that finding them in exported bytes means a leak.
const API_KEY: &str = "otel-key-5d1c0b9e";
const API_SECRET: &str = "otel-secret-7f3e9a1c5b2d4e6f8a0b1c2d3e4f5a6b7c8d";
const CALLER_TOKEN: &str = "caller-token-2b8e6f0d4a9c1e3b5d7f";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

async fn emulator() -> TestEmulator {
    TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await
}

/// The service against `emulator`, exporting to `endpoint`, with `extra` variables; callers
/// authenticate with [`CALLER_TOKEN`] as `billing`.
async fn service(emulator: &TestEmulator, endpoint: &str, extra: &[(&str, &str)]) -> ServiceProcess {
    service_with_args(emulator, endpoint, extra, &[]).await
}

/// [`service`] with more command-line arguments.
async fn service_with_args(
    emulator: &TestEmulator,
    endpoint: &str,
    extra: &[(&str, &str)],
    args: &[&str],
) -> ServiceProcess {
    let tokens = std::env::temp_dir().join(format!("stream-export-otel-tokens-{}", uuid::Uuid::new_v4()));
    std::fs::write(&tokens, format!("billing {CALLER_TOKEN}\n")).unwrap();
    let base_url = emulator.base_url();
    let mut env = vec![
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("RUST_LOG", "info"),
    ];
    env.extend_from_slice(extra);
    let mut args = args.to_vec();
    args.extend(["--auth-tokens-file", tokens.to_str().unwrap()]);
    let service = ServiceProcess::start(&args, &env);
    service.wait_ready(true).await;
    service
}

async fn client(service: &ServiceProcess) -> ExportServiceClient<tonic::transport::Channel> {
    ExportServiceClient::new(service.channel().await)
}

/// `message` with the caller's token and, if given, a `traceparent` of [`TRACE_ID`].
fn request<T>(message: T, traced: bool) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {CALLER_TOKEN}").parse().unwrap());
    if traced {
        request.metadata_mut().insert("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01").parse().unwrap());
        request.metadata_mut().insert("tracestate", "vendor=opaque".parse().unwrap());
    }
    request
}

fn server_span<'a>(spans: &'a [ReceivedSpan], method: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|span| span.kind == otlp::SPAN_KIND_SERVER && span.attr("rpc.method") == Some(method))
}

fn children<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|span| span.parent_span_id == parent.span_id && span.trace_id == parent.trace_id).collect()
}

#[tokio::test]
async fn a_call_continues_the_callers_trace_and_its_upstream_request_is_a_child_span() {
    let mut receiver = OtlpReceiver::start().await;
    let emulator = emulator().await;
    let service = service(&emulator, &receiver.endpoint(), &[]).await;
    let mut client = client(&service).await;

    let submitted = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    let task_id = client.export_users(request(submitted, true)).await.unwrap().into_inner().task_id;

    let spans = receiver
        .wait_for(|spans| server_span(spans, "ExportUsers").is_some_and(|server| !children(spans, server).is_empty()))
        .await;
    let server = server_span(&spans, "ExportUsers").unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    assert_eq!(server.name, "streamexport.v1.ExportService/ExportUsers");
    assert_eq!((server.trace_id.as_str(), server.parent_span_id.as_str()), (TRACE_ID, PARENT_ID), "{server:#?}");
    assert_eq!(server.trace_state, "vendor=opaque");
    assert_eq!(server.attr("rpc.system"), Some("grpc"));
    assert_eq!(server.attr("rpc.service"), Some("streamexport.v1.ExportService"));
    assert_eq!(server.attr("rpc.grpc.status_code"), Some("0"));
    assert_eq!(server.attr("caller"), Some("billing"));
    assert_eq!(server.attr("task_id"), Some(task_id.as_str()));
    assert_eq!(server.resource.get("service.name").map(String::as_str), Some("stream-export"));

    let upstream = children(&spans, server);
    let [client_span] = upstream.as_slice() else { panic!("one upstream request expected: {upstream:#?}") };
    assert_eq!(client_span.kind, otlp::SPAN_KIND_CLIENT);
    assert_eq!(client_span.name, "POST");
    assert_eq!(client_span.attr("http.request.method"), Some("POST"));
    assert_eq!(client_span.attr("url.path"), Some("/export/users"));
    assert_eq!(client_span.attr("server.address"), Some("127.0.0.1"));
    assert_eq!(client_span.attr("server.port"), Some(emulator.addr().port().to_string().as_str()));
    assert_eq!(client_span.attr("http.response.status_code"), Some("201"));
    assert_eq!(client_span.attr("http.request.resend_count"), None, "a first attempt");

    // Stream received this client span's id as the parent, in the caller's trace.
    let sent = emulator.traceparents("export_users").await;
    assert_eq!(sent, [Some(format!("00-{TRACE_ID}-{}-01", client_span.span_id))]);
    receiver.stop().await;
}

#[tokio::test]
async fn the_http_protobuf_protocol_is_used_when_the_variable_asks_for_it() {
    let receiver = OtlpReceiver::start_http().await;
    let emulator = emulator().await;
    let protocol = [("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"), ("OTEL_SERVICE_NAME", "exports-http")];
    let service = service(&emulator, &receiver.endpoint(), &protocol).await;
    let mut client = client(&service).await;
    client.export_user(request(ExportUserRequest { user_id: KNOWN_USER.into() }, true)).await.unwrap();
    let spans = receiver.wait_for(|spans| server_span(spans, "ExportUser").is_some()).await;
    let server = server_span(&spans, "ExportUser").unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    assert_eq!(server.trace_id, TRACE_ID);
    assert_eq!(server.resource.get("service.name").map(String::as_str), Some("exports-http"));
}

#[tokio::test]
async fn failed_and_retried_upstream_requests_are_error_spans_with_streams_code() {
    let receiver = OtlpReceiver::start().await;
    let emulator = emulator().await;
    let service = service(&emulator, &receiver.endpoint(), &[]).await;
    let mut client = client(&service).await;

    // A GET is retried after a 503: two client spans under one server span.
    let task_id = uuid::Uuid::new_v4().to_string();
    emulator.inject("get_task", 1, json!({"kind": "status", "status": 503, "code": 99, "message": "busy"})).await;
    let status = client.get_task(request(GetTaskRequest { task_id }, false)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let spans = receiver
        .wait_for(|spans| server_span(spans, "GetTask").is_some_and(|server| children(spans, server).len() >= 2))
        .await;
    let server = server_span(&spans, "GetTask").unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    assert_eq!(server.parent_span_id, "", "a call without traceparent starts a trace");
    assert_eq!(server.attr("rpc.grpc.status_code"), Some(&*(Code::NotFound as i32).to_string()));
    assert_ne!(server.status_code, otlp::STATUS_ERROR, "NOT_FOUND is the caller's problem");
    let mut attempts = children(&spans, server);
    attempts.sort_by_key(|span| span.attr("http.request.resend_count").map(str::to_owned));
    let [first, second] = attempts.as_slice() else { panic!("two attempts expected: {attempts:#?}") };
    assert_eq!(first.attr("http.response.status_code"), Some("503"));
    assert_eq!(first.attr("stream.error_code"), Some("99"));
    assert_eq!(first.status_code, otlp::STATUS_ERROR);
    assert_eq!(first.attr("http.request.resend_count"), None);
    assert_eq!(second.attr("http.request.resend_count"), Some("1"));
    assert_eq!(second.attr("http.response.status_code"), Some("404"));
    assert!(second.attr("url.path").is_some_and(|path| path.starts_with("/tasks/")), "{second:#?}");
}

#[tokio::test]
async fn each_poll_is_a_trace_of_its_own_linked_to_the_watchers_calls() {
    let receiver = OtlpReceiver::start().await;
    let emulator = emulator().await;
    let poll_fast = [("STREAM_EXPORT_WATCH_POLL_MIN", "50ms"), ("STREAM_EXPORT_WATCH_POLL_MAX", "200ms")];
    let service = service(&emulator, &receiver.endpoint(), &poll_fast).await;
    let mut client = client(&service).await;
    let submitted = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    let task_id = client.export_users(request(submitted, false)).await.unwrap().into_inner().task_id;
    emulator.steer(&task_id, json!({"hold": true})).await;

    // Two watchers, the first one in the caller's trace; then the task completes.
    let watch = || WatchTaskRequest { task_id: task_id.clone() };
    let mut first = client.watch_task(request(watch(), true)).await.unwrap().into_inner();
    first.next().await.unwrap().unwrap();
    let mut second = client.watch_task(request(watch(), false)).await.unwrap().into_inner();
    second.next().await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    emulator.steer(&task_id, json!({"status": "completed"})).await;
    for stream in [&mut first, &mut second] {
        while let Some(event) = stream.next().await {
            event.unwrap();
        }
    }

    let watchers = |spans: &[ReceivedSpan]| -> Vec<ReceivedSpan> {
        spans.iter().filter(|span| span.attr("rpc.method") == Some("WatchTask")).cloned().collect()
    };
    let spans = receiver.wait_for(|spans| watchers(spans).len() == 2).await;
    let watchers = watchers(&spans);
    let [traced, other] = watchers.as_slice() else { panic!("two watch spans expected: {spans:#?}") };
    let (traced, other) = if traced.trace_id == TRACE_ID { (traced, other) } else { (other, traced) };
    assert_eq!(traced.trace_id, TRACE_ID);
    for watcher in [traced, other] {
        assert_eq!(watcher.attr("stream_export.watch.end"), Some("terminal"), "{watcher:#?}");
        assert_eq!(watcher.attr("rpc.grpc.status_code"), Some("0"));
        let sent: u64 = watcher.attr("stream_export.watch.events_sent").unwrap().parse().unwrap();
        assert!(sent >= 2, "a snapshot and the change: {watcher:#?}");
        // The polls are not children of a watcher's call.
        assert!(children(&spans, watcher).is_empty(), "{:#?}", children(&spans, watcher));
    }

    let polls: Vec<_> = spans.iter().filter(|span| span.name == "task_watch.poll").collect();
    assert!(!polls.is_empty(), "{spans:#?}");
    for poll in &polls {
        assert_eq!(poll.parent_span_id, "", "a poll is a root");
        assert_ne!(poll.trace_id, TRACE_ID);
        assert_eq!(poll.attr("task_id"), Some(task_id.as_str()));
        let reads = children(&spans, poll);
        assert!(reads.len() == 1 && reads[0].attr("url.path") == Some(&*format!("/tasks/{task_id}")), "{reads:#?}");
    }
    let linked_to = |watcher: &ReceivedSpan| (watcher.trace_id.clone(), watcher.span_id.clone());
    assert!(
        polls.iter().any(|poll| poll.links.contains(&linked_to(traced)) && poll.links.contains(&linked_to(other))),
        "no poll linked to both watchers: {polls:#?}"
    );
}

#[tokio::test]
async fn no_secret_reaches_the_collector() {
    let receiver = OtlpReceiver::start().await;
    let emulator = emulator().await;
    let service = service(&emulator, &receiver.endpoint(), &[]).await;
    let mut client = client(&service).await;

    client.export_user(request(ExportUserRequest { user_id: KNOWN_USER.into() }, true)).await.unwrap();
    let submitted = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    let task_id = client.export_users(request(submitted, false)).await.unwrap().into_inner().task_id;
    emulator.steer(&task_id, json!({"status": "completed"})).await;
    let task = client.get_task(request(GetTaskRequest { task_id: task_id.clone() }, false)).await.unwrap();
    let signed_url = task.into_inner().result.expect("a completed task").url;
    let signature = signed_url.split_once('?').map(|(_, query)| query.to_owned()).expect("a signed URL");
    let mut records = client
        .read_export(request(ReadExportRequest { task_id, start_index: 0, ..Default::default() }, false))
        .await
        .unwrap()
        .into_inner();
    let mut read = 0;
    while let Some(record) = records.next().await {
        record.unwrap();
        read += 1;
    }
    assert!(read > 0);

    let spans = receiver.wait_for(|spans| server_span(spans, "ReadExport").is_some()).await;
    let exported = receiver.raw_bytes();
    let text = String::from_utf8_lossy(&exported);
    let jwt = common::server_token(API_SECRET);
    for secret in [API_SECRET, API_KEY, CALLER_TOKEN, jwt.as_str(), signature.as_str(), "Signature=", "api_key"] {
        assert!(!text.contains(secret), "{secret:?} was exported");
    }
    // The download is a client span too, named by path only.
    let reader = server_span(&spans, "ReadExport").unwrap_or_else(|| panic!("no ReadExport span in {spans:#?}"));
    let downloads: Vec<_> = children(&spans, reader)
        .into_iter()
        .filter(|span| span.attr("url.path").is_some_and(|p| p.starts_with("/exports/")))
        .collect();
    assert_eq!(downloads.len(), 1, "{spans:#?}");
    assert_eq!(downloads[0].attr("http.response.status_code"), Some("200"));

    // And the check can fail: what is exported is searched as sent.
    assert!(text.contains(KNOWN_USER) || text.contains("ExportUser"));
}

#[tokio::test]
async fn always_off_exports_nothing_and_sampling_follows_the_variables() {
    let receiver = OtlpReceiver::start().await;
    let emulator = emulator().await;
    let mut service = service(&emulator, &receiver.endpoint(), &[("OTEL_TRACES_SAMPLER", "always_off")]).await;
    let mut client = client(&service).await;
    for traced in [true, false] {
        client.export_user(request(ExportUserRequest { user_id: KNOWN_USER.into() }, traced)).await.unwrap();
    }
    // The span context still travels: upstream sees a child of the caller's trace, not sampled.
    let sent = emulator.traceparents("export_user").await;
    assert!(
        sent[0].as_deref().is_some_and(|tp| tp.starts_with(&format!("00-{TRACE_ID}-")) && tp.ends_with("-00")),
        "{sent:?}"
    );
    // Shutting down flushes whatever is queued: nothing.
    service.terminate();
    assert!(service.wait_exit(Duration::from_secs(30)).await.is_some_and(|status| status.success()));
    assert!(
        receiver
            .requests()
            .iter()
            .all(|request| request.resource_spans.iter().all(|r| r.scope_spans.iter().all(|s| s.spans.is_empty())))
    );
    assert_eq!(receiver.spans().len(), 0);
}

#[tokio::test]
async fn spans_queued_at_shutdown_are_flushed() {
    let receiver = OtlpReceiver::start().await;
    let emulator = emulator().await;
    // Without the shutdown flush, nothing would leave in the next minute.
    let mut service = service(&emulator, &receiver.endpoint(), &[("OTEL_BSP_SCHEDULE_DELAY", "60000")]).await;
    let mut client = client(&service).await;
    client.export_user(request(ExportUserRequest { user_id: KNOWN_USER.into() }, true)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.spans().is_empty(), "exported before the schedule delay");
    service.terminate();
    assert!(service.wait_exit(Duration::from_secs(30)).await.is_some_and(|status| status.success()));
    let spans = receiver.spans();
    assert!(server_span(&spans, "ExportUser").is_some_and(|span| span.trace_id == TRACE_ID), "{spans:#?}");
}

#[tokio::test]
async fn calls_succeed_and_stay_fast_when_the_collector_is_down_or_silent() {
    let emulator = emulator().await;
    // A stopped receiver (connection refused) and one that accepts and never answers.
    let mut stopped = OtlpReceiver::start().await;
    let refused = stopped.endpoint();
    stopped.stop().await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_endpoint = format!("http://{}", silent.local_addr().unwrap());
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    for endpoint in [refused, silent_endpoint] {
        let mut service = service(&emulator, &endpoint, &[("OTEL_BSP_MAX_QUEUE_SIZE", "8")]).await;
        let mut client = client(&service).await;
        for _ in 0..30 {
            let started = Instant::now();
            client.export_user(request(ExportUserRequest { user_id: KNOWN_USER.into() }, true)).await.unwrap();
            assert!(started.elapsed() < Duration::from_secs(1), "a call took {:?} ({endpoint})", started.elapsed());
        }
        // Shutdown gives up on the collector within the flush limit.
        let stopping = Instant::now();
        service.terminate();
        assert!(service.wait_exit(Duration::from_secs(15)).await.is_some(), "did not exit ({endpoint})");
        assert!(stopping.elapsed() < Duration::from_secs(10), "exit took {:?}", stopping.elapsed());
    }
}

/// A collector that accepts connections and never answers: exports hang until they time out.
async fn silent_collector() -> String {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    endpoint
}

#[tokio::test]
async fn spans_the_queue_cannot_hold_are_dropped_and_counted() {
    let emulator = emulator().await;
    let endpoint = silent_collector().await;
    let metrics_addr = format!("127.0.0.1:{}", common::process::free_port());
    let small_queue = [("OTEL_BSP_MAX_QUEUE_SIZE", "4")];
    let service = service_with_args(&emulator, &endpoint, &small_queue, &["--metrics-listen", &metrics_addr]).await;
    let mut client = client(&service).await;
    // 20 calls, 2 spans each; the first 4 spans (health checks' or these) hang on the collector
    // for its 10 s timeout, and every later one is dropped.
    for _ in 0..20 {
        client.export_user(request(ExportUserRequest { user_id: KNOWN_USER.into() }, false)).await.unwrap();
    }
    let text = reqwest::get(format!("http://{metrics_addr}/metrics")).await.unwrap().text().await.unwrap();
    let dropped: f64 = text
        .lines()
        .find_map(|line| line.strip_prefix(r#"stream_export_spans_dropped_total{reason="queue_full"} "#))
        .unwrap_or_else(|| panic!("no dropped-span count in:\n{text}"))
        .parse()
        .unwrap();
    assert!(dropped >= 36.0, "{dropped} spans counted as dropped");
}

#[tokio::test]
async fn in_fleet_mode_redis_calls_are_client_spans_without_their_arguments() {
    const PASSWORD: &str = "otel-redis-password-9c1e3b5d";
    let mut receiver = OtlpReceiver::start().await;
    let emulator = emulator().await;
    let redis = RedisServer::start(Some(PASSWORD)).await;
    let url = redis.url();
    let service = service(&emulator, &receiver.endpoint(), &[("STREAM_EXPORT_REDIS_URL", url.as_str())]).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let submitted = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], request_id: request_id.clone() };
    let task_id = client(&service).await.export_users(request(submitted, true)).await.unwrap().into_inner().task_id;

    let is_redis = |span: &&ReceivedSpan| span.attr("db.system") == Some("redis");
    let spans = receiver
        .wait_for(|spans| {
            server_span(spans, "ExportUsers").is_some_and(|server| children(spans, server).iter().any(is_redis))
                && spans.iter().any(|span| span.name == "EVALSHA submit.finish")
        })
        .await;
    let server = server_span(&spans, "ExportUsers").unwrap_or_else(|| panic!("no server span in {spans:#?}"));
    let claim = children(&spans, server).into_iter().find(is_redis).expect("a Redis span under the call");
    assert_eq!(claim.kind, otlp::SPAN_KIND_CLIENT);
    assert_eq!(claim.name, "EVALSHA submit.claim");
    assert_eq!(claim.attr("db.operation.name"), Some("EVALSHA"));
    for span in spans.iter().filter(is_redis) {
        for value in span.attributes.values() {
            for secret in [PASSWORD, request_id.as_str(), task_id.as_str(), url.as_str()] {
                assert!(!value.contains(secret), "{secret} in a Redis span: {span:#?}");
            }
        }
    }
    receiver.stop().await;
}
