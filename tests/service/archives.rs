//! Archives (issue 34): every file of a job copied into the team's bucket (a local directory,
//! or a real S3 server on loopback), checksummed, with a manifest written last; refused
//! destinations; faults of the store and of the download; verify; and ReadExport from the
//! archive once Stream has deleted the file.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use stream_export::{
    archive::StoreOptions,
    emulator::EmulatorConfig,
    proto::{
        ChannelList, ChannelRef, CreateExportJobRequest, ExportChannelsRequest, ExportFormatVersion, ExportJob,
        ExportJobState, ExportJobTask, GetExportJobRequest, ListExportJobTasksRequest, VerifyExportJobRequest,
        archive_mismatch::Problem, create_export_job_request::Selector,
    },
};
use tonic::Code;

use crate::common::{
    API_KEY, API_SECRET, Options, TestApp, assert_status, read_export_to_end,
    s3::{Failure, RequestKind, S3Server},
    spawn_app_with, violated_fields,
};

/// A service whose jobs may archive under `allow`, with the store options `options`.
async fn app_with(allow: Vec<String>, options: Vec<(String, String)>) -> TestApp {
    let mut emulator = EmulatorConfig::new(API_KEY, API_SECRET);
    emulator.synthetic_channels = 100;
    spawn_app_with(Options {
        emulator,
        tweak: Some(Box::new(move |settings| {
            settings.jobs.export_budget_per_minute = 6_000;
            settings.archive.allow = allow;
            settings.archive.store_options = StoreOptions::new(options);
        })),
        ..Options::default()
    })
    .await
}

