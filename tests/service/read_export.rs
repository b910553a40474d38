//! ReadExport: every record of an export arrives once and in order, for both formats, small and
//! large, also across a resume after a broken download.

use crate::common;

use std::time::Duration;

use common::{
    TestApp, assert_status, read_export_to_end,
    records::{expected_records, json_of, normalised},
    spawn_app,
};
use serde_json::{Value, json};
use stream_export::{
    emulator::data::{HEAVY_CHANNEL, HEAVY_USER, KNOWN_CHANNEL, KNOWN_USER, TEAM_CHANNEL},
    proto::{
        ChannelRef, ExportChannelsRequest, ExportFormatVersion, ExportRecord, ExportUsersRequest, GetTaskRequest,
        TaskState,
    },
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

fn channel(cid: &str) -> ChannelRef {
    let (kind, id) = cid.split_once(':').unwrap();
    ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }
}

/// Submits a channel export and waits until it completes; returns the task id and its URL.
async fn completed_channel_export(app: &TestApp, cids: &[&str], version: ExportFormatVersion) -> (String, String) {
    let mut client = app.client.clone();
    let request = ExportChannelsRequest {
        channels: cids.iter().map(|cid| channel(cid)).collect(),
        version: version as i32,
        include_truncated_messages: true,
        export_users: true,
        ..Default::default()
    };
    let task_id = client.export_channels(request).await.unwrap().into_inner().task_id;
    wait_completed(app, task_id).await
}

/// Waits until `task_id` completes; returns it with its result URL. The deadline is generous:
/// a loaded machine building a large export file in a debug build can take many seconds.
pub(crate) async fn wait_completed(app: &TestApp, task_id: String) -> (String, String) {
    let mut client = app.client.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        let task = client.get_task(GetTaskRequest { task_id: task_id.clone() }).await.unwrap().into_inner();
        if task.state() == TaskState::Completed {
            return (task_id, task.result.unwrap().url);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {task_id} did not complete in 60 s");
}

/// The file at a result URL, as text.
pub(crate) async fn download(app: &TestApp, url: &str) -> String {
    app.emulator.http.get(url).send().await.unwrap().text().await.unwrap()
}

/// Asserts that `records` are exactly `expected`, numbered from `start`.
fn assert_same(records: &[ExportRecord], expected: &[(String, Value)], start: u64) {
    assert_eq!(records.len(), expected.len(), "record count");
    for (offset, (record, (kind, item))) in records.iter().zip(expected).enumerate() {
        assert_eq!(record.index, start + offset as u64, "records are numbered in order");
        assert_eq!(&record.kind, kind, "kind of record {}", record.index);
        assert_eq!(json_of(record.item.as_ref().unwrap()), normalised(item), "item of record {}", record.index);
    }
}

#[tokio::test]
async fn v2_and_v1_exports_arrive_record_by_record() {
    let app = spawn_app().await;
    for version in [ExportFormatVersion::V2, ExportFormatVersion::V1] {
        let (task_id, url) = completed_channel_export(&app, &[KNOWN_CHANNEL, TEAM_CHANNEL], version).await;
        let expected = expected_records(&download(&app, &url).await);
        let kinds: std::collections::BTreeSet<&str> = expected.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            ["channel", "member", "message", "reaction", "user"].iter().all(|k| kinds.contains(k)),
            "{version:?} covers every kind: {kinds:?}"
        );
        let (records, end) = read_export_to_end(&app, &task_id, 0).await;
        assert!(end.is_none(), "{version:?}: {end:?}");
        assert_same(&records, &expected, 0);
    }
    app.stop().await;
}

