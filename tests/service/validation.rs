//! Every validation rule answers INVALID_ARGUMENT with a `BadRequest` violation per problem,
//! and nothing reaches upstream.

use crate::common;

use common::{assert_status, spawn_app, violated_fields};
use prost_types::Timestamp;
use stream_export::proto::{
    ChannelRef, ExportChannelsRequest, ExportUserRequest, ExportUsersRequest, GetTaskRequest, WatchTaskRequest,
};
use tonic::Code;

fn channel(kind: &str, id: &str) -> ChannelRef {
    ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }
}

fn at(seconds: i64) -> Option<Timestamp> {
    Some(Timestamp { seconds, nanos: 0 })
}

/// Sends `request` and returns the violated field paths.
async fn channel_violations(app: &mut common::TestApp, request: ExportChannelsRequest) -> Vec<String> {
    let status = app.client.export_channels(request).await.expect_err("must be rejected");
    violated_fields(&assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST"))
}

#[tokio::test]
async fn channel_export_rules() {
    let mut app = spawn_app().await;
    let cases: Vec<(ExportChannelsRequest, Vec<&str>)> = vec![
        (ExportChannelsRequest::default(), vec!["channels"]),
        (
            ExportChannelsRequest {
                channels: (0..26).map(|i| channel("messaging", &format!("c{i}"))).collect(),
                ..Default::default()
            },
            vec!["channels"],
        ),
        (
            ExportChannelsRequest { channels: vec![channel("", ""), channel("messaging", "ok")], ..Default::default() },
            vec!["channels[0].type", "channels[0].id"],
        ),
        (
            ExportChannelsRequest {
                channels: vec![
                    channel("messa ging", "a"),
                    channel("messaging", "a/b"),
                    channel("messaging", &"x".repeat(65)),
                ],
                ..Default::default()
            },
            vec!["channels[0].type", "channels[1].id", "channels[2].id"],
        ),
        (
            ExportChannelsRequest {
                channels: vec![channel("messaging", "a"), channel("team", "a"), channel("messaging", "a")],
                ..Default::default()
            },
            vec!["channels[2]"],
        ),
        (
            ExportChannelsRequest {
                channels: vec![ChannelRef {
                    messages_since: at(2_000),
                    messages_until: at(1_000),
                    ..channel("messaging", "a")
                }],
                ..Default::default()
            },
            vec!["channels[0].messages_until"],
        ),
        (
            ExportChannelsRequest {
                channels: vec![ChannelRef {
                    messages_since: Some(Timestamp { seconds: 0, nanos: -1 }),
                    ..channel("messaging", "a")
                }],
                ..Default::default()
            },
            vec!["channels[0].messages_since"],
        ),
        (
            ExportChannelsRequest { channels: vec![channel("messaging", "a")], version: 7, ..Default::default() },
            vec!["version"],
        ),
        (
            ExportChannelsRequest {
                channels: vec![channel("messaging", "a")],
                request_id: "has space".into(),
                ..Default::default()
            },
            vec!["request_id"],
        ),
    ];
    for (request, expected) in cases {
        let described = format!("{request:?}");
        assert_eq!(channel_violations(&mut app, request).await, expected, "for {described}");
    }
    assert_eq!(app.emulator.requests("export_channels").await, 0, "nothing may reach upstream");
    app.stop().await;
}

#[tokio::test]
async fn user_export_rules() {
    let mut app = spawn_app().await;
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (vec![], vec!["user_ids"]),
        ((0..26).map(|i| format!("u{i}")).collect(), vec!["user_ids"]),
        (
            vec!["a".into(), "".into(), "a".into(), "x y".into(), "z".repeat(256)],
            vec!["user_ids[1]", "user_ids[2]", "user_ids[3]", "user_ids[4]"],
        ),
    ];
    for (user_ids, expected) in cases {
        let status = app.client.export_users(ExportUsersRequest { user_ids, ..Default::default() }).await.unwrap_err();
        assert_eq!(violated_fields(&assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST")), expected);
    }
    for user_id in ["", "tab\there", &"u".repeat(256)] {
        let status = app.client.export_user(ExportUserRequest { user_id: user_id.into() }).await.unwrap_err();
        assert_eq!(violated_fields(&assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST")), ["user_id"]);
    }
    assert_eq!(app.emulator.requests("export_users").await + app.emulator.requests("export_user").await, 0);
    app.stop().await;
}

#[tokio::test]
async fn task_id_rules() {
    let mut app = spawn_app().await;
    for task_id in ["", "a b", &"t".repeat(129)] {
        let status = app.client.get_task(GetTaskRequest { task_id: task_id.into() }).await.unwrap_err();
        assert_eq!(violated_fields(&assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST")), ["task_id"]);
        let status = app.client.watch_task(WatchTaskRequest { task_id: task_id.into() }).await.unwrap_err();
        assert_eq!(violated_fields(&assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST")), ["task_id"]);
    }
    assert_eq!(app.emulator.requests("get_task").await, 0);
    app.stop().await;
}
