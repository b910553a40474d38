//! ReadExport's limits: the cap on concurrent streams, the idle timeout, no thread held by a
//! paused stream, the entity and file caps, and the audit of refused calls. Apart from
//! `read_export.rs` so that these heavier tests do not compete with its large exports.

use crate::common;

use std::time::Duration;

use common::{
    API_KEY, API_SECRET, Options, TestApp, TestEmulator, assert_status, process::ServiceProcess, read_export_to_end,
    spawn_app_with,
};
use serde_json::json;
use stream_export::{
    emulator::EmulatorConfig,
    export_file::ReadLimits,
    proto::{ExportRecord, GetTaskRequest, ReadExportRequest, TaskState},
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

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
    let request = ReadExportRequest { task_id: task_id.into(), start_index: 0, ..Default::default() };
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
    let request = ReadExportRequest { task_id: task_id.clone(), start_index: 0, ..Default::default() };
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
    const STREAMS: usize = 24;
    let app = spawn_with_reads(|reads| reads.max_streams = 100).await;
    let task_id = synthetic(&app, "v1", 5_000, 512).await;
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
        let request = ReadExportRequest { task_id: task_id.clone(), start_index: 0, ..Default::default() };
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

#[tokio::test]
async fn an_entity_over_the_default_cap_ends_the_stream_with_data_loss_before_it_is_buffered() {
    // The emulator builds a synthetic chunk whole before sending it: allow it time.
    let app = spawn_app_with(Options { upstream_timeout: Duration::from_secs(60), ..Default::default() }).await;
    let over = ReadLimits::default().max_entity_bytes + 1024;
    for version in ["v2", "v1"] {
        let task_id = synthetic(&app, version, 1, over).await;
        let (records, end) = read_export_to_end(&app, &task_id, 0).await;
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
        let (records, end) = read_export_to_end(&app, &task_id, 0).await;
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
    for (task_id, code) in [(unknown.as_str(), "NOT_FOUND"), ("not a task id!", "INVALID_ARGUMENT")] {
        let request = ReadExportRequest { task_id: task_id.into(), start_index: 0, ..Default::default() };
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
