//! A misbehaving or compromised upstream (API or file server), served by a fake on loopback:
//! redirects are not followed where they could leak credentials or reach the service's own
//! network, no `Referer` is ever sent, bodies are read only up to their caps, and an upstream
//! error too large for a client's metadata limit arrives trimmed.

use crate::common;

use std::collections::BTreeMap;

use axum::{
    Json, Router,
    body::Body,
    http::{StatusCode, header},
    response::{IntoResponse, Redirect},
    routing::{get, post},
};
use common::{
    Options, TestApp, assert_status,
    fake_upstream::{FakeUpstream, completed_task},
    spawn_app_with,
};
use futures::StreamExt;
use serde_json::json;
use stream_export::proto::{ChannelRef, ExportChannelsRequest, ExportUserRequest, GetTaskRequest, ReadExportRequest};
use tonic::Code;

const TASK: &str = "0b9ac1f4-7f1d-4a3e-9a53-0b41f9bd6a57";
const SIGNATURE: &str = "Signature=s3cr3t-signature";

/// The service in front of `fake`.
async fn service_over(fake: &FakeUpstream) -> TestApp {
    spawn_app_with(Options { base_url_override: Some(fake.url()), ..Options::default() }).await
}

/// An export file of two records, JSON lines.
fn two_records() -> &'static str {
    "{\"type\":\"user\",\"item\":{\"id\":\"a\"}}\n{\"type\":\"user\",\"item\":{\"id\":\"b\"}}\n"
}

/// Reads a whole ReadExport stream: the records' count, or the status it ended with.
async fn read_export(app: &TestApp) -> Result<usize, tonic::Status> {
    let mut client = app.client.clone();
    let request = ReadExportRequest { task_id: TASK.into(), start_index: 0, ..Default::default() };
    let mut stream = client.read_export(request).await?.into_inner();
    let mut count = 0;
    while let Some(record) = stream.next().await {
        record?;
        count += 1;
    }
    Ok(count)
}