#[tokio::test]
async fn large_exports_of_both_versions_and_a_users_export() {
    let app = spawn_app().await;
    for version in [ExportFormatVersion::V2, ExportFormatVersion::V1] {
        let (task_id, url) = completed_channel_export(&app, &[HEAVY_CHANNEL], version).await;
        let expected = expected_records(&download(&app, &url).await);
        assert!(expected.len() > 10_000, "the heavy channel is large: {}", expected.len());
        let (records, end) = read_export_to_end(&app, &task_id, 0).await;
        assert!(end.is_none(), "{end:?}");
        assert_same(&records, &expected, 0);
    }
    let mut client = app.client.clone();
    let request = ExportUsersRequest { user_ids: vec![KNOWN_USER.into(), "user-02".into()], ..Default::default() };
    let task_id = client.export_users(request).await.unwrap().into_inner().task_id;
    let (task_id, url) = wait_completed(&app, task_id).await;
    let expected = expected_records(&download(&app, &url).await);
    let (records, end) = read_export_to_end(&app, &task_id, 0).await;
    assert!(end.is_none());
    assert_same(&records, &expected, 0);
    assert_eq!(records.iter().filter(|r| r.kind == "user").count(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_broken_download_says_where_to_resume_and_the_resume_completes_the_export() {
    let app = spawn_app().await;
    let (task_id, url) = completed_channel_export(&app, &[HEAVY_CHANNEL], ExportFormatVersion::V2).await;
    let expected = expected_records(&download(&app, &url).await);

    app.emulator.inject("download", 1, json!({"kind": "truncated"})).await;
    let (first, end) = read_export_to_end(&app, &task_id, 0).await;
    let status = end.expect("the stream ends with an error");
    let details = assert_status(&status, Code::Unavailable, "DOWNLOAD_FAILED");
    let next: u64 = details.error_info().unwrap().metadata["next_index"].parse().unwrap();
    assert_eq!(next, first.len() as u64, "next_index is the first record not delivered");
    assert!(!first.is_empty() && (first.len() as u64) < expected.len() as u64, "it broke mid-way");
    assert!(status.message().contains(&next.to_string()), "the message says at which record: {}", status.message());

    let (rest, end) = read_export_to_end(&app, &task_id, next).await;
    assert!(end.is_none(), "{end:?}");
    let mut all = first;
    all.extend(rest);
    assert_same(&all, &expected, 0);

    // A client may also resume anywhere by choice.
    let (tail, _) = read_export_to_end(&app, &task_id, expected.len() as u64 - 3).await;
    assert_same(&tail, &expected[expected.len() - 3..], expected.len() as u64 - 3);
    app.stop().await;
}

#[tokio::test]
async fn only_completed_tasks_can_be_read() {
    let app = spawn_app().await;
    let mut client = app.client.clone();
    let request = ExportChannelsRequest { channels: vec![channel(KNOWN_CHANNEL)], ..Default::default() };
    let task_id = client.export_channels(request).await.unwrap().into_inner().task_id;
    app.emulator.steer(&task_id, json!({"hold": true})).await;
    let (_, end) = read_export_to_end(&app, &task_id, 0).await;
    assert_status(&end.expect("refused"), Code::FailedPrecondition, "TASK_NOT_COMPLETED");

    let request = ExportUsersRequest { user_ids: vec![HEAVY_USER.into()], ..Default::default() };
    let failed = client.export_users(request).await.unwrap().into_inner().task_id;
    app.emulator.steer(&failed, json!({"status": "failed"})).await;
    let (_, end) = read_export_to_end(&app, &failed, 0).await;
    assert_status(&end.expect("refused"), Code::FailedPrecondition, "TASK_NOT_COMPLETED");

    let (_, end) = read_export_to_end(&app, &uuid::Uuid::new_v4().to_string(), 0).await;
    assert_status(&end.expect("refused"), Code::NotFound, "TASK_NOT_FOUND");
    assert_eq!(app.emulator.requests("download").await, 0, "nothing was downloaded");
    app.stop().await;
}

#[tokio::test]
async fn synthetic_exports_of_both_versions_stream_completely() {
    let app = spawn_app().await;
    for (version, records, expected) in [("v2", 2_000u64, 2_000 + 200 + 1), ("v1", 2_000, 2_000 + 1)] {
        let created = app
            .emulator
            .control(
                reqwest::Method::POST,
                "synthetic_exports",
                Some(json!({"records": records, "version": version, "record_bytes": 300})),
            )
            .await;
        let task_id = created["task_id"].as_str().unwrap();
        let (read, end) = read_export_to_end(&app, task_id, 0).await;
        assert!(end.is_none(), "{version}: {end:?}");
        assert_eq!(read.len() as u64, expected, "{version}: a channel, every message, a reaction per ten (v2)");
        assert_eq!(read[0].kind, "channel");
        assert!(read.iter().enumerate().all(|(i, r)| r.index == i as u64));
    }
    app.stop().await;
}

fn next_index(status: &Status) -> u64 {
    status.get_error_details().error_info().expect("ErrorInfo").metadata["next_index"].parse().unwrap()
}

/// Serves `body` as the next download of a completed V1 export, and reads it.
async fn read_served(app: &TestApp, task_id: &str, body: &str) -> (Vec<ExportRecord>, Option<Status>) {
    app.emulator.inject("download", 1, json!({"kind": "non_json", "status": 200, "body": body})).await;
    read_export_to_end(app, task_id, 0).await
}

#[tokio::test]
async fn every_v1_document_shape_is_read_and_only_a_complete_one_ends_ok() {
    let app = spawn_app().await;
    let (task_id, _) = completed_channel_export(&app, &[KNOWN_CHANNEL], ExportFormatVersion::V1).await;
    let block_a = r#"{"channel": {"cid": "messaging:a"}, "members": [{"user_id": "u1"}], "messages": [{"id": "m1", "latest_reactions": [{"type": "like"}]}]}"#;
    let block_b = r#"{"channel": {"cid": "messaging:b"}, "messages": [{"id": "m2"}]}"#;
    let kinds = |records: &[ExportRecord]| records.iter().map(|r| r.kind.clone()).collect::<Vec<_>>();
    let both = ["channel", "member", "message", "reaction", "channel", "message"];

    let wrapped = format!(r#"{{"channels": [{block_a}, {block_b}], "users": [{{"id": "u1"}}]}}"#);
    let (records, end) = read_served(&app, &task_id, &wrapped).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(kinds(&records), [&both[..], &["user"]].concat());

    let (records, end) = read_served(&app, &task_id, &format!("[{block_a}, {block_b}]")).await;
    assert!(end.is_none(), "a top-level array of channel blocks: {end:?}");
    assert_eq!(kinds(&records), both);

    let (records, end) = read_served(&app, &task_id, block_a).await;
    assert!(end.is_none(), "a channel block alone: {end:?}");
    assert_eq!(kinds(&records), ["channel", "member", "message", "reaction"]);

    // Cut at a record boundary: what was read arrives, and the end is an error, never OK.
    let (records, end) = read_served(&app, &task_id, &format!("[{block_a}, {block_b}")).await;
    let status = end.expect("a document without its end is not complete");
    assert_status(&status, Code::DataLoss, "EXPORT_UNREADABLE");
    assert_eq!(next_index(&status), records.len() as u64);

    // Cut by the connection mid-body.
    app.emulator.inject("download", 1, json!({"kind": "truncated"})).await;
    let (records, end) = read_export_to_end(&app, &task_id, 0).await;
    let status = end.expect("a download cut mid-body is not complete");
    assert_status(&status, Code::Unavailable, "DOWNLOAD_FAILED");
    assert_eq!(next_index(&status), records.len() as u64);
    app.stop().await;
}

#[tokio::test]
async fn a_start_index_past_the_end_is_out_of_range_and_once_the_count_is_known_costs_no_download() {
    let app = spawn_app().await;
    let (task_id, _) = completed_channel_export(&app, &[KNOWN_CHANNEL], ExportFormatVersion::V2).await;
    // Not known yet: the file is read to its end, then refused.
    let (rest, end) = read_export_to_end(&app, &task_id, 1 << 40).await;
    assert!(rest.is_empty(), "{rest:?}");
    assert_status(&end.expect("refused"), Code::OutOfRange, "START_INDEX_PAST_END");
    let (records, end) = read_export_to_end(&app, &task_id, 0).await;
    assert!(end.is_none(), "{end:?}");
    let count = records.len() as u64;
    // A resume right after the last record reads nothing, OK.
    let (rest, end) = read_export_to_end(&app, &task_id, count).await;
    assert!(rest.is_empty() && end.is_none(), "{rest:?} {end:?}");

    app.emulator.reset_counters().await;
    for start_index in [count + 1, u64::MAX] {
        let (rest, end) = read_export_to_end(&app, &task_id, start_index).await;
        assert!(rest.is_empty(), "{rest:?}");
        let status = end.expect("refused");
        let details = assert_status(&status, Code::OutOfRange, "START_INDEX_PAST_END");
        let info = details.error_info().expect("ErrorInfo");
        assert_eq!(info.metadata["record_count"], count.to_string());
    }
    assert_eq!(app.emulator.requests("download").await, 0, "the count was known: no download");
    app.stop().await;
}
