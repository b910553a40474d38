//! Inbound protection: load shedding at the concurrency limit, request size limits, and the
//! server-side timeout of unary calls.

use crate::common;

use std::time::{Duration, Instant};

use common::{Options, assert_status, spawn_app_with};
use serde_json::json;
use stream_export::{
    emulator::data::KNOWN_USER,
    proto::{ExportUserRequest, ExportUsersRequest, GetTaskRequest},
};
use tonic::Code;

#[tokio::test]
async fn calls_past_the_concurrency_limit_are_shed_at_once() {
    let app = spawn_app_with(Options {
        tweak: Some(Box::new(|settings| settings.limits.max_in_flight = 2)),
        ..Options::default()
    })
    .await;
    app.emulator.inject("export_user", 2, json!({"kind": "delay", "ms": 1000})).await;
    let slow = (0..2)
        .map(|_| {
            let mut client = app.client.clone();
            tokio::spawn(async move { client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await })
        })
        .collect::<Vec<_>>();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let mut client = app.client.clone();
    let status = client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(500), "shed at once, not queued");
    let details = assert_status(&status, Code::ResourceExhausted, "OVERLOADED");
    assert!(details.retry_info().is_some());

    for call in slow {
        assert!(call.await.unwrap().is_ok(), "the admitted calls finish");
    }
    assert!(client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn oversized_requests_are_refused_before_anything_goes_upstream() {
    let app = spawn_app_with(Options {
        tweak: Some(Box::new(|settings| settings.transport.max_request_bytes = 1024)),
        ..Options::default()
    })
    .await;
    let mut client = app.client.clone();
    // A valid request (25 user ids of 60 characters), only too large: without the limit it
    // would go upstream and start an export.
    let user_ids: Vec<String> = (0..25).map(|i| format!("{i:02}-{}", "u".repeat(57))).collect();
    let status = client.export_users(ExportUsersRequest { user_ids, request_id: String::new() }).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_eq!(app.emulator.requests("export_users").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn unary_calls_end_at_the_server_timeout_without_a_caller_deadline() {
    let app = spawn_app_with(Options {
        tweak: Some(Box::new(|settings| settings.limits.unary_timeout = Duration::from_millis(400))),
        ..Options::default()
    })
    .await;
    app.emulator.inject("get_task", 10, json!({"kind": "delay", "ms": 3000})).await;
    let started = Instant::now();
    let mut client = app.client.clone();
    let status = client.get_task(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap_err();
    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    app.stop().await;
}
