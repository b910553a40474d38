//! Idempotent submits: a repeated `request_id` never starts a second export.

mod common;

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