#[tokio::test]
async fn an_api_redirect_is_not_followed() {
    let elsewhere = FakeUpstream::spawn(|_| Router::new().fallback(|| async { "caught" })).await;
    let target = format!("{}/tasks/{TASK}", elsewhere.url());
    let fake = FakeUpstream::spawn(move |_| {
        Router::new().route("/tasks/{id}", get(move || async move { Redirect::temporary(&target) }))
    })
    .await;
    let app = service_over(&fake).await;
    let mut client = app.client.clone();
    let status = client.get_task(GetTaskRequest { task_id: TASK.into() }).await.expect_err("a redirect fails");
    assert_status(&status, Code::Internal, "UPSTREAM_REDIRECTED");
    assert!(elsewhere.requests().is_empty(), "the redirect was followed: {:?}", elsewhere.requests());
    assert!(!status.message().contains("api_key"), "{status:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_download_never_sends_a_referer_and_follows_redirects_within_its_origin() {
    let fake = FakeUpstream::spawn(|base| {
        let url = format!("{base}/files/first?{SIGNATURE}");
        Router::new()
            .route("/tasks/{id}", get(move || async move { Json(completed_task(TASK, &url)) }))
            .route("/files/first", get(|| async { Redirect::temporary(&format!("/files/second?{SIGNATURE}")) }))
            .route("/files/second", get(|| async { two_records() }))
    })
    .await;
    let app = service_over(&fake).await;
    assert_eq!(read_export(&app).await.expect("the export is read"), 2);
    let downloads: Vec<_> = fake.requests().into_iter().filter(|seen| seen.uri.starts_with("/files/")).collect();
    assert_eq!(downloads.len(), 2, "{downloads:?}");
    for seen in downloads {
        assert!(seen.headers.get(header::REFERER).is_none(), "a Referer was sent: {seen:?}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_download_redirect_to_another_origin_is_refused() {
    let elsewhere = FakeUpstream::spawn(|_| Router::new().fallback(|| async { two_records() })).await;
    // Another port of the same host is another origin.
    let target = format!("{}/steal", elsewhere.url());
    let fake = FakeUpstream::spawn(move |base| {
        let url = format!("{base}/files/first?{SIGNATURE}");
        Router::new()
            .route("/tasks/{id}", get(move || async move { Json(completed_task(TASK, &url)) }))
            .route("/files/first", get(move || async move { Redirect::temporary(&target) }))
    })
    .await;
    let app = service_over(&fake).await;
    let status = read_export(&app).await.expect_err("the redirect is refused");
    assert_status(&status, Code::FailedPrecondition, "DOWNLOAD_REFUSED");
    assert!(elsewhere.requests().is_empty(), "the redirect was followed: {:?}", elsewhere.requests());
    assert!(!status.message().contains("s3cr3t"), "the signed URL leaked: {status:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_result_url_in_a_network_the_upstream_is_not_in_is_refused() {
    // The upstream is on loopback: its own files may be too, but not the cloud metadata
    // endpoint, a private network or the unspecified address.
    for url in [
        "http://169.254.169.254/latest/meta-data/?Signature=x",
        "http://10.255.255.1:9/file?Signature=x",
        "http://[fd00::1]/file?Signature=x",
        "http://0.0.0.0:9/file?Signature=x",
        "file:///etc/passwd",
    ] {
        let fake = FakeUpstream::spawn(move |_| {
            Router::new().route("/tasks/{id}", get(move || async move { Json(completed_task(TASK, url)) }))
        })
        .await;
        let app = service_over(&fake).await;
        let status = read_export(&app).await.expect_err("the download is refused");
        assert_status(&status, Code::FailedPrecondition, "DOWNLOAD_REFUSED");
        assert!(!status.message().contains("Signature"), "{status:?}");
        app.stop().await;
    }
}

/// A body of `bytes` bytes of valid JSON, sent in chunks with no Content-Length.
fn endless_json(bytes: usize) -> Body {
    let chunk = "x".repeat(64 * 1024);
    let chunks = bytes / chunk.len();
    let head = futures::stream::once(async {
        Ok::<_, std::io::Error>("{\"task_id\":\"t\",\"status\":\"waiting\",\"pad\":\"".to_owned())
    });
    let middle = futures::stream::iter((0..chunks).map(move |_| Ok(chunk.clone())));
    let tail = futures::stream::once(async { Ok("\"}".to_owned()) });
    Body::from_stream(head.chain(middle).chain(tail))
}

#[tokio::test]
async fn an_oversized_body_ends_in_a_clear_status() {
    let fake = FakeUpstream::spawn(|_| {
        Router::new()
            .route("/tasks/{id}", get(|| async { endless_json(64 << 20) }))
            .route("/users/{id}/export", get(|| async { endless_json(48 << 20) }))
            // Declared up front: refused before reading.
            .route(
                "/export_channels",
                post(|| async {
                    let body = format!("{{\"task_id\":\"{}\"}}", " ".repeat(4 << 20));
                    (StatusCode::CREATED, body)
                }),
            )
    })
    .await;
    let app = service_over(&fake).await;
    let mut client = app.client.clone();

    let status = client.get_task(GetTaskRequest { task_id: TASK.into() }).await.expect_err("over the cap");
    let details = assert_status(&status, Code::Internal, "UPSTREAM_RESPONSE_TOO_LARGE");
    assert_eq!(details.error_info().unwrap().metadata["limit_bytes"], (1 << 20).to_string());

    let status = client.export_user(ExportUserRequest { user_id: "u".into() }).await.expect_err("over the cap");
    assert_status(&status, Code::FailedPrecondition, "USER_EXPORT_TOO_LARGE");

    let channel = ChannelRef { r#type: "messaging".into(), id: "general".into(), ..Default::default() };
    let request = ExportChannelsRequest { channels: vec![channel], ..Default::default() };
    let status = client.export_channels(request).await.expect_err("over the cap");
    assert_status(&status, Code::Internal, "UPSTREAM_RESPONSE_TOO_LARGE");
    app.stop().await;
}

#[tokio::test]
async fn a_huge_upstream_400_arrives_as_invalid_argument_with_trimmed_details() {
    let fake = FakeUpstream::spawn(|_| {
        Router::new().route(
            "/export_channels",
            post(|| async {
                let fields: BTreeMap<String, String> =
                    (0..5_000).map(|n| (format!("channels[{n}].id"), format!("channel {n} is not valid"))).collect();
                let body = json!({
                    "code": 4,
                    "message": format!("ExportChannels failed with error: \"{}\"", "m".repeat(1 << 20)),
                    "exception_fields": fields,
                    "StatusCode": 400,
                });
                (StatusCode::BAD_REQUEST, Json(body)).into_response()
            }),
        )
    })
    .await;
    let app = service_over(&fake).await;
    let mut client = app.client.clone();
    let channel = ChannelRef { r#type: "messaging".into(), id: "general".into(), ..Default::default() };
    let request = ExportChannelsRequest { channels: vec![channel], ..Default::default() };
    let status = client.export_channels(request).await.expect_err("upstream refuses");
    let details = assert_status(&status, Code::InvalidArgument, "UPSTREAM_INVALID_ARGUMENT");
    let dropped: usize = details.error_info().unwrap().metadata["violations_dropped"].parse().unwrap();
    let kept = details.bad_request().unwrap().field_violations.len();
    assert!(kept > 1 && dropped > 4_000, "kept {kept}, dropped {dropped}");
    assert_eq!(kept - 1 + dropped, 5_000);
    assert!(status.message().len() <= 512 && status.details().len() <= 4096, "{}", status.details().len());
    app.stop().await;
}
