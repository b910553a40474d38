//! Export jobs (issue 33): a list or a channel query cut into tasks of 25, submitted under the
//! export budget, watched to the end; failed tasks retried; cancel; resume after a restart;
//! every bad input refused before anything goes upstream.

use std::{collections::BTreeSet, time::Duration};

use serde_json::json;
use stream_export::{
    config::StateSettings,
    contract::json::to_struct,
    emulator::EmulatorConfig,
    proto::{
        CancelExportJobRequest, ChannelList, ChannelQuery, ChannelRef, CreateExportJobRequest, ExportJob,
        ExportJobState, GetExportJobRequest, GetTaskRequest, ListExportJobTasksRequest, ListExportJobsRequest,
        ListTasksRequest, TaskState, UserList, WatchExportJobRequest, create_export_job_request::Selector,
        task_event::EventType,
    },
};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::{
    API_KEY, API_SECRET, Options, TestApp, assert_status, emulator::TestEmulator, spawn_app_with, violated_fields,
};

/// A service whose jobs submit quickly (a generous export budget) and retry at once.
async fn app_with(
    synthetic_channels: usize,
    tweak: impl FnOnce(&mut stream_export::config::Settings) + Send + 'static,
) -> TestApp {
    let mut emulator = EmulatorConfig::new(API_KEY, API_SECRET);
    emulator.synthetic_channels = synthetic_channels;
    spawn_app_with(Options {
        emulator,
        tweak: Some(Box::new(move |settings| {
            settings.jobs.export_budget_per_minute = 6_000;
            settings.jobs.retry_delay = Duration::from_millis(50);
            tweak(settings);
        })),
        ..Options::default()
    })
    .await
}

