//! ReadExport: every record of an export arrives once and in order, for both formats, small and
//! large, also across a resume after a broken download.

mod common;

use std::time::Duration;

use common::{
    API_KEY, API_SECRET, Options, TestApp, TestEmulator, assert_status,
    process::ServiceProcess,
    records::{expected_records, json_of, normalised},
    spawn_app, spawn_app_with,
};
use serde_json::{Value, json};
use stream_export::{
    emulator::EmulatorConfig,
    emulator::data::{HEAVY_CHANNEL, HEAVY_USER, KNOWN_CHANNEL, KNOWN_USER, TEAM_CHANNEL},
    export::ReadLimits,
    proto::{
        ChannelRef, ExportChannelsRequest, ExportFormatVersion, ExportRecord, ExportUsersRequest, GetTaskRequest,
        ReadExportRequest, TaskState,
    },
};
use tokio_stream::StreamExt;
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

async fn wait_completed(app: &TestApp, task_id: String) -> (String, String) {
    let mut client = app.client.clone();
    for _ in 0..200 {
        let task = client.get_task(GetTaskRequest { task_id: task_id.clone() }).await.unwrap().into_inner();
        if task.state() == TaskState::Completed {
            return (task_id, task.result.unwrap().url);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("task {task_id} did not complete");
}

/// Reads a ReadExport stream to its end: the records, and the error that ended it, if any.
async fn read(app: &TestApp, task_id: &str, start_index: u64) -> (Vec<ExportRecord>, Option<Status>) {
    let mut client = app.client.clone();
    let request = ReadExportRequest { task_id: task_id.into(), start_index };
    let mut stream = match client.read_export(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut records = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.expect("records in time")
    {
        match item {
            Ok(record) => records.push(record),
            Err(status) => return (records, Some(status)),
        }
    }
    (records, None)
}

async fn download(app: &TestApp, url: &str) -> String {
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
        let (records, end) = read(&app, &task_id, 0).await;
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
        let (records, end) = read(&app, &task_id, 0).await;
        assert!(end.is_none(), "{end:?}");
        assert_same(&records, &expected, 0);
    }
    let mut client = app.client.clone();
    let request = ExportUsersRequest { user_ids: vec![KNOWN_USER.into(), "user-02".into()], ..Default::default() };
    let task_id = client.export_users(request).await.unwrap().into_inner().task_id;
    let (task_id, url) = wait_completed(&app, task_id).await;
    let expected = expected_records(&download(&app, &url).await);
    let (records, end) = read(&app, &task_id, 0).await;
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
    let (first, end) = read(&app, &task_id, 0).await;
    let status = end.expect("the stream ends with an error");
    let details = assert_status(&status, Code::Unavailable, "DOWNLOAD_FAILED");
    let next: u64 = details.error_info().unwrap().metadata["next_index"].parse().unwrap();
    assert_eq!(next, first.len() as u64, "next_index is the first record not delivered");
    assert!(!first.is_empty() && (first.len() as u64) < expected.len() as u64, "it broke mid-way");
    assert!(status.message().contains(&next.to_string()), "the message says at which record: {}", status.message());

    let (rest, end) = read(&app, &task_id, next).await;
    assert!(end.is_none(), "{end:?}");
    let mut all = first;
    all.extend(rest);
    assert_same(&all, &expected, 0);

    // A client may also resume anywhere by choice.
    let (tail, _) = read(&app, &task_id, expected.len() as u64 - 3).await;
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
    let (_, end) = read(&app, &task_id, 0).await;
    assert_status(&end.expect("refused"), Code::FailedPrecondition, "TASK_NOT_COMPLETED");

    let request = ExportUsersRequest { user_ids: vec![HEAVY_USER.into()], ..Default::default() };
    let failed = client.export_users(request).await.unwrap().into_inner().task_id;
    app.emulator.steer(&failed, json!({"status": "failed"})).await;
    let (_, end) = read(&app, &failed, 0).await;
    assert_status(&end.expect("refused"), Code::FailedPrecondition, "TASK_NOT_COMPLETED");

    let (_, end) = read(&app, &uuid::Uuid::new_v4().to_string(), 0).await;
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
        let (read, end) = read(&app, task_id, 0).await;
        assert!(end.is_none(), "{version}: {end:?}");
        assert_eq!(read.len() as u64, expected, "{version}: a channel, every message, a reaction per ten (v2)");
        assert_eq!(read[0].kind, "channel");
        assert!(read.iter().enumerate().all(|(i, r)| r.index == i as u64));
    }
    app.stop().await;
}

/// Creates a completed synthetic export (generated on the fly by the emulator).
async fn synthetic(app: &TestApp, version: &str, records: u64, record_bytes: usize) -> String {
    let created = app
        .emulator
        .control(
            reqwest::Method::POST,
            "synthetic_exports",
            Some(json!({"records": records, "version": version, "record_bytes": record_bytes})),
        )
        .await;
    created["task_id"].as_str().unwrap().to_owned()
}

/// A service whose ReadExport limits `tweak` changes.
async fn spawn_with_reads(tweak: impl FnOnce(&mut ReadLimits) + Send + 'static) -> TestApp {
    spawn_app_with(Options {
        tweak: Some(Box::new(move |settings| tweak(&mut settings.limits.reads))),
        ..Default::default()
    })
    .await
}

async fn open(app: &TestApp, task_id: &str) -> tonic::Streaming<ExportRecord> {
    let request = ReadExportRequest { task_id: task_id.into(), start_index: 0 };
    app.client.clone().read_export(request).await.expect("the stream opens").into_inner()
}

fn next_index(status: &Status) -> u64 {
    status.get_error_details().error_info().expect("ErrorInfo").metadata["next_index"].parse().unwrap()
}

#[tokio::test]
async fn past_the_read_stream_limit_a_stream_is_refused_at_once_and_the_slot_comes_back() {
    let app = spawn_with_reads(|reads| reads.max_streams = 2).await;
    let task_id = synthetic(&app, "v2", 200_000, 512).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = open(&app, &task_id).await;
        stream.message().await.unwrap().expect("a first record");
        held.push(stream);
    }
    let request = ReadExportRequest { task_id: task_id.clone(), start_index: 0 };
    let refused = app.client.clone().read_export(request.clone()).await.expect_err("a third stream is refused");
    assert_status(&refused, Code::ResourceExhausted, "READ_LIMIT_REACHED");

    // Cancelled streams give their slots back.
    drop(held);
    let mut reopened = None;
    for _ in 0..100 {
        match app.client.clone().read_export(request.clone()).await {
            Ok(stream) => {
                reopened = Some(stream);
                break;
            }
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened.is_some(), "a slot comes back once a stream is cancelled");
    drop(reopened);
    app.stop().await;
}

#[tokio::test]
async fn a_client_that_stops_reading_is_ended_with_where_to_resume() {
    let app = spawn_with_reads(|reads| reads.idle_timeout = Duration::from_millis(500)).await;
    let task_id = synthetic(&app, "v2", 200_000, 512).await;
    let mut stream = open(&app, &task_id).await;
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut received = 1u64;
    let status = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.message().await {
                Ok(Some(record)) => {
                    assert_eq!(record.index, received);
                    received += 1;
                }
                Ok(None) => panic!("the paused stream went on to the end ({received} records)"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream ends in time");
    assert_status(&status, Code::Unavailable, "READ_INTERRUPTED");
    assert_eq!(next_index(&status), received, "next_index is the first record not delivered");
    assert!(received < 200_000, "it ended early: {received}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_v1_streams_hold_no_thread_and_unary_calls_still_succeed() {
    const STREAMS: usize = 40;
    let app = spawn_with_reads(|reads| reads.max_streams = 100).await;
    let task_id = synthetic(&app, "v1", 100_000, 512).await;
    let threads = || std::fs::read_dir("/proc/self/task").map(|tasks| tasks.count()).unwrap_or(0);
    // Small stream windows on a large connection window: paused streams must not starve the
    // connection, so every stream gets its first record.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(Some(64 * 1024))
        .initial_connection_window_size(Some(64 * 1024 * 1024))
        .connect()
        .await
        .unwrap();
    let client = stream_export::proto::export_service_client::ExportServiceClient::new(channel);
    let before = threads();
    let mut held = Vec::new();
    for _ in 0..STREAMS {
        let request = ReadExportRequest { task_id: task_id.clone(), start_index: 0 };
        let mut stream = client.clone().read_export(request).await.expect("the stream opens").into_inner();
        stream.message().await.unwrap().expect("a first record");
        held.push(stream);
    }
    // Time for every parser to fill its buffer and wait for its paused client.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = threads();
    assert!(
        during < before + STREAMS / 2,
        "{STREAMS} paused V1 streams took threads: {before} before, {during} during"
    );
    let mut client = app.client.clone();
    let get = client.get_task(GetTaskRequest { task_id: task_id.clone() });
    let task = tokio::time::timeout(Duration::from_secs(5), get).await.expect("a unary call in time").unwrap();
    assert_eq!(task.into_inner().state(), TaskState::Completed);
    drop(held);
    app.stop().await;
}

/// Serves `body` as the next download of a completed V1 export, and reads it.
async fn read_served(app: &TestApp, task_id: &str, body: &str) -> (Vec<ExportRecord>, Option<Status>) {
    app.emulator.inject("download", 1, json!({"kind": "non_json", "status": 200, "body": body})).await;
    read(app, task_id, 0).await
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
    let (records, end) = read(&app, &task_id, 0).await;
    let status = end.expect("a download cut mid-body is not complete");
    assert_status(&status, Code::Unavailable, "DOWNLOAD_FAILED");
    assert_eq!(next_index(&status), records.len() as u64);
    app.stop().await;
}

#[tokio::test]
async fn an_entity_over_the_default_cap_ends_the_stream_with_data_loss_before_it_is_buffered() {
    let app = spawn_app().await;
    let over = ReadLimits::default().max_entity_bytes + 1024;
    for version in ["v2", "v1"] {
        let task_id = synthetic(&app, version, 2, over).await;
        let (records, end) = read(&app, &task_id, 0).await;
        let status = end.unwrap_or_else(|| panic!("{version}: an oversize entity is refused"));
        assert_status(&status, Code::DataLoss, "EXPORT_UNREADABLE");
        assert_eq!(records.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>(), ["channel"], "{version}");
        assert_eq!(next_index(&status), 1, "{version}");
        assert!(status.message().contains("limit"), "{version}: {}", status.message());
    }
    app.stop().await;
}

#[tokio::test]
async fn a_file_over_the_size_cap_ends_the_stream_with_data_loss() {
    let app = spawn_with_reads(|reads| reads.max_file_bytes = 100_000).await;
    for version in ["v2", "v1"] {
        let task_id = synthetic(&app, version, 2_000, 300).await;
        let (records, end) = read(&app, &task_id, 0).await;
        let status = end.unwrap_or_else(|| panic!("{version}: an oversize file is refused"));
        assert_status(&status, Code::DataLoss, "EXPORT_UNREADABLE");
        assert!(!records.is_empty() && records.len() < 400, "{version}: {} records", records.len());
        assert_eq!(next_index(&status), records.len() as u64);
    }
    app.stop().await;
}

#[tokio::test]
async fn read_export_failures_before_the_download_are_audited() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let base_url = emulator.base_url();
    let service = ServiceProcess::start(
        &[],
        &[
            ("STREAM_BASE_URL", &base_url),
            ("STREAM_API_KEY", API_KEY),
            ("STREAM_API_SECRET", API_SECRET),
            ("RUST_LOG", "info"),
        ],
    );
    service.wait_ready(true).await;
    let mut client = stream_export::proto::export_service_client::ExportServiceClient::new(service.channel().await);
    let unknown = uuid::Uuid::new_v4().to_string();
    for (task_id, code) in [(unknown.as_str(), "NotFound"), ("not a task id!", "InvalidArgument")] {
        let request = ReadExportRequest { task_id: task_id.into(), start_index: 0 };
        client.read_export(request).await.expect_err("refused");
        let expected = [r#"rpc="ReadExport""#.to_owned(), format!(r#"code="{code}""#)];
        let mut found = false;
        for _ in 0..50 {
            let log = service.log();
            found = log.lines().any(|line| line.contains(" audit:") && expected.iter().all(|e| line.contains(e)));
            if found {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(found, "no audit line for a refused ReadExport ({code}); log:\n{}", service.log());
    }
}
