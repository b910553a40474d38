//! Every RPC's success path against the emulator, plus health and reflection.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use common::{
    assert_status,
    records::{json_of, normalised},
    spawn_app,
};
use prost_types::Timestamp;
use serde_json::{Value, json};
use stream_export::{
    emulator::data::{HEAVY_USER, KNOWN_CHANNEL, KNOWN_USER, UNKNOWN_USER},
    proto::{
        ChannelRef, ExportChannelsRequest, ExportFormatVersion, ExportUserRequest, ExportUsersRequest, GetTaskRequest,
        Task, TaskState,
    },
};
use tokio_stream::StreamExt;
use tonic::Code;

fn known_channel() -> ChannelRef {
    let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
    ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }
}

/// Polls GetTask until the task ends, returning every state seen.
async fn poll_until_done(app: &mut common::TestApp, task_id: &str) -> (Task, Vec<TaskState>) {
    let mut seen = Vec::new();
    for _ in 0..200 {
        let task = app.client.get_task(GetTaskRequest { task_id: task_id.into() }).await.unwrap().into_inner();
        if seen.last() != Some(&task.state()) {
            seen.push(task.state());
        }
        if matches!(task.state(), TaskState::Completed | TaskState::Failed) {
            return (task, seen);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {task_id} did not finish; states seen: {seen:?}");
}

#[tokio::test]
async fn channel_export_runs_to_completion_with_a_signed_url() {
    let mut app = spawn_app().await;
    let response = app
        .client
        .export_channels(ExportChannelsRequest { channels: vec![known_channel()], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(uuid::Uuid::parse_str(&response.task_id).is_ok(), "task id {:?}", response.task_id);
    assert_eq!(app.emulator.exports_created().await, 1);

    let (task, states) = poll_until_done(&mut app, &response.task_id).await;
    assert_eq!(states.last(), Some(&TaskState::Completed), "states: {states:?}");
    let order = |state: &TaskState| *state as i32;
    assert!(states.windows(2).all(|w| order(&w[0]) < order(&w[1])), "states go forward: {states:?}");
    assert_eq!(task.task_id, response.task_id);
    assert_eq!(task.upstream_status, "completed");
    assert!(task.create_time.is_some() && task.update_time.is_some());
    let result = task.result.expect("a completed task has a result");
    assert!(result.url.starts_with(&app.emulator.base_url()), "url {}", result.url);
    let expires = result.url_expire_time.expect("expiry").seconds;
    let in_a_day = (Utc::now() + chrono::Duration::hours(24)).timestamp();
    assert!((expires - in_a_day).abs() <= 60, "expires {expires}, expected about {in_a_day}");

    // The download works, and a later read re-signs the URL with a later expiry.
    let file = app.emulator.http.get(&result.url).send().await.unwrap();
    assert_eq!(file.status(), 200);
    let document: Value =
        serde_json::from_slice(&file.bytes().await.unwrap()).expect("a v1 export is one JSON document");
    assert!(document.to_string().contains(KNOWN_CHANNEL.split_once(':').unwrap().1));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = app.client.get_task(GetTaskRequest { task_id: response.task_id }).await.unwrap().into_inner();
    let again = again.result.unwrap();
    assert_ne!(again.url, result.url, "each read re-signs the URL");
    assert!(again.url_expire_time.unwrap().seconds > expires);
    app.stop().await;
}

#[tokio::test]
async fn v2_export_honours_the_message_window() {
    let mut app = spawn_app().await;
    let since = "2024-02-01T00:00:00Z".parse::<chrono::DateTime<Utc>>().unwrap();
    let until = "2024-03-01T00:00:00Z".parse::<chrono::DateTime<Utc>>().unwrap();
    let channel = ChannelRef {
        messages_since: Some(Timestamp { seconds: since.timestamp(), nanos: 0 }),
        messages_until: Some(Timestamp { seconds: until.timestamp(), nanos: 0 }),
        ..known_channel()
    };
    let request = ExportChannelsRequest {
        channels: vec![channel],
        version: ExportFormatVersion::V2 as i32,
        include_truncated_messages: true,
        ..Default::default()
    };
    let task_id = app.client.export_channels(request).await.unwrap().into_inner().task_id;
    let (task, _) = poll_until_done(&mut app, &task_id).await;
    let url = task.result.unwrap().url;
    let body = app.emulator.http.get(&url).send().await.unwrap().text().await.unwrap();
    let lines: Vec<Value> = body.lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect();
    let messages: Vec<&Value> = lines.iter().filter(|line| line["type"] == "message").collect();
    assert!(!messages.is_empty(), "the window holds messages");
    for message in messages {
        let created: chrono::DateTime<Utc> = message["item"]["created_at"].as_str().unwrap().parse().unwrap();
        assert!(created >= since && created <= until, "message at {created} is outside the window");
    }
    app.stop().await;
}

#[tokio::test]
async fn failed_task_reports_the_upstream_error() {
    let mut app = spawn_app().await;
    let task_id = app
        .client
        .export_channels(ExportChannelsRequest { channels: vec![known_channel()], ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .task_id;
    app.emulator
        .steer(&task_id, json!({"status": "failed", "error": {"type": "export_error", "description": "disk full"}}))
        .await;
    let task = app.client.get_task(GetTaskRequest { task_id }).await.unwrap().into_inner();
    assert_eq!(task.state(), TaskState::Failed);
    let error = task.error.expect("a failed task has an error");
    assert_eq!((error.r#type.as_str(), error.description.as_str()), ("export_error", "disk full"));
    assert!(task.result.is_none());
    app.stop().await;
}

#[tokio::test]
async fn user_batch_export_completes_under_exports_users() {
    let mut app = spawn_app().await;
    let users = |ids: &[&str]| ExportUsersRequest {
        user_ids: ids.iter().map(|id| id.to_string()).collect(),
        ..Default::default()
    };
    let task_id = app.client.export_users(users(&[KNOWN_USER, "user-02"])).await.unwrap().into_inner().task_id;
    let (task, _) = poll_until_done(&mut app, &task_id).await;
    assert_eq!(task.state(), TaskState::Completed, "{task:?}");
    assert!(task.result.unwrap().url.contains("/exports/users/"));

    // A user over the 10,000-message limit fails the batch, with upstream's error.
    let task_id = app.client.export_users(users(&[KNOWN_USER, HEAVY_USER])).await.unwrap().into_inner().task_id;
    let (task, _) = poll_until_done(&mut app, &task_id).await;
    assert_eq!(task.state(), TaskState::Failed);
    assert!(task.error.unwrap().description.contains(HEAVY_USER));
    app.stop().await;
}

#[tokio::test]
async fn user_export_is_lossless() {
    let mut app = spawn_app().await;
    let response = app.client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap().into_inner();
    let (status, direct) = app.emulator.api_get(&format!("/users/{KNOWN_USER}/export")).await;
    assert_eq!(status, 200);
    assert_eq!(json_of(response.user.as_ref().unwrap()), normalised(&direct["user"]));
    let messages: Vec<Value> = response.messages.iter().map(json_of).collect();
    let reactions: Vec<Value> = response.reactions.iter().map(json_of).collect();
    assert!(!messages.is_empty() && !reactions.is_empty(), "the known user has messages and reactions");
    assert_eq!(Value::Array(messages), normalised(&direct["messages"]));
    assert_eq!(Value::Array(reactions), normalised(&direct["reactions"]));
    app.stop().await;
}

#[tokio::test]
async fn missing_and_oversized_users_and_tasks() {
    let mut app = spawn_app().await;
    let status = app.client.export_user(ExportUserRequest { user_id: HEAVY_USER.into() }).await.unwrap_err();
    let details = assert_status(&status, Code::FailedPrecondition, "USER_EXPORT_TOO_LARGE");
    assert_eq!(details.error_info().unwrap().metadata["upstream_http_status"], "400");
    let status = app.client.export_user(ExportUserRequest { user_id: UNKNOWN_USER.into() }).await.unwrap_err();
    assert_status(&status, Code::NotFound, "USER_NOT_FOUND");
    let status = app.client.get_task(GetTaskRequest { task_id: uuid::Uuid::new_v4().to_string() }).await.unwrap_err();
    let details = assert_status(&status, Code::NotFound, "TASK_NOT_FOUND");
    assert_eq!(details.error_info().unwrap().metadata["stream_code"], "16");
    app.stop().await;
}

#[tokio::test]
async fn health_reports_serving_and_reflection_lists_the_services() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::{v1, v1alpha};

    let app = spawn_app().await;
    let mut health = HealthClient::new(app.channel.clone());
    for service in ["", "streamexport.v1.ExportService"] {
        let response = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "service {service:?}");
    }

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        responses.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a list of services")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"streamexport.v1.ExportService".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel.clone());
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
            "streamexport.v1.ExportService".into(),
        )),
    };
    let mut responses = client.server_reflection_info(tokio_stream::iter([request])).await.unwrap().into_inner();
    let response = responses.next().await.unwrap().unwrap().message_response.unwrap();
    assert!(
        matches!(response, v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_)),
        "v1alpha reflection describes the service (grpcurl 1.8 needs it)"
    );
    app.stop().await;
}
