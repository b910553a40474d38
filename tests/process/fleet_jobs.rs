//! Export jobs as processes (issue 33). In a fleet: a job created on one replica is read,
//! watched and cancelled on any; one replica runs it at a time, under a lease; after a `kill -9`
//! of that replica another takes the job over and finishes it, no shard lost; the fleet's
//! submits share one export budget. Alone: with the embedded emulator's synthetic channels.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use stream_export::{
    emulator::EmulatorConfig,
    proto::{
        CancelExportJobRequest, ChannelList, ChannelRef, CreateExportJobRequest, ExportJob, ExportJobState,
        GetExportJobRequest, ListExportJobTasksRequest, ListExportJobsRequest, WatchExportJobRequest,
        create_export_job_request::Selector, export_service_client::ExportServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{
    common::{API_KEY, API_SECRET, TestEmulator, redis::RedisServer},
    fleet::{client, replicas_with},
};

async fn emulator(synthetic_channels: usize) -> TestEmulator {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = synthetic_channels;
    TestEmulator::spawn(config).await
}

fn job_of(channels: usize) -> CreateExportJobRequest {
    let channels = (0..channels)
        .map(|n| ChannelRef { r#type: "messaging".into(), id: format!("bulk-{n:06}"), ..Default::default() })
        .collect();
    CreateExportJobRequest { selector: Some(Selector::Channels(ChannelList { channels })), ..Default::default() }
}

async fn get(client: &mut ExportServiceClient<Channel>, job_id: &str) -> ExportJob {
    client.get_export_job(GetExportJobRequest { job_id: job_id.into() }).await.expect("the job").into_inner()
}

async fn finished(client: &mut ExportServiceClient<Channel>, job_id: &str, within: Duration) -> ExportJob {
    let started = Instant::now();
    loop {
        let job = get(client, job_id).await;
        if job.state().is_terminal() {
            return job;
        }
        assert!(started.elapsed() < within, "the job did not end in time: {job:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_job_created_on_one_replica_is_watched_on_another_and_runs_once() {
    let redis = RedisServer::start(None).await;
    let emulator = emulator(100).await;
    let settings = [("STREAM_EXPORT_UPSTREAM_EXPORT_BUDGET", "600")];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let (mut first, mut second) = (client(&fleet[0]).await, client(&fleet[1]).await);
    let job = first.create_export_job(job_of(60)).await.expect("created").into_inner();

    let mut events = second
        .watch_export_job(WatchExportJobRequest { job_id: job.job_id.clone() })
        .await
        .expect("watched on the other replica")
        .into_inner();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = event.expect("an event").job;
    }
    let last = last.expect("a last event");
    assert_eq!(last.state(), ExportJobState::Succeeded, "{last:?}");
    assert_eq!(emulator.exports_created().await, 3, "one export per shard: the job ran on one replica");
    let listed = second.list_export_jobs(ListExportJobsRequest::default()).await.expect("listed").into_inner();
    assert_eq!(listed.jobs.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(), [job.job_id.as_str()]);
    let whole = get(&mut second, &job.job_id).await;
    assert_eq!(whole.request, job.request, "any replica shows the whole request");
}

#[tokio::test]
async fn after_a_kill_9_of_the_replica_running_a_job_another_finishes_it_losing_no_shard() {
    let redis = RedisServer::start(None).await;
    let emulator = emulator(300).await;
    // 60 submits a minute in all: 10 shards take 10 s, so the kill comes mid-job.
    let settings = [("STREAM_EXPORT_UPSTREAM_EXPORT_BUDGET", "60")];
    let mut fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let mut survivor = client(&fleet[1]).await;
    let job = client(&fleet[0]).await.create_export_job(job_of(250)).await.expect("created").into_inner();
    // The creating replica runs it (it claims it at once); let it submit a few shards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = emulator.exports_created().await;
    assert!((1..10).contains(&before), "{before} of 10 shards submitted before the kill");
    fleet[0].kill();
    let killed_at = Instant::now();

    let job = finished(&mut survivor, &job.job_id, Duration::from_secs(40)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let shards = survivor
        .list_export_job_tasks(ListExportJobTasksRequest {
            job_id: job.job_id.clone(),
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("shards")
        .into_inner()
        .tasks;
    assert_eq!(shards.len(), 10);
    let channels: BTreeSet<&str> =
        shards.iter().flat_map(|shard| shard.channels.iter().map(|c| c.id.as_str())).collect();
    assert_eq!(channels.len(), 250, "no channel lost");
    // At most one duplicate export: the shard whose submit the kill interrupted.
    let exports = emulator.exports_created().await;
    assert!((10..=11).contains(&exports), "{exports} exports for 10 shards");
    assert!(killed_at.elapsed() < Duration::from_secs(40));
}

#[tokio::test]
async fn a_cancel_on_any_replica_stops_the_replica_that_runs_the_job() {
    let redis = RedisServer::start(None).await;
    let emulator = emulator(600).await;
    let settings = [("STREAM_EXPORT_UPSTREAM_EXPORT_BUDGET", "60")];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let job = client(&fleet[0]).await.create_export_job(job_of(500)).await.expect("created").into_inner();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut other = client(&fleet[1]).await;
    let cancelled = other.cancel_export_job(CancelExportJobRequest { job_id: job.job_id.clone() }).await;
    assert_eq!(cancelled.expect("cancel").into_inner().state(), ExportJobState::Cancelling);
    let job = finished(&mut other, &job.job_id, Duration::from_secs(10)).await;
    assert_eq!(job.state(), ExportJobState::Cancelled);
    let submitted = emulator.exports_created().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(emulator.exports_created().await, submitted, "nothing submitted after the cancel");
}

/// `serve --emulator --emulator-synthetic-channels N`: export jobs at Stream's real shard size,
/// with no Stream account and nothing else installed.
#[tokio::test]
async fn the_embedded_emulator_can_hold_enough_channels_to_try_a_job_of_several_shards() {
    use crate::common::process::ServiceProcess;
    use stream_export::proto::ChannelQuery;

    let service = ServiceProcess::start(&["--emulator", "--emulator-synthetic-channels", "120"], &[]);
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let cids: Vec<String> = (0..60).map(|n| format!("messaging:bulk-{n:06}")).collect();
    let filter = serde_json::json!({"cid": {"$in": cids}});
    let request = CreateExportJobRequest {
        selector: Some(Selector::ChannelQuery(ChannelQuery {
            filter: Some(
                stream_export::contract::json::to_struct(filter.as_object().cloned().unwrap_or_default()).into(),
            ),
        })),
        ..Default::default()
    };
    let job = client.create_export_job(request).await.expect("created").into_inner();
    let job = finished(&mut client, &job.job_id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let progress = job.progress.expect("progress");
    assert_eq!((progress.channels_total, progress.tasks_total, progress.tasks_completed), (60, 3, 3));
}

/// Archives in a fleet: the replica running an archived job dies in the middle of an upload;
/// another takes the job over, archives the shard again, writes the manifest, and any replica
/// verifies the archive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archived_job_whose_replica_dies_mid_upload_is_archived_by_another() {
    use crate::common::s3::{RequestKind, S3Server};
    use stream_export::proto::VerifyExportJobRequest;

    let s3 = S3Server::start().await;
    let redis = RedisServer::start(None).await;
    let emulator = emulator(100).await;
    let allow = s3.url("teams");
    let cloud = s3.env();
    let mut settings: Vec<(&str, &str)> = cloud.iter().map(|(name, value)| (name.as_str(), value.as_str())).collect();
    settings.push(("STREAM_EXPORT_ARCHIVE_ALLOW", allow.as_str()));
    let mut fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let mut survivor = client(&fleet[1]).await;
    let held = s3.hold(RequestKind::UploadPart);
    let mut request = job_of(20);
    request.archive_uri = s3.url("teams/daily");
    let job = client(&fleet[0]).await.create_export_job(request).await.expect("created").into_inner();
    s3.wait_until_held(1).await;
    fleet[0].kill();
    drop(held);

    let job = finished(&mut survivor, &job.job_id, Duration::from_secs(40)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    assert!(job.manifest_uri.ends_with(&format!("/{}/manifest.json", job.job_id)), "{job:?}");
    assert_eq!(job.progress.map(|progress| progress.tasks_archived), Some(1));
    let verified = survivor
        .verify_export_job(VerifyExportJobRequest { job_id: job.job_id.clone() })
        .await
        .expect("verify")
        .into_inner();
    assert_eq!((verified.objects_checked, verified.mismatches.len()), (1, 0));
    assert_eq!(emulator.exports_created().await, 1, "the task was exported once, and copied again");
}
