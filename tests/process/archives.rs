//! Archives as a process (issue 34): the binary archives into a real S3 server on loopback
//! with the credentials of its own environment (`AWS_*`), never logs them, and a `kill -9` in
//! the middle of an upload is resumed after the restart: the shard is uploaded again, and the
//! job ends with its manifest.

use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use stream_export::{
    emulator::EmulatorConfig,
    proto::{
        ChannelList, ChannelRef, CreateExportJobRequest, ExportJob, ExportJobState, GetExportJobRequest,
        ListExportJobTasksRequest, create_export_job_request::Selector, export_service_client::ExportServiceClient,
    },
};
use tonic::transport::Channel;

use crate::common::{
    API_KEY, API_SECRET, TestEmulator,
    process::{ServiceProcess, free_port, scratch_state_dir},
    s3::{RequestKind, S3Server, SECRET_KEY},
};

async fn finished(client: &mut ExportServiceClient<Channel>, job_id: &str) -> ExportJob {
    let started = Instant::now();
    loop {
        let request = GetExportJobRequest { job_id: job_id.into() };
        let job = client.get_export_job(request).await.expect("the job").into_inner();
        if job.state().is_terminal() {
            return job;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the job did not end in time: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_mid_upload_is_archived_again_after_the_restart_and_no_credential_is_logged() {
    let s3 = S3Server::start().await;
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 30;
    let emulator = TestEmulator::spawn(config).await;
    let base_url = emulator.base_url();
    let cloud = s3.env();
    let mut env: Vec<(&str, &str)> = cloud.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    env.extend([
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
    ]);
    env.push(("RUST_LOG", "info"));
    let state = scratch_state_dir();
    let state = state.display().to_string();
    let allow = s3.url("teams");
    let args = ["--state-dir", state.as_str(), "--archive-allow", allow.as_str()];
    let port = free_port();

    let mut service = ServiceProcess::start_on(port, &args, &env);
    service.wait_ready(true).await;
    let held = s3.hold(RequestKind::UploadPart);
    let mut client = ExportServiceClient::new(service.channel().await);
    let channels = (0..20)
        .map(|n| ChannelRef { r#type: "messaging".into(), id: format!("bulk-{n:06}"), ..Default::default() })
        .collect();
    let request = CreateExportJobRequest {
        selector: Some(Selector::Channels(ChannelList { channels })),
        archive_uri: s3.url("teams/daily"),
        ..Default::default()
    };
    let job = client.create_export_job(request).await.expect("created").into_inner();
    s3.wait_until_held(1).await;
    service.kill();
    let first_log = service.log();
    drop(held);
    assert!(s3.keys("teams/").is_empty(), "no object under a final key before the upload completed");

    let service = ServiceProcess::start_on(port, &args, &env);
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let job = finished(&mut client, &job.job_id).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let request = ListExportJobTasksRequest { job_id: job.job_id.clone(), page_size: 10, page_token: String::new() };
    let shards = client.list_export_job_tasks(request).await.expect("shards").into_inner().tasks;
    let archive = shards[0].archive.clone().expect("the shard is archived");
    let stored = s3.object(&archive.key).expect("the object");
    assert_eq!(archive.sha256, hex::encode(Sha256::digest(&stored)));
    assert!(s3.count(RequestKind::UploadPart) >= 2, "the shard was uploaded again");
    let manifest: serde_json::Value =
        serde_json::from_slice(&s3.object(&format!("teams/daily/{}/manifest.json", job.job_id)).unwrap()).unwrap();
    assert_eq!(manifest["files"][0]["sha256"], archive.sha256.as_str());

    let logs = format!("{first_log}\n{}", service.log());
    assert!(logs.contains("archived"), "the copy is logged: {logs}");
    assert!(!logs.contains(SECRET_KEY), "the store's secret never reaches a log");
}