fn bulk(range: std::ops::Range<usize>) -> Vec<ChannelRef> {
    range.map(|n| ChannelRef { r#type: "messaging".into(), id: format!("bulk-{n:06}"), ..Default::default() }).collect()
}

fn channels_job(channels: Vec<ChannelRef>) -> CreateExportJobRequest {
    CreateExportJobRequest { selector: Some(Selector::Channels(ChannelList { channels })), ..Default::default() }
}

async fn create(app: &TestApp, request: CreateExportJobRequest) -> ExportJob {
    app.client.clone().create_export_job(request).await.expect("the job is created").into_inner()
}

async fn get(app: &TestApp, job_id: &str) -> ExportJob {
    let request = GetExportJobRequest { job_id: job_id.into() };
    app.client.clone().get_export_job(request).await.expect("the job is read").into_inner()
}

/// Reads the job until it ends (at most `within`).
async fn finished(app: &TestApp, job_id: &str, within: Duration) -> ExportJob {
    let until = tokio::time::Instant::now() + within;
    loop {
        let job = get(app, job_id).await;
        if job.state().is_terminal() {
            return job;
        }
        assert!(tokio::time::Instant::now() < until, "the job did not end in time: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shards(app: &TestApp, job_id: &str) -> Vec<stream_export::proto::ExportJobTask> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListExportJobTasksRequest { job_id: job_id.into(), page_size: 2, page_token };
        let page = app.client.clone().list_export_job_tasks(request).await.expect("shards").into_inner();
        all.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test]
async fn a_job_of_sixty_channels_runs_three_tasks_that_its_owner_reads_like_any_other() {
    let app = app_with(100, |_| {}).await;
    let mut channels = bulk(0..60);
    channels.push(channels[0].clone()); // A duplicate is dropped, not exported twice.
    let job = create(&app, channels_job(channels)).await;
    assert_eq!(job.state(), ExportJobState::Planning);
    assert!(!job.job_id.is_empty());

    let mut events = app
        .client
        .clone()
        .watch_export_job(WatchExportJobRequest { job_id: job.job_id.clone() })
        .await
        .expect("watch")
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = events.next().await {
        seen.push(event.expect("an event"));
    }
    assert_eq!(seen[0].r#type(), EventType::Snapshot, "a snapshot first");
    assert!(seen.windows(2).all(|pair| pair[1].sequence == pair[0].sequence + 1));
    let last = seen.last().and_then(|event| event.job.clone()).expect("a last event");
    assert_eq!(last.state(), ExportJobState::Succeeded, "the terminal state last: {last:?}");
    let progress = last.progress.expect("progress");
    assert_eq!((progress.channels_total, progress.tasks_total, progress.tasks_completed), (60, 3, 3));
    assert!(last.end_time.is_some());

    let shards = shards(&app, &job.job_id).await;
    assert_eq!(shards.iter().map(|shard| shard.channels.len()).collect::<Vec<_>>(), [25, 25, 10]);
    assert!(shards.iter().all(|shard| shard.state() == TaskState::Completed && shard.attempts == 1));
    let exported: BTreeSet<String> =
        shards.iter().flat_map(|shard| shard.channels.iter().map(|c| c.id.clone())).collect();
    assert_eq!(exported.len(), 60, "each channel in one shard");
    assert_eq!(app.emulator.exports_created().await, 3, "one upstream export per shard");

    // Each shard's task is an ordinary task of the job's owner.
    let task = app.client.clone().get_task(GetTaskRequest { task_id: shards[1].task_id.clone() }).await.expect("task");
    assert_eq!(task.into_inner().state(), TaskState::Completed);
    let listed = app.client.clone().list_tasks(ListTasksRequest::default()).await.expect("tasks").into_inner();
    let of_job: Vec<_> = listed.tasks.iter().filter(|record| record.job_id == job.job_id).collect();
    assert_eq!(of_job.len(), 3, "the registry names the job of each task");
    app.stop().await;
}

#[tokio::test]
async fn a_channel_query_job_exports_every_channel_the_filter_matches_once() {
    let app = app_with(300, |_| {}).await;
    let cids: Vec<String> = (0..70).map(|n| format!("messaging:bulk-{n:06}")).collect();
    let filter = to_struct(json!({"cid": {"$in": cids}}).as_object().cloned().unwrap_or_default());
    let request = CreateExportJobRequest {
        selector: Some(Selector::ChannelQuery(ChannelQuery { filter: Some(filter.into()) })),
        ..Default::default()
    };
    let job = finished(&app, &create(&app, request).await.job_id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let progress = job.progress.expect("progress");
    assert_eq!((progress.channels_total, progress.tasks_total), (70, 3));
    let exported: BTreeSet<String> = shards(&app, &job.job_id)
        .await
        .iter()
        .flat_map(|shard| shard.channels.iter().map(|c| format!("{}:{}", c.r#type, c.id)))
        .collect();
    assert_eq!(exported, cids.into_iter().collect::<BTreeSet<_>>());
    app.stop().await;
}

#[tokio::test]
async fn a_failed_task_is_submitted_again_and_a_shard_that_fails_every_attempt_fails_the_job() {
    let app = app_with(100, |settings| settings.jobs.task_attempts = 2).await;
    app.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"outcome": "failed"}))).await;
    let job = finished(&app, &create(&app, channels_job(bulk(0..30))).await.job_id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), ExportJobState::Failed);
    let error = job.error.expect("a failed job says why");
    assert_eq!(error.code, Code::Aborted as i32);
    assert!(error.message.contains("failed on all 2 attempts"), "{}", error.message);
    let failed =
        shards(&app, &job.job_id).await.into_iter().find(|shard| shard.attempts == 2).expect("a shard tried twice");
    assert_eq!(failed.earlier_task_ids.len(), 1, "the first task is kept in the shard's history");
    assert_ne!(failed.earlier_task_ids[0], failed.task_id);

    // A task that fails once and then succeeds: the job succeeds.
    app.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"outcome": "failed"}))).await;
    let job = create(&app, channels_job(bulk(40..50))).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    while shards(&app, &job.job_id).await[0].state() != TaskState::Failed {
        assert!(tokio::time::Instant::now() < until, "the first task never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"outcome": "completed"}))).await;
    let job = finished(&app, &job.job_id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    app.stop().await;
}

#[tokio::test]
async fn a_cancelled_job_stops_submitting_within_seconds() {
    // One submit a second: the job would take 20 s.
    let app = app_with(600, |settings| settings.jobs.export_budget_per_minute = 60).await;
    let job = create(&app, channels_job(bulk(0..500))).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let request = CancelExportJobRequest { job_id: job.job_id.clone() };
    let cancelled = app.client.clone().cancel_export_job(request).await.expect("cancel").into_inner();
    assert!(matches!(cancelled.state(), ExportJobState::Cancelling | ExportJobState::Cancelled), "{cancelled:?}");
    let job = finished(&app, &job.job_id, Duration::from_secs(5)).await;
    assert_eq!(job.state(), ExportJobState::Cancelled);
    let submitted = app.emulator.exports_created().await;
    assert!((1..20).contains(&submitted), "{submitted} submits before the cancel");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert_eq!(app.emulator.exports_created().await, submitted, "nothing submitted after the cancel");
    // Cancelling an ended job returns it as it ended.
    let again = app.client.clone().cancel_export_job(CancelExportJobRequest { job_id: job.job_id }).await;
    assert_eq!(again.expect("cancel").into_inner().state(), ExportJobState::Cancelled);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_state_directory_finishes_the_job_with_no_shard_lost_or_repeated() {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 300;
    // One emulator (its tasks) behind both services.
    let emulator = TestEmulator::spawn(config).await;
    let dir = std::env::temp_dir().join(format!("stream-export-jobs-{}", uuid::Uuid::new_v4()));
    let service = |budget: u32| {
        let state = StateSettings::Dir(dir.clone());
        Options {
            base_url_override: Some(emulator.base_url()),
            tweak: Some(Box::new(move |settings: &mut stream_export::config::Settings| {
                settings.state = state;
                settings.jobs.export_budget_per_minute = budget;
            })),
            ..Options::default()
        }
    };
    let app = spawn_app_with(service(120)).await;
    let job = create(&app, channels_job(bulk(0..250))).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let before = emulator.exports_created().await;
    assert!(before < 10, "the restart comes mid-job ({before} of 10 shards submitted)");
    app.stop().await;

    let restarted = spawn_app_with(service(6_000)).await;
    let job = finished(&restarted, &job.job_id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let shards = shards(&restarted, &job.job_id).await;
    assert_eq!(shards.len(), 10);
    assert!(shards.iter().all(|shard| shard.attempts == 1 && shard.earlier_task_ids.is_empty()), "{shards:?}");
    let distinct: BTreeSet<&str> = shards.iter().map(|shard| shard.task_id.as_str()).collect();
    assert_eq!(distinct.len(), 10, "one task per shard");
    assert_eq!(emulator.exports_created().await, 10, "no shard submitted twice across the restart");
    restarted.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn bad_jobs_are_refused_with_field_paths_before_anything_goes_upstream() {
    let app = app_with(0, |settings| settings.jobs.max_channels = 100).await;
    let cases = [
        (CreateExportJobRequest::default(), "selector"),
        (
            CreateExportJobRequest {
                selector: Some(Selector::ChannelQuery(ChannelQuery { filter: None })),
                ..Default::default()
            },
            "channel_query.filter",
        ),
        (channels_job(Vec::new()), "channels.channels"),
        (
            channels_job(vec![ChannelRef { r#type: "messaging".into(), id: "bad id".into(), ..Default::default() }]),
            "channels.channels[0].id",
        ),
        (
            CreateExportJobRequest {
                messages_since: Some(prost_types::Timestamp { seconds: 200, nanos: 0 }),
                messages_until: Some(prost_types::Timestamp { seconds: 100, nanos: 0 }),
                ..channels_job(bulk(0..1))
            },
            "messages_until",
        ),
        (
            CreateExportJobRequest {
                selector: Some(Selector::Users(UserList { user_ids: vec!["ok".into(), "..".into()] })),
                ..Default::default()
            },
            "users.user_ids[1]",
        ),
        (CreateExportJobRequest { request_id: "not-a-uuid".into(), ..channels_job(bulk(0..1)) }, "request_id"),
    ];
    for (request, field) in cases {
        let refused = app.client.clone().create_export_job(request).await.expect_err("refused");
        let details = assert_status(&refused, Code::InvalidArgument, "INVALID_REQUEST");
        assert!(violated_fields(&details).contains(&field.to_owned()), "{field}: {:?}", violated_fields(&details));
    }
    let refused = app.client.clone().create_export_job(channels_job(bulk(0..101))).await.expect_err("too long");
    let details = assert_status(&refused, Code::ResourceExhausted, "JOB_TOO_LARGE");
    assert!(details.quota_failure().is_some(), "{details:?}");
    assert_eq!(violated_fields(&details), ["channels.channels"]);
    assert_eq!(app.emulator.exports_created().await, 0);
    let unknown = GetExportJobRequest { job_id: uuid::Uuid::new_v4().to_string() };
    let refused = app.client.clone().get_export_job(unknown).await.expect_err("unknown");
    assert_status(&refused, Code::NotFound, "JOB_NOT_FOUND");
    let malformed = GetExportJobRequest { job_id: "nope".into() };
    let refused = app.client.clone().get_export_job(malformed).await.expect_err("malformed");
    assert_status(&refused, Code::InvalidArgument, "INVALID_REQUEST");
    app.stop().await;
}

#[tokio::test]
async fn a_repeated_create_with_one_request_id_returns_the_first_job_and_jobs_list_newest_first() {
    let app = app_with(100, |_| {}).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let request = CreateExportJobRequest { request_id: request_id.clone(), ..channels_job(bulk(0..5)) };
    let first = create(&app, request.clone()).await;
    let again = create(&app, request).await;
    assert_eq!(first.job_id, again.job_id);
    let other = CreateExportJobRequest { request_id, ..channels_job(bulk(5..10)) };
    let refused = app.client.clone().create_export_job(other).await.expect_err("reused");
    assert_status(&refused, Code::InvalidArgument, "REQUEST_ID_REUSED");
    let second = create(&app, channels_job(bulk(10..15))).await;
    let first_page = ListExportJobsRequest { page_size: 1, ..Default::default() };
    let page = app.client.clone().list_export_jobs(first_page).await.expect("list").into_inner();
    assert_eq!(page.jobs.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(), [second.job_id.as_str()]);
    let next = ListExportJobsRequest { page_size: 5, page_token: page.next_page_token, ..Default::default() };
    let rest = app.client.clone().list_export_jobs(next).await.expect("list").into_inner();
    assert_eq!(rest.jobs.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(), [first.job_id.as_str()]);
    assert!(rest.next_page_token.is_empty());
    finished(&app, &first.job_id, Duration::from_secs(20)).await;
    finished(&app, &second.job_id, Duration::from_secs(20)).await;
    app.stop().await;
}

#[tokio::test]
async fn a_users_job_exports_every_user_in_tasks_of_twenty_five() {
    let app = app_with(0, |_| {}).await;
    let user_ids: Vec<String> = (0..30).map(|n| format!("user-{n:02}")).collect();
    let request = CreateExportJobRequest {
        selector: Some(Selector::Users(UserList { user_ids: user_ids.clone() })),
        ..Default::default()
    };
    let job = finished(&app, &create(&app, request).await.job_id, Duration::from_secs(30)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    let progress = job.progress.expect("progress");
    assert_eq!((progress.users_total, progress.channels_total, progress.tasks_total), (30, 0, 2));
    let exported: Vec<String> = shards(&app, &job.job_id).await.into_iter().flat_map(|shard| shard.user_ids).collect();
    assert_eq!(exported, user_ids);
    app.stop().await;
}

#[tokio::test]
async fn a_filter_that_stream_refuses_fails_the_job_with_streams_message_and_submits_nothing() {
    let app = app_with(100, |_| {}).await;
    let filter = to_struct(json!({"colour": "blue"}).as_object().cloned().unwrap_or_default());
    let request = CreateExportJobRequest {
        selector: Some(Selector::ChannelQuery(ChannelQuery { filter: Some(filter.into()) })),
        ..Default::default()
    };
    let job = finished(&app, &create(&app, request).await.job_id, Duration::from_secs(10)).await;
    assert_eq!(job.state(), ExportJobState::Failed);
    let error = job.error.expect("why");
    assert_eq!(error.code, Code::InvalidArgument as i32, "{error:?}");
    assert!(error.message.contains("colour"), "Stream's message: {}", error.message);
    assert_eq!(app.emulator.exports_created().await, 0);
    app.stop().await;
}

#[tokio::test]
async fn a_task_past_the_job_task_deadline_is_submitted_once_more_keeping_the_first_in_its_history() {
    let app = app_with(100, |settings| {
        settings.jobs.task_deadline = Duration::from_millis(800);
        settings.jobs.task_attempts = 2;
    })
    .await;
    // Tasks stay `waiting` (stream-chat-js#1163).
    app.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"waiting_ms": 3_600_000}))).await;
    let job = create(&app, channels_job(bulk(0..5))).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    let shard = loop {
        let shard = shards(&app, &job.job_id).await.remove(0);
        if shard.attempts == 2 {
            break shard;
        }
        assert!(tokio::time::Instant::now() < until, "never resubmitted: {shard:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(shard.earlier_task_ids.len(), 1);
    // The second task completes: the job succeeds (no third submit: the attempts are spent).
    app.emulator.steer(&shard.task_id, json!({"status": "completed"})).await;
    let job = finished(&app, &job.job_id, Duration::from_secs(20)).await;
    assert_eq!(job.state(), ExportJobState::Succeeded, "{job:?}");
    assert_eq!(app.emulator.exports_created().await, 2);
    app.stop().await;
}

/// The service with the example policies (policy/examples/teams.cedar) and a token per team.
async fn app_with_policies(synthetic_channels: usize) -> TestApp {
    let scratch = std::env::temp_dir().join(format!("stream-export-job-policies-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&scratch).unwrap();
    let tokens = scratch.join("tokens");
    std::fs::write(&tokens, format!("analytics {ANALYTICS}\nprivacy {PRIVACY}\nplatform {PLATFORM}\n")).unwrap();
    let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/examples/teams.cedar");
    app_with(synthetic_channels, move |settings| {
        settings.access.tokens_file = Some(tokens);
        settings.access.policy_file = Some(policies);
    })
    .await
}

const ANALYTICS: &str = "analytics-token-0123456789";
const PRIVACY: &str = "privacy-token-0123456789";
const PLATFORM: &str = "platform-token-0123456789";

fn as_caller<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

#[tokio::test]
async fn every_channel_of_a_job_is_checked_for_its_owner_and_only_the_owner_reads_it() {
    use stream_export::proto::ExportFormatVersion;
    let app = app_with_policies(0).await;
    let mut client = app.client.clone();
    let livestream = |id: &str| ChannelRef { r#type: "livestream".into(), id: id.into(), ..Default::default() };
    let v2 = |channels| CreateExportJobRequest { version: ExportFormatVersion::V2 as i32, ..channels_job(channels) };

    // One refused channel refuses the whole list, before anything is stored or submitted.
    let mixed = v2(vec![
        livestream("launch"),
        ChannelRef { r#type: "messaging".into(), id: "general".into(), ..Default::default() },
    ]);
    let refused = client.create_export_job(as_caller(ANALYTICS, mixed)).await.expect_err("refused");
    let details = assert_status(&refused, Code::PermissionDenied, "NOT_AUTHORIZED");
    let resource = details.error_info().map(|info| info.metadata["resource"].clone()).unwrap_or_default();
    assert_eq!(resource, r#"Channel::"messaging:general""#);
    // A query whose channels the caller may not export: the job fails, naming the channel.
    let filter = to_struct(json!({"type": "messaging"}).as_object().cloned().unwrap_or_default());
    let query = CreateExportJobRequest {
        selector: Some(Selector::ChannelQuery(ChannelQuery { filter: Some(filter.into()) })),
        version: ExportFormatVersion::V2 as i32,
        ..Default::default()
    };
    let job = client.create_export_job(as_caller(ANALYTICS, query)).await.expect("created").into_inner();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let failed = loop {
        let read = client.get_export_job(as_caller(ANALYTICS, GetExportJobRequest { job_id: job.job_id.clone() }));
        let read = read.await.expect("the owner reads it").into_inner();
        if read.state().is_terminal() {
            break read;
        }
        assert!(tokio::time::Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(failed.state(), ExportJobState::Failed);
    assert_eq!(failed.error.expect("why").code, Code::PermissionDenied as i32);
    assert_eq!(app.emulator.exports_created().await, 0, "nothing submitted");

    // A permitted job: its owner and the platform team read it, another team does not.
    let job = client.create_export_job(as_caller(ANALYTICS, v2(vec![livestream("launch")]))).await.expect("ok");
    let job_id = job.into_inner().job_id;
    let get = |token| as_caller(token, GetExportJobRequest { job_id: job_id.clone() });
    assert!(client.get_export_job(get(PLATFORM)).await.is_ok());
    let refused = client.get_export_job(get(PRIVACY)).await.expect_err("not theirs");
    assert_status(&refused, Code::PermissionDenied, "NOT_AUTHORIZED");
    let cancel = as_caller(PRIVACY, CancelExportJobRequest { job_id: job_id.clone() });
    assert_status(
        &client.cancel_export_job(cancel).await.expect_err("not theirs"),
        Code::PermissionDenied,
        "NOT_AUTHORIZED",
    );
    let listed = client.list_export_jobs(as_caller(PRIVACY, ListExportJobsRequest::default())).await.expect("list");
    assert!(listed.into_inner().jobs.is_empty(), "another team lists none of analytics' jobs");
    let listed = client.list_export_jobs(as_caller(ANALYTICS, ListExportJobsRequest::default())).await.expect("list");
    assert_eq!(listed.into_inner().jobs.len(), 2);
    app.stop().await;
}

#[tokio::test]
async fn a_quiet_job_is_watched_with_heartbeats_and_an_unknown_one_is_not_found() {
    let app = app_with(100, |settings| settings.watch.heartbeat_interval = Duration::from_millis(300)).await;
    app.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"waiting_ms": 3_600_000}))).await;
    let job = create(&app, channels_job(bulk(0..5))).await;
    let request = WatchExportJobRequest { job_id: job.job_id.clone() };
    let mut events = app.client.clone().watch_export_job(request).await.expect("watch").into_inner();
    let mut kinds = Vec::new();
    while kinds.iter().filter(|kind| **kind == EventType::Heartbeat).count() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next()).await.expect("an event in time");
        let event = event.expect("the stream goes on").expect("an event");
        kinds.push(event.r#type());
        assert_eq!(event.job.map(|job| job.job_id), Some(job.job_id.clone()), "every event carries the job");
    }
    assert_eq!(kinds[0], EventType::Snapshot);
    let unknown = WatchExportJobRequest { job_id: uuid::Uuid::new_v4().to_string() };
    let refused = app.client.clone().watch_export_job(unknown).await.expect_err("unknown");
    assert_status(&refused, Code::NotFound, "JOB_NOT_FOUND");
    app.stop().await;
}
