//! Upstream failures, injected in the emulator, reach the caller as the documented statuses
//! with `google.rpc` details.

use crate::common;

use std::time::Duration;

use common::{API_KEY, Options, TestApp, assert_status, spawn_app, spawn_app_with, violated_fields};
use serde_json::{Value, json};
use stream_export::{
    emulator::{EmulatorConfig, data::KNOWN_CHANNEL, data::KNOWN_USER},
    proto::{ChannelRef, ExportChannelsRequest, ExportUserRequest, ExportUsersRequest, GetTaskRequest},
};
use tonic::{Code, Status};

fn export_request(ids: &[&str]) -> ExportChannelsRequest {
    let kind = KNOWN_CHANNEL.split_once(':').unwrap().0;
    let channels = ids.iter().map(|id| ChannelRef { r#type: kind.into(), id: (*id).into(), ..Default::default() });
    ExportChannelsRequest { channels: channels.collect(), ..Default::default() }
}

/// Submits a channel export and returns its task id.
async fn submit(app: &mut TestApp) -> String {
    let id = KNOWN_CHANNEL.split_once(':').unwrap().1;
    app.client.export_channels(export_request(&[id])).await.unwrap().into_inner().task_id
}

async fn get_task(app: &mut TestApp, task_id: &str) -> Status {
    app.client.get_task(GetTaskRequest { task_id: task_id.into() }).await.expect_err("the fault must surface")
}

fn metadata(details: &tonic_types::ErrorDetails, key: &str) -> Option<String> {
    details.error_info().and_then(|info| info.metadata.get(key).cloned())
}

#[tokio::test]
async fn stream_error_statuses_map_to_grpc_codes() {
    let mut app = spawn_app().await;
    let task_id = submit(&mut app).await;
    let rows: [(Value, Code, &str); 7] = [
        (
            json!({"kind": "status", "status": 500, "code": -1, "message": "boom"}),
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
        ),
        (
            json!({"kind": "status", "status": 503, "code": -1, "message": "down"}),
            Code::Unavailable,
            "UPSTREAM_UNAVAILABLE",
        ),
        (json!({"kind": "status", "status": 404, "code": 16, "message": "gone"}), Code::NotFound, "TASK_NOT_FOUND"),
        (
            json!({"kind": "status", "status": 403, "code": 17, "message": "no"}),
            Code::PermissionDenied,
            "UPSTREAM_PERMISSION_DENIED",
        ),
        (
            json!({"kind": "status", "status": 401, "code": 5, "message": "bad token"}),
            Code::Internal,
            "UPSTREAM_CREDENTIALS_REJECTED",
        ),
        (
            json!({"kind": "status", "status": 400, "code": 4, "message": "bad input"}),
            Code::InvalidArgument,
            "UPSTREAM_INVALID_ARGUMENT",
        ),
        (
            json!({"kind": "status", "status": 418, "code": 0, "message": "teapot"}),
            Code::Internal,
            "UPSTREAM_UNEXPECTED_STATUS",
        ),
    ];
    for (fault, code, reason) in rows {
        // Enough faults for every attempt: retries are the fault matrix's subject.
        app.emulator.clear_faults().await;
        app.emulator.inject("get_task", 3, fault.clone()).await;
        let status = get_task(&mut app, &task_id).await;
        let details = assert_status(&status, code, reason);
        assert_eq!(metadata(&details, "upstream_http_status"), fault["status"].as_u64().map(|s| s.to_string()));
        assert_eq!(metadata(&details, "stream_code"), fault["code"].as_i64().map(|c| c.to_string()));
        assert_eq!(metadata(&details, "operation").as_deref(), Some("GetTask"));
        if code == Code::Unavailable {
            assert!(details.retry_info().is_some(), "UNAVAILABLE says when to retry");
        }
    }
    // Without faults the task reads fine again.
    app.emulator.clear_faults().await;
    assert!(app.client.get_task(GetTaskRequest { task_id }).await.is_ok());
    app.stop().await;
}

#[tokio::test]
async fn rate_limits_give_resource_exhausted_with_retry_info() {
    let mut app = spawn_app().await;
    let task_id = submit(&mut app).await;

    app.emulator
        .inject("get_task", 1, json!({"kind": "status", "status": 429, "code": 9, "message": "Too many requests"}))
        .await;
    let details = assert_status(&get_task(&mut app, &task_id).await, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED");
    let delay = details.retry_info().and_then(|r| r.retry_delay).expect("RetryInfo with a delay");
    assert!(delay <= Duration::from_secs(61), "delay {delay:?} is at most a window");
    assert!(details.quota_failure().is_some_and(|q| !q.violations.is_empty()));

    // An edge 429 with a plain-text body is handled the same way.
    app.emulator.inject("get_task", 1, json!({"kind": "non_json", "status": 429, "body": "Too Many Requests"})).await;
    let details = assert_status(&get_task(&mut app, &task_id).await, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED");
    assert!(details.retry_info().is_some());
    assert_eq!(metadata(&details, "stream_code"), None);

    // The real limiter of the emulator, not just an injected answer.
    app.emulator.control(reqwest::Method::PUT, "rate_limits", Some(json!({"export_user": 2}))).await;
    for _ in 0..2 {
        app.client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap();
    }
    let status = app.client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap_err();
    let details = assert_status(&status, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED");
    assert_eq!(metadata(&details, "stream_code").as_deref(), Some("9"));
    app.stop().await;
}

#[tokio::test]
async fn broken_responses_are_clear_errors() {
    let mut app = spawn_app_with(Options { upstream_timeout: Duration::from_millis(700), ..Options::default() }).await;
    let task_id = submit(&mut app).await;
    let rows = [
        (json!({"kind": "malformed_json"}), Code::Internal, "UPSTREAM_BAD_RESPONSE"),
        (json!({"kind": "truncated"}), Code::Unavailable, "UPSTREAM_CONNECTION_FAILED"),
        (json!({"kind": "drop"}), Code::Unavailable, "UPSTREAM_CONNECTION_FAILED"),
        (json!({"kind": "delay", "ms": 3000}), Code::Unavailable, "UPSTREAM_TIMEOUT"),
    ];
    for (fault, code, reason) in rows {
        app.emulator.clear_faults().await;
        app.emulator.inject("get_task", 3, fault.clone()).await;
        let status = get_task(&mut app, &task_id).await;
        assert_status(&status, code, reason);
        assert!(!status.message().contains(API_KEY), "the URL (with the API key) stays out of messages");
    }
    app.stop().await;
}

#[tokio::test]
async fn submit_errors_map_the_same_way() {
    let mut app = spawn_app().await;
    let id = KNOWN_CHANNEL.split_once(':').unwrap().1;
    app.emulator
        .inject("export_channels", 1, json!({"kind": "status", "status": 503, "code": -1, "message": "x"}))
        .await;
    let status = app.client.export_channels(export_request(&[id])).await.unwrap_err();
    assert_eq!(
        metadata(&assert_status(&status, Code::Unavailable, "UPSTREAM_UNAVAILABLE"), "operation").as_deref(),
        Some("ExportChannels")
    );

    app.emulator.inject("export_users", 1, json!({"kind": "status", "status": 429, "code": 9, "message": "x"})).await;
    let request = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    let status = app.client.export_users(request).await.unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED");

    app.emulator.inject("export_user", 3, json!({"kind": "drop"})).await;
    let status = app.client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "UPSTREAM_CONNECTION_FAILED");
    assert_eq!(app.emulator.exports_created().await, 0, "no export was created by the failed submits");
    app.stop().await;
}

#[tokio::test]
async fn upstream_validation_errors_become_bad_request_details() {
    let mut emulator = EmulatorConfig::new(common::API_KEY, common::API_SECRET);
    emulator.channel_limit = 1;
    let mut app = spawn_app_with(Options { emulator, ..Options::default() }).await;
    let status = app.client.export_channels(export_request(&["a", "b"])).await.unwrap_err();
    let details = assert_status(&status, Code::InvalidArgument, "UPSTREAM_INVALID_ARGUMENT");
    assert_eq!(violated_fields(&details), ["channels"]);
    assert_eq!(metadata(&details, "stream_code").as_deref(), Some("4"));
    app.stop().await;
}

#[tokio::test]
async fn rejected_credentials_are_the_deployments_fault_not_the_callers() {
    for options in [
        Options { service_secret: "another-secret-0123456789abcdef0123456789".into(), ..Options::default() },
        Options { service_key: "wrong-key".into(), ..Options::default() },
    ] {
        let mut app = spawn_app_with(options).await;
        let status =
            app.client.get_task(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap_err();
        let details = assert_status(&status, Code::Internal, "UPSTREAM_CREDENTIALS_REJECTED");
        assert_eq!(metadata(&details, "upstream_http_status").as_deref(), Some("401"));
        app.stop().await;
    }
}
