//! Idempotent submits: a repeated `request_id` never starts a second export.

use crate::common;

use std::time::Duration;

use common::{TestApp, assert_status, spawn_app, violated_fields};
use futures::future::join_all;
use serde_json::json;
use stream_export::{
    emulator::data::{KNOWN_CHANNEL, KNOWN_USER},
    proto::{ChannelRef, ExportChannelsRequest, ExportFormatVersion, ExportUsersRequest},
};
use tonic::{Code, Status};

fn channels(request_id: &str, version: ExportFormatVersion) -> ExportChannelsRequest {
    let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
    ExportChannelsRequest {
        channels: vec![ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }],
        version: version as i32,
        request_id: request_id.into(),
        ..Default::default()
    }
}

async fn submit(app: &TestApp, request: ExportChannelsRequest) -> Result<String, Status> {
    let mut client = app.client.clone();
    client.export_channels(request).await.map(|r| r.into_inner().task_id)
}

#[tokio::test]
async fn a_repeat_returns_the_first_task_without_a_second_export() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    let first = submit(&app, channels(&id, ExportFormatVersion::V2)).await.unwrap();
    let again = submit(&app, channels(&id, ExportFormatVersion::V2)).await.unwrap();
    assert_eq!(first, again);
    assert_eq!((app.emulator.requests("export_channels").await, app.emulator.exports_created().await), (1, 1));

    // Without a request_id every submit is new.
    let a = submit(&app, channels("", ExportFormatVersion::V2)).await.unwrap();
    let b = submit(&app, channels("", ExportFormatVersion::V2)).await.unwrap();
    assert_ne!(a, b);
    app.stop().await;
}

#[tokio::test]
async fn the_same_id_with_another_request_is_rejected() {
    let app = spawn_app().await;
    let id = uuid::Uuid::new_v4().to_string();
    submit(&app, channels(&id, ExportFormatVersion::V1)).await.unwrap();
    let status = submit(&app, channels(&id, ExportFormatVersion::V2)).await.unwrap_err();
    let details = assert_status(&status, Code::InvalidArgument, "REQUEST_ID_REUSED");
    assert_eq!(violated_fields(&details), ["request_id"]);
    assert_eq!(app.emulator.exports_created().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn concurrent_repeats_make_one_upstream_call() {
    let app = spawn_app().await;
    // Slow upstream, so that every repeat arrives while the first is in flight.
    app.emulator.inject("export_users", 1, json!({"kind": "delay", "ms": 400})).await;
    let id = uuid::Uuid::new_v4().to_string();
    let request = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], request_id: id };
    let calls = (0..20).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        async move { client.export_users(request).await.map(|r| r.into_inner().task_id) }
    });
    let task_ids: Vec<String> = join_all(calls).await.into_iter().map(Result::unwrap).collect();
    assert!(task_ids.iter().all(|t| *t == task_ids[0]), "{task_ids:?}");
    assert_eq!((app.emulator.requests("export_users").await, app.emulator.exports_created().await), (1, 1));
    app.stop().await;
}

#[tokio::test]
async fn a_failed_submit_can_be_retried_with_the_same_id() {
    let app = spawn_app().await;
    // What a mesh sidecar does: the call fails with UNAVAILABLE, the sidecar replays it.
    app.emulator
        .inject("export_channels", 1, json!({"kind": "status", "status": 503, "code": -1, "message": "x"}))
        .await;
    let id = uuid::Uuid::new_v4().to_string();
    let status = submit(&app, channels(&id, ExportFormatVersion::V1)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    let task = submit(&app, channels(&id, ExportFormatVersion::V1)).await.unwrap();
    assert_eq!(submit(&app, channels(&id, ExportFormatVersion::V1)).await.unwrap(), task);
    assert_eq!(app.emulator.exports_created().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_uuids() {
    let app = spawn_app().await;
    let status = submit(&app, channels("retry-1", ExportFormatVersion::V1)).await.unwrap_err();
    let details = assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST");
    assert_eq!(violated_fields(&details), ["request_id"]);
    app.stop().await;
}

/// A submit with a deadline, as a client with a short timeout sends it.
fn with_deadline(request: ExportChannelsRequest, timeout: Duration) -> tonic::Request<ExportChannelsRequest> {
    let mut request = tonic::Request::new(request);
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn each_caller_keeps_its_own_deadline_while_the_shared_submit_runs() {
    let app = spawn_app().await;
    app.emulator.inject("export_channels", 1, json!({"kind": "delay", "ms": 1500})).await;
    let id = uuid::Uuid::new_v4().to_string();
    let (mut hasty, mut patient) = (app.client.clone(), app.client.clone());
    let hasty =
        hasty.export_channels(with_deadline(channels(&id, ExportFormatVersion::V2), Duration::from_millis(600)));
    let patient = async {
        // B arrives while A's submit is in flight, with a deadline well past it.
        tokio::time::sleep(Duration::from_millis(100)).await;
        patient.export_channels(with_deadline(channels(&id, ExportFormatVersion::V2), Duration::from_secs(10))).await
    };
    let (hasty, patient) = tokio::join!(hasty, patient);
    assert_status(&hasty.unwrap_err(), Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    let task_id = patient.expect("the patient caller gets the task of the shared submit").into_inner().task_id;
    // The submit ran to completion and was recorded: a later repeat gets it without a second export.
    assert_eq!(submit(&app, channels(&id, ExportFormatVersion::V2)).await.unwrap(), task_id);
    assert_eq!((app.emulator.requests("export_channels").await, app.emulator.exports_created().await), (1, 1));
    app.stop().await;
}

#[tokio::test]
async fn a_first_caller_that_leaves_does_not_make_the_next_one_submit_again() {
    let app = spawn_app().await;
    app.emulator.inject("export_channels", 1, json!({"kind": "delay", "ms": 800})).await;
    let id = uuid::Uuid::new_v4().to_string();
    let first = tokio::spawn({
        let app_client = app.client.clone();
        let request = channels(&id, ExportFormatVersion::V1);
        async move { app_client.clone().export_channels(request).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = tokio::spawn({
        let app_client = app.client.clone();
        let request = channels(&id, ExportFormatVersion::V1);
        async move { app_client.clone().export_channels(request).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The first caller goes away (its RST_STREAM reaches the server) while Stream works.
    first.abort();
    let task_id = second.await.unwrap().expect("the waiter gets the task").into_inner().task_id;
    assert!(!task_id.is_empty());
    assert_eq!((app.emulator.requests("export_channels").await, app.emulator.exports_created().await), (1, 1));
    app.stop().await;
}