/// A fresh directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("archive-test-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path.canonicalize().unwrap())
    }

    fn uri(&self, below: &str) -> String {
        format!("file://{}/{below}", self.0.display())
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn archived_job(range: std::ops::Range<usize>, archive_uri: String) -> CreateExportJobRequest {
    let channels =
        range.map(|n| ChannelRef { r#type: "messaging".into(), id: format!("bulk-{n:06}"), ..Default::default() });
    CreateExportJobRequest {
        selector: Some(Selector::Channels(ChannelList { channels: channels.collect() })),
        version: ExportFormatVersion::V2 as i32,
        archive_uri,
        ..Default::default()
    }
}

async fn create(app: &TestApp, request: CreateExportJobRequest) -> ExportJob {
    app.client.clone().create_export_job(request).await.expect("the job is created").into_inner()
}

/// Reads the job until it ends.
async fn finished(app: &TestApp, job_id: &str) -> ExportJob {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let request = GetExportJobRequest { job_id: job_id.into() };
        let job = app.client.clone().get_export_job(request).await.expect("the job is read").into_inner();
        if job.state().is_terminal() {
            return job;
        }
        assert!(tokio::time::Instant::now() < until, "the job did not end in time: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shards(app: &TestApp, job_id: &str) -> Vec<ExportJobTask> {
    let request = ListExportJobTasksRequest { job_id: job_id.into(), page_size: 1000, page_token: String::new() };
    app.client.clone().list_export_job_tasks(request).await.expect("shards").into_inner().tasks
}

/// The task's file as Stream serves it now.
async fn stream_file(app: &TestApp, task_id: &str) -> Vec<u8> {
    let (status, task) = app.emulator.api_get(&format!("/tasks/{task_id}")).await;
    assert_eq!(status, 200, "{task}");
    let url = task["result"]["url"].as_str().expect("a completed task has a URL");
    app.emulator.http.get(url).send().await.unwrap().bytes().await.unwrap().to_vec()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[tokio::test]
async fn a_job_archives_every_file_checksummed_with_a_manifest_that_sha256sum_accepts() {
    let root = TempDir::new();
    let app = app_with(vec![root.uri("teams")], Vec::new()).await;
    let mut request = archived_job(0..30, root.uri("teams/analytics/"));
    request.verify = true;
    let job = finished(&app, &create(&app, request).await.job_id).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let folder = root.0.join("teams/analytics").join(&job.job_id);
    assert_eq!(job.manifest_uri, format!("file://{}/manifest.json", folder.display()));

    let shards = shards(&app, &job.job_id).await;
    assert_eq!(shards.len(), 2);
    let mut total = 0;
    for shard in &shards {
        let archive = shard.archive.as_ref().expect("each shard's file is archived");
        let name = format!("{:05}-{}.jsonl", shard.shard, shard.task_id);
        assert_eq!(archive.key, format!("{}/{name}", folder.display()).trim_start_matches('/'));
        let stored = std::fs::read(folder.join(&name)).unwrap();
        assert_eq!(stored, stream_file(&app, &shard.task_id).await, "the archive holds Stream's bytes");
        assert_eq!((archive.bytes, archive.sha256.as_str()), (stored.len() as u64, sha256(&stored).as_str()));
        total += archive.bytes;
    }
    let progress = job.progress.expect("progress");
    assert_eq!((progress.tasks_archived, progress.bytes_archived), (2, total));

    let manifest = read_json(&folder.join("manifest.json"));
    assert_eq!(manifest["format"], "stream-export.manifest.v1");
    assert_eq!(manifest["job"]["job_id"], job.job_id.as_str());
    assert_eq!(manifest["job"]["version"], "v2");
    assert_eq!(manifest["job"]["selector"], json!({"channels": 30}));
    let files = manifest["files"].as_array().expect("files");
    for (file, shard) in files.iter().zip(&shards) {
        let archive = shard.archive.as_ref().unwrap();
        assert_eq!(file["key"], archive.key.as_str());
        assert_eq!(file["bytes"], archive.bytes);
        assert_eq!(file["sha256"], archive.sha256.as_str());
        assert_eq!(file["task_id"], shard.task_id.as_str());
        assert!(file["task_create_time"].as_str().is_some_and(|at| at.ends_with('Z')), "{file}");
    }
    assert_eq!(files[0]["channels"][0]["cid"], "messaging:bulk-000000");
    assert_eq!(files[1]["channels"].as_array().map(Vec::len), Some(5));
    let checked = std::process::Command::new("sha256sum").args(["-c", "SHA256SUMS"]).current_dir(&folder).output();
    let checked = checked.expect("sha256sum runs");
    assert!(checked.status.success(), "{}", String::from_utf8_lossy(&checked.stdout));

    // VerifyExportJob reads every object again, and says which differs.
    let verify = || async {
        let request = VerifyExportJobRequest { job_id: job.job_id.clone() };
        app.client.clone().verify_export_job(request).await.expect("verify").into_inner()
    };
    let verified = verify().await;
    assert_eq!((verified.objects_checked, verified.bytes_checked, verified.mismatches.len()), (2, total, 0));
    assert_eq!(verified.manifest_uri, job.manifest_uri);
    let first = folder.join(format!("00000-{}.jsonl", shards[0].task_id));
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[10] ^= 0x20;
    std::fs::write(&first, bytes).unwrap();
    std::fs::remove_file(folder.join(format!("00001-{}.jsonl", shards[1].task_id))).unwrap();
    let verified = verify().await;
    let problems: Vec<(String, Problem)> =
        verified.mismatches.iter().map(|mismatch| (mismatch.key.clone(), mismatch.problem())).collect();
    let keys: Vec<String> = shards.iter().map(|shard| shard.archive.as_ref().unwrap().key.clone()).collect();
    assert_eq!(problems, [(keys[0].clone(), Problem::Sha256), (keys[1].clone(), Problem::Missing)]);
    app.stop().await;
}

#[tokio::test]
async fn destinations_outside_the_allow_list_are_refused_before_anything_runs() {
    let root = TempDir::new();
    let outside = TempDir::new();
    std::os::unix::fs::symlink(&outside.0, root.0.join("escape")).unwrap();

    let off = app_with(Vec::new(), Vec::new()).await;
    let refused = off.client.clone().create_export_job(archived_job(0..3, root.uri("x"))).await.unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "ARCHIVE_NOT_CONFIGURED");
    off.stop().await;

    let app = app_with(vec![root.uri("teams"), "s3://exports-bucket/teams/analytics".into()], Vec::new()).await;
    for uri in [
        "s3://exports-bucket/teams/analytics-x/daily".to_owned(),
        "s3://other-bucket/teams/analytics".to_owned(),
        root.uri("elsewhere"),
        root.uri("escape/daily"),
    ] {
        let refused = app.client.clone().create_export_job(archived_job(0..3, uri.clone())).await.unwrap_err();
        let details = assert_status(&refused, Code::PermissionDenied, "ARCHIVE_NOT_ALLOWED");
        assert!(details.error_info().unwrap().metadata.contains_key("archive_uri"), "{uri}");
    }
    for uri in ["s3://exports-bucket/teams/analytics/../other", "ftp://exports-bucket/x", "s3://k:s@exports-bucket/x"] {
        let refused = app.client.clone().create_export_job(archived_job(0..3, uri.into())).await.unwrap_err();
        let details = assert_status(&refused, Code::InvalidArgument, "INVALID_REQUEST");
        assert_eq!(violated_fields(&details), ["archive_uri"], "{uri}");
    }
    let mut verify_alone = archived_job(0..3, String::new());
    verify_alone.verify = true;
    let refused = app.client.clone().create_export_job(verify_alone).await.unwrap_err();
    assert_eq!(violated_fields(&assert_status(&refused, Code::InvalidArgument, "INVALID_REQUEST")), ["verify"]);
    assert_eq!(app.emulator.exports_created().await, 0, "nothing was submitted");
    assert!(!outside.0.join("daily").exists());

    // A job without an archive has nothing to verify.
    let plain = finished(&app, &create(&app, archived_job(0..3, String::new())).await.job_id).await;
    let request = VerifyExportJobRequest { job_id: plain.job_id };
    let refused = app.client.clone().verify_export_job(request).await.unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "NOT_ARCHIVED");
    app.stop().await;
}

#[tokio::test]
async fn a_task_is_read_from_the_archive_once_stream_has_deleted_its_file() {
    let root = TempDir::new();
    let app = app_with(vec![root.uri("")], Vec::new()).await;
    let job = finished(&app, &create(&app, archived_job(0..3, root.uri("daily"))).await.job_id).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let task_id = shards(&app, &job.job_id).await[0].task_id.clone();
    let (before, end) = read_export_to_end(&app, &task_id, 0).await;
    assert!(end.is_none() && !before.is_empty(), "{end:?}");
    let plain = ExportChannelsRequest {
        channels: vec![ChannelRef { r#type: "messaging".into(), id: "general".into(), ..Default::default() }],
        ..Default::default()
    };
    let plain = app.client.clone().export_channels(plain).await.unwrap().into_inner().task_id;
    crate::read_export::wait_completed(&app, plain.clone()).await;

    app.emulator.advance_clock(61 * 24 * 3600).await;
    let (gone, _) = app.emulator.api_get(&format!("/tasks/{task_id}")).await;
    assert_eq!(gone, 404, "Stream forgot the task");
    let (after, end) = read_export_to_end(&app, &task_id, 0).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(after, before, "the same records, from the archive");
    let (resumed, _) = read_export_to_end(&app, &task_id, 2).await;
    assert_eq!(resumed[..], after[2..], "resumable as before");

    let (_, end) = read_export_to_end(&app, &plain, 0).await;
    let status = end.expect("a task no archive holds");
    assert_status(&status, Code::NotFound, "EXPORT_FILE_GONE");
    app.stop().await;
}

#[tokio::test]
async fn an_expired_download_url_is_read_again_from_the_task_status() {
    let root = TempDir::new();
    let app = app_with(vec![root.uri("")], Vec::new()).await;
    let fault = json!({"kind": "status", "status": 403, "code": -1, "message": "Request has expired"});
    app.emulator.inject("download", 1, fault).await;
    let job = finished(&app, &create(&app, archived_job(0..3, root.uri("daily"))).await.job_id).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    assert_eq!(app.emulator.requests("download").await, 2, "refused once, then a fresh URL");
    assert_eq!(job.progress.unwrap().tasks_archived, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_manifest_another_writer_put_first_is_left_alone_and_the_job_fails() {
    let root = TempDir::new();
    let app = app_with(vec![root.uri("")], Vec::new()).await;
    app.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"running_ms": 1500}))).await;
    let job = create(&app, archived_job(0..3, root.uri("daily"))).await;
    let folder = root.0.join("daily").join(&job.job_id);
    std::fs::create_dir_all(&folder).unwrap();
    let foreign = br#"{"format": "someone else's"}"#;
    std::fs::write(folder.join("manifest.json"), foreign).unwrap();
    let job = finished(&app, &job.job_id).await;
    assert_eq!(job.state(), ExportJobState::Failed, "{job:?}");
    let error = job.error.expect("why");
    assert!(error.message.contains("another manifest"), "{}", error.message);
    assert_eq!(std::fs::read(folder.join("manifest.json")).unwrap(), foreign, "the first manifest stays");
    assert!(job.manifest_uri.is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_store_failing_mid_upload_is_retried_and_leaves_no_partial_object() {
    let s3 = S3Server::start().await;
    let app = app_with(vec![s3.url("teams")], s3.object_store_options()).await;
    // More failures than the client's own retries (one shard: one upload takes them all): the
    // copy fails once, is aborted, and the next try succeeds.
    s3.fail_next(RequestKind::UploadPart, Failure::InternalError, 4);
    let job = finished(&app, &create(&app, archived_job(0..20, s3.url("teams/analytics"))).await.job_id).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    assert!(s3.count(RequestKind::Abort) >= 1, "the failed upload was aborted");
    assert!(s3.pending_uploads().is_empty(), "no upload left pending: {:?}", s3.pending_uploads());
    let shards = shards(&app, &job.job_id).await;
    let mut expected: Vec<String> = shards
        .iter()
        .map(|shard| format!("teams/analytics/{}/{:05}-{}.jsonl", job.job_id, shard.shard, shard.task_id))
        .collect();
    expected.push(format!("teams/analytics/{}/SHA256SUMS", job.job_id));
    expected.push(format!("teams/analytics/{}/manifest.json", job.job_id));
    expected.sort();
    assert_eq!(s3.keys("teams/"), expected);
    for shard in &shards {
        let archive = shard.archive.as_ref().unwrap();
        let stored = s3.object(&archive.key).expect("the object");
        assert_eq!(stored, stream_file(&app, &shard.task_id).await);
        assert_eq!(archive.sha256, sha256(&stored));
    }
    assert_eq!(job.manifest_uri, format!("s3://exports/teams/analytics/{}/manifest.json", job.job_id));
    let verified = app
        .client
        .clone()
        .verify_export_job(VerifyExportJobRequest { job_id: job.job_id.clone() })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!((verified.objects_checked, verified.mismatches.len()), (1, 0));
    app.stop().await;
}
