//! Fleet mode (issue 12, idempotent submits): several `serve` processes sharing one real
//! `redis-server` keep the promise one replica keeps: a `request_id` makes one export, whichever
//! replicas its repeats reach.

use std::time::{Duration, Instant};

use serde_json::json;
use stream_export::{
    emulator::EmulatorConfig,
    proto::{ChannelRef, ExportChannelsRequest, GetTaskRequest, export_service_client::ExportServiceClient},
};
use tonic::{Code, transport::Channel};

use crate::common::{API_KEY, API_SECRET, TestEmulator, assert_status, process::ServiceProcess, redis::RedisServer};

/// Starts `count` replicas against `emulator`, sharing the Redis at `redis_url`.
async fn replicas(count: usize, emulator: &TestEmulator, redis_url: &str) -> Vec<ServiceProcess> {
    replicas_with(count, emulator, redis_url, &[]).await
}

/// [`replicas`] with more environment (settings) for each.
pub async fn replicas_with(
    count: usize,
    emulator: &TestEmulator,
    redis_url: &str,
    settings: &[(&str, &str)],
) -> Vec<ServiceProcess> {
    let base_url = emulator.base_url();
    let mut env = vec![
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
        ("STREAM_EXPORT_REDIS_URL", redis_url),
        ("RUST_LOG", "info"),
    ];
    env.extend_from_slice(settings);
    let started: Vec<ServiceProcess> = (0..count).map(|_| ServiceProcess::start(&[], &env)).collect();
    for replica in &started {
        replica.wait_ready(true).await;
    }
    started
}

pub async fn client(replica: &ServiceProcess) -> ExportServiceClient<Channel> {
    ExportServiceClient::new(replica.channel().await)
}

fn export(channel_id: &str, request_id: &str) -> ExportChannelsRequest {
    ExportChannelsRequest {
        channels: vec![ChannelRef { r#type: "messaging".into(), id: channel_id.into(), ..Default::default() }],
        request_id: request_id.into(),
        ..Default::default()
    }
}

async fn submit(replica: &ServiceProcess, request: ExportChannelsRequest) -> Result<String, tonic::Status> {
    client(replica).await.export_channels(request).await.map(|response| response.into_inner().task_id)
}

/// [`submit`] to the replica listening on `port` (from a task of its own).
async fn submit_to(port: u16, request: ExportChannelsRequest) -> Result<String, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("a URL")
        .connect()
        .await
        .expect("connects");
    ExportServiceClient::new(channel).export_channels(request).await.map(|response| response.into_inner().task_id)
}

/// Submits until it succeeds (Redis coming back), for at most 5 s, honouring no RetryInfo.
async fn submit_until_ok(replica: &ServiceProcess, request: ExportChannelsRequest) -> String {
    let started = Instant::now();
    loop {
        match submit(replica, request.clone()).await {
            Ok(task_id) => return task_id,
            Err(status) if started.elapsed() < Duration::from_secs(5) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("fleet mode did not come back without a restart: {status:?}"),
        }
    }
}

#[tokio::test]
async fn a_request_id_makes_one_export_whichever_replicas_its_repeats_reach() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let concurrent = uuid::Uuid::new_v4().to_string();
    let one_after_another = uuid::Uuid::new_v4().to_string();
    let redis = RedisServer::start(None).await;
    let fleet = replicas(3, &emulator, &redis.url()).await;

    // One after another, on three replicas.
    let mut task_ids = Vec::new();
    for replica in &fleet {
        task_ids.push(submit(replica, export("general", &one_after_another)).await.expect("the submit succeeds"));
    }
    assert!(task_ids.iter().all(|id| *id == task_ids[0]), "one task for one request_id: {task_ids:?}");
    assert_eq!(emulator.exports_created().await, 1, "one upstream export");

    // At the same time, on three replicas, while Stream is slow to answer.
    emulator.inject("export_channels", 1, json!({"kind": "delay", "ms": 800})).await;
    let concurrent =
        futures::future::join_all(fleet.iter().map(|replica| submit(replica, export("general", &concurrent)))).await;
    let concurrent: Vec<String> =
        concurrent.into_iter().map(|outcome| outcome.expect("every repeat succeeds")).collect();
    assert!(concurrent.iter().all(|id| *id == concurrent[0]), "{concurrent:?}");
    assert_ne!(concurrent[0], task_ids[0]);
    assert_eq!(emulator.exports_created().await, 2, "one more upstream export, not three");

    // The same id with another request, on another replica.
    let reused = submit(&fleet[2], export("random", &one_after_another)).await.expect_err("refused");
    assert_status(&reused, Code::InvalidArgument, "REQUEST_ID_REUSED");
    assert_eq!(emulator.exports_created().await, 2);
}

#[tokio::test]
async fn a_failed_submit_releases_its_claim_and_a_dead_holder_blocks_retries_only_for_a_lease() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let fails_first = uuid::Uuid::new_v4().to_string();
    let holder_dies = uuid::Uuid::new_v4().to_string();
    let redis = RedisServer::start(None).await;
    // A claim lasts the upstream timeout and a margin (3 s): 5 s here.
    let mut fleet = replicas_with(2, &emulator, &redis.url(), &[("STREAM_EXPORT_UPSTREAM_TIMEOUT", "2s")]).await;

    // Stream fails the first submit: the retry on the other replica runs it again and succeeds.
    emulator.inject("export_channels", 1, json!({"kind": "status", "status": 500, "code": -1})).await;
    let failed = submit(&fleet[0], export("general", &fails_first)).await.expect_err("Stream failed");
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    let task_id = submit(&fleet[1], export("general", &fails_first)).await.expect("the retry is not blocked");
    assert_eq!(emulator.exports_created().await, 1);
    let repeat = submit(&fleet[0], export("general", &fails_first)).await.expect("a repeat where it failed");
    assert_eq!(repeat, task_id, "the replica whose submit failed finds the retry's task");
    assert_eq!(emulator.exports_created().await, 1);

    // The replica holding a submit dies mid-request: a retry elsewhere waits at most about a
    // lease (5 s), not the idempotency TTL.
    emulator.inject("export_channels", 1, json!({"kind": "delay", "ms": 30_000})).await;
    let holder = fleet[0].port;
    let request = export("general", &holder_dies);
    let abandoned = tokio::spawn(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{holder}"))
            .expect("a URL")
            .connect()
            .await
            .expect("connects");
        ExportServiceClient::new(channel).export_channels(request).await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    fleet[0].kill();
    let _ = abandoned.await;
    let started = Instant::now();
    let task_id = submit(&fleet[1], export("general", &holder_dies)).await.expect("the retry runs the submit");
    let waited = started.elapsed();
    assert!(!task_id.is_empty());
    assert!(waited < Duration::from_secs(8), "the retry waited {waited:?}, more than a lease and some");
    // ... but it did wait for the lease: the dead replica's claim was seen (it might still have
    // been talking to Stream), so no second export started at once.
    assert!(waited > Duration::from_secs(2), "the retry did not honour the holder's claim ({waited:?})");
}

/// Issue 32: a Redis stall longer than the old 5 s claim lease, while Stream takes 8 s to answer
/// the submit; retries right after the stall, on the replica running the submit and on
/// another, find it instead of starting a second export.
#[tokio::test]
async fn a_redis_stall_longer_than_the_claim_lease_starts_no_second_export() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let redis = RedisServer::start(None).await;
    let fleet = replicas(2, &emulator, &redis.url()).await;
    emulator.inject("export_channels", 1, json!({"kind": "delay", "ms": 8_000})).await;
    let holder = fleet[0].port;
    let request = export("general", &request_id);
    let first = tokio::spawn(async move { submit_to(holder, request).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.pause();
    tokio::time::sleep(Duration::from_secs(6)).await;
    redis.resume();
    let (here, elsewhere) = tokio::join!(
        submit(&fleet[0], export("general", &request_id)),
        submit(&fleet[1], export("general", &request_id))
    );
    let first = first.await.expect("the first submit ran").expect("the first submit succeeds");
    assert_eq!(here.expect("the retry on the same replica succeeds"), first, "the retry joins the running submit");
    assert_eq!(elsewhere.expect("the retry on another replica succeeds"), first, "one task for one request_id");
    assert_eq!(emulator.exports_created().await, 1, "one upstream export");
    for replica in &fleet {
        assert_eq!(submit(replica, export("general", &request_id)).await.expect("a repeat"), first);
    }
}

/// Issue 32: Redis loses a running submit's claim (restarted without persistence). A repeat
/// on the replica running the submit joins it; a repeat on another replica cannot know of it
/// and starts a second export, but the first `done` recorded stays: every caller, the late
/// finisher's included, gets that one task id, and the late finisher logs the conflict.
#[tokio::test]
async fn a_lost_claim_still_gives_one_request_id_one_task_id() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut redis = RedisServer::start(None).await;
    let fleet = replicas(2, &emulator, &redis.url()).await;
    emulator.inject("export_channels", 1, json!({"kind": "delay", "ms": 3_000})).await;
    let holder = fleet[0].port;
    let request = export("general", &request_id);
    let first = tokio::spawn(async move { submit_to(holder, request).await });
    tokio::time::sleep(Duration::from_millis(500)).await;

    redis.restart().await;
    let here = {
        let request = export("general", &request_id);
        tokio::spawn(async move { submit_to(holder, request).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let elsewhere = submit_until_ok(&fleet[1], export("general", &request_id)).await;
    let first = first.await.expect("the first submit ran").expect("the first submit succeeds");
    let here = here.await.expect("the repeat ran").expect("the repeat succeeds");
    assert_eq!(emulator.exports_created().await, 2, "the repeat elsewhere could not know of the running submit");
    assert_eq!([&first, &here], [&elsewhere, &elsewhere], "one task id for one request_id, the first recorded");
    for replica in &fleet {
        assert_eq!(submit(replica, export("general", &request_id)).await.expect("a repeat"), elsewhere);
    }
    let log = fleet[0].log();
    assert!(log.contains("a second export was started for one request_id"), "the conflict is reported:\n{log}");
}

#[tokio::test]
async fn without_redis_a_deduplicated_submit_is_refused_before_stream_and_the_rest_keeps_working() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let after_the_outage = uuid::Uuid::new_v4().to_string();
    let before_the_outage = uuid::Uuid::new_v4().to_string();
    let during_the_outage = uuid::Uuid::new_v4().to_string();
    const PASSWORD: &str = "fleet-redis-password-0123456789";
    let mut redis = RedisServer::start(Some(PASSWORD)).await;
    let fleet = replicas(2, &emulator, &redis.url()).await;
    let task_id = submit(&fleet[0], export("general", &before_the_outage)).await.expect("fleet mode works");

    redis.stop();
    let refused = submit(&fleet[1], export("general", &during_the_outage)).await.expect_err("refused");
    let details = assert_status(&refused, Code::Unavailable, "IDEMPOTENCY_STORE_UNAVAILABLE");
    assert!(details.retry_info().is_some(), "the client is told when to retry");
    assert_eq!(emulator.exports_created().await, 1, "nothing was sent upstream");
    // What does not need Redis keeps working.
    submit(&fleet[1], export("general", "")).await.expect("a submit without request_id");
    let mut get = client(&fleet[0]).await;
    get.get_task(GetTaskRequest { task_id: task_id.clone() }).await.expect("GetTask");
    // A replica started while Redis is down starts anyway.
    let late = replicas(1, &emulator, &redis.url()).await;

    redis.restart().await;
    let recovered = submit_until_ok(&fleet[1], export("general", &after_the_outage)).await;
    // The late replica tried Redis a moment ago: it fails fast for up to a second, then joins.
    let repeat = submit_until_ok(&late[0], export("general", &after_the_outage)).await;
    assert_eq!(repeat, recovered, "the repeat on another replica finds the first submit");

    for replica in fleet.iter().chain(&late) {
        let log = replica.log();
        assert!(!log.contains(PASSWORD), "the Redis password leaked into the log:\n{log}");
        let outage_lines = log.matches("the fleet store (Redis) is unavailable").count();
        assert!(outage_lines <= 1, "one line per outage, not per call ({outage_lines}):\n{log}");
    }
}

#[tokio::test]
async fn every_replica_lists_the_tasks_submitted_on_any_replica() {
    use stream_export::proto::{ListTasksRequest, WatchTaskRequest};
    use tokio_stream::StreamExt;

    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    let fleet = replicas(2, &emulator, &redis.url()).await;
    let first = submit(&fleet[0], export("general", "")).await.expect("a submit");
    let second = submit(&fleet[1], export("general", "")).await.expect("a submit");
    // Watched to the end on one replica: the registry records what it observed.
    let mut watch =
        client(&fleet[1]).await.watch_task(WatchTaskRequest { task_id: first.clone() }).await.unwrap().into_inner();
    while let Some(event) = watch.next().await {
        event.expect("the watch ends OK");
    }

    for replica in &fleet {
        let page =
            client(replica).await.list_tasks(ListTasksRequest { page_size: 10, page_token: String::new() }).await;
        let tasks = page.expect("ListTasks").into_inner().tasks;
        let ids: Vec<&str> = tasks.iter().map(|task| task.task_id.as_str()).collect();
        assert_eq!(ids, [second.as_str(), first.as_str()], "newest first, from both replicas");
        assert_eq!(tasks[0].rpc, "ExportChannels");
    }
    // The final state observed by the watch is recorded (written in the background).
    let mut last = None;
    for _ in 0..30 {
        let page =
            client(&fleet[0]).await.list_tasks(ListTasksRequest { page_size: 10, page_token: String::new() }).await;
        last = page.expect("ListTasks").into_inner().tasks.into_iter().find(|task| task.task_id == first);
        if last
            .as_ref()
            .and_then(|task| task.last_observed.as_ref())
            .is_some_and(|task| task.state() == stream_export::proto::TaskState::Completed)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the registry did not record the completed state: {last:?}");
}

/// Issue 32: replicas note what they observe of one task at once (in any order): the registry
/// keeps the newest observation, never an older state over a newer one, and pages show it.
/// Two replicas whose clocks disagree (one an hour ahead) record tasks one after the other:
/// every replica lists them in the order Redis recorded them, with Redis's create times, and
/// pages through them without skipping or repeating one.
#[tokio::test]
async fn the_registry_orders_tasks_by_redis_clock_whatever_the_replicas_clocks_say() {
    use stream_export::{
        fleet::{Redis, RedisSettings, registry::RedisRegistry},
        proto::TaskRecord,
        store::{TaskRegistry, registry::Cursor},
    };

    let server = RedisServer::start(None).await;
    let settings = RedisSettings { url: server.url().into(), key_prefix: String::new() };
    let registries: Vec<RedisRegistry> =
        (0..2).map(|_| RedisRegistry::new(Redis::new(&settings, API_KEY).expect("a valid URL"), 100)).collect();
    let record = |task_id: &str, at: chrono::DateTime<chrono::Utc>| TaskRecord {
        task_id: task_id.into(),
        owner: "analytics".into(),
        rpc: "ExportChannels".into(),
        create_time: Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }),
        ..TaskRecord::default()
    };
    let now = chrono::Utc::now();
    let ahead = now + chrono::Duration::hours(1);
    // The replica an hour ahead records first, then the other, alternately.
    for n in 0..6 {
        let (registry, clock) = if n % 2 == 0 { (&registries[0], ahead) } else { (&registries[1], now) };
        registry.record(record(&format!("task-{n}"), clock)).await.expect("recorded");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    for registry in &registries {
        let mut listed = Vec::new();
        let mut after: Option<Cursor> = None;
        loop {
            let page = registry.page(after.as_ref(), 2).await.expect("a page");
            let Some(last) = page.last() else { break };
            after = Some(Cursor::of(last));
            listed.extend(page);
        }
        let ids: Vec<&str> = listed.iter().map(|record| record.task_id.as_str()).collect();
        assert_eq!(
            ids,
            ["task-5", "task-4", "task-3", "task-2", "task-1", "task-0"],
            "newest first, as Redis recorded"
        );
        for record in &listed {
            let created = record.create_time.expect("a create time");
            let drift = (created.seconds - now.timestamp()).abs();
            assert!(
                drift <= 5,
                "{} has the create time of a replica's clock, not Redis's: {created:?}",
                record.task_id
            );
        }
    }
}

#[tokio::test]
async fn the_registry_keeps_a_tasks_newest_observation_whichever_replica_notes_it_last() {
    use stream_export::{
        fleet::{Redis, RedisSettings, registry::RedisRegistry},
        proto::{Task, TaskRecord, TaskState},
        store::TaskRegistry,
    };

    let server = RedisServer::start(None).await;
    let settings = RedisSettings { url: server.url().into(), key_prefix: String::new() };
    let registries: Vec<RedisRegistry> =
        (0..2).map(|_| RedisRegistry::new(Redis::new(&settings, API_KEY).expect("a valid URL"), 100)).collect();
    let created = chrono::Utc::now();
    let record = TaskRecord {
        task_id: "task-1".into(),
        owner: "analytics".into(),
        rpc: "ExportChannels".into(),
        create_time: Some(prost_types::Timestamp { seconds: created.timestamp(), nanos: 0 }),
        ..TaskRecord::default()
    };
    registries[0].record(record).await.expect("recorded");
    let task = |state: TaskState| {
        let mut task = Task { task_id: "task-1".into(), ..Task::default() };
        task.set_state(state);
        task
    };
    let (earlier, later) = (created + chrono::Duration::seconds(1), created + chrono::Duration::seconds(2));
    // The replica that saw the task complete notes it first; one a poll behind notes it last.
    registries[0].observed(&task(TaskState::Completed), later).await.expect("noted");
    registries[1].observed(&task(TaskState::Running), earlier).await.expect("noted");

    for registry in &registries {
        let read = registry.get("task-1").await.expect("read").expect("recorded");
        assert_eq!(read.last_observed.map(|task| task.state()), Some(TaskState::Completed), "the newest state");
        assert_eq!(read.owner, "analytics", "the record itself is kept");
        let page = registry.page(None, 10).await.expect("a page");
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].last_observed.as_ref().map(Task::state), Some(TaskState::Completed));
    }
    // A task nobody recorded gets no record from an observation.
    registries[1].observed(&Task { task_id: "unknown".into(), ..Task::default() }, later).await.expect("noted");
    assert!(registries[0].get("unknown").await.expect("read").is_none());
}

/// Issue 31: with Redis persistence on (`appendonly yes`), a Redis `kill -9` and restart forgets
/// nothing the fleet promised: under owner-based policies the owner still reads and lists its
/// tasks on any replica (and another caller still may not), and a repeated `request_id` gets
/// the first task without a second export. (With `appendonly no` the listing comes back empty.)
#[tokio::test]
async fn with_appendonly_a_redis_kill_9_forgets_no_owner_task_or_request_id() {
    use stream_export::proto::ListTasksRequest;
    use tonic::Request;

    const ANALYTICS: &str = "analytics-token-0123456789abcdef";
    const OTHER: &str = "other-team-token-0123456789abcdef";
    const OWNERS_READ_THEIR_TASKS: &str = r#"
permit (principal, action == Action::"ExportChannels", resource);
permit (principal, action == Action::"GetTask", resource)
when { resource has owner && resource.owner == principal };
permit (principal, action == Action::"ListTasks", resource);
"#;
    fn as_caller<T>(token: &str, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().expect("a header value"));
        request
    }

    let files = crate::common::process::scratch_state_dir();
    std::fs::create_dir_all(files.join("redis")).expect("a scratch directory");
    std::fs::write(files.join("tokens"), format!("analytics {ANALYTICS}\nother {OTHER}\n")).expect("tokens");
    std::fs::write(files.join("policies.cedar"), OWNERS_READ_THEIR_TASKS).expect("policies");
    let redis_dir = files.join("redis").display().to_string();
    let mut redis =
        RedisServer::start_with(None, &["--appendonly", "yes", "--appendfsync", "always", "--dir", &redis_dir]).await;
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let (tokens, policies) =
        (files.join("tokens").display().to_string(), files.join("policies.cedar").display().to_string());
    let settings =
        [("STREAM_EXPORT_AUTH_TOKENS_FILE", tokens.as_str()), ("STREAM_EXPORT_POLICY_FILE", policies.as_str())];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;

    let request_id = uuid::Uuid::new_v4().to_string();
    let mut first = client(&fleet[0]).await;
    let task_id = first
        .export_channels(as_caller(ANALYTICS, export("general", &request_id)))
        .await
        .expect("a submit")
        .into_inner()
        .task_id;
    let other_task = first
        .export_channels(as_caller(ANALYTICS, export("general", "")))
        .await
        .expect("a submit")
        .into_inner()
        .task_id;

    redis.restart().await;

    // The other replica, once it has its connection back, knows the owner of both tasks.
    let mut second = client(&fleet[1]).await;
    let started = Instant::now();
    let listed = loop {
        match second
            .list_tasks(as_caller(ANALYTICS, ListTasksRequest { page_size: 10, page_token: String::new() }))
            .await
        {
            Ok(page) => break page.into_inner().tasks,
            Err(status) if status.code() == Code::Unavailable && started.elapsed() < Duration::from_secs(5) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("ListTasks after the Redis restart: {status:?}"),
        }
    };
    let ids: Vec<&str> = listed.iter().map(|task| task.task_id.as_str()).collect();
    assert_eq!(ids, [other_task.as_str(), task_id.as_str()], "the registry survived the restart");
    second
        .get_task(as_caller(ANALYTICS, GetTaskRequest { task_id: task_id.clone() }))
        .await
        .expect("the owner reads it");
    let refused = second
        .get_task(as_caller(OTHER, GetTaskRequest { task_id: task_id.clone() }))
        .await
        .expect_err("another caller may not");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let repeat = second
        .export_channels(as_caller(ANALYTICS, export("general", &request_id)))
        .await
        .expect("a repeat")
        .into_inner()
        .task_id;
    assert_eq!(repeat, task_id, "the request_id's task survived the restart");
    assert_eq!(emulator.exports_created().await, 2, "the repeat was not sent to Stream");
    let _ = std::fs::remove_dir_all(&files);
}

/// Issue 31: on one Redis, a submit's registry record is written by the script that writes its
/// `done` (no moment when the caller holds a task id whose owner the registry does not know):
/// two script calls per submit (claim, finish), not three.
#[tokio::test]
async fn a_submits_registry_record_goes_with_its_done_in_one_script() {
    use stream_export::proto::ListTasksRequest;

    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    let fleet = replicas(1, &emulator, &redis.url()).await;
    let request_id = || uuid::Uuid::new_v4().to_string();
    submit(&fleet[0], export("general", &request_id())).await.expect("a submit");
    let before = redis.script_calls().await;
    let mut submitted = Vec::new();
    for _ in 0..20 {
        submitted.push(submit(&fleet[0], export("general", &request_id())).await.expect("a submit"));
    }
    let calls = redis.script_calls().await - before;
    // 40 for the submits; the replica's own heartbeats and job scans add a few.
    assert!((40..52).contains(&calls), "{calls} script calls for 20 submits");
    let page = client(&fleet[0]).await.list_tasks(ListTasksRequest { page_size: 50, page_token: String::new() }).await;
    let listed: Vec<String> =
        page.expect("ListTasks").into_inner().tasks.into_iter().map(|task| task.task_id).collect();
    for task_id in &submitted {
        assert!(listed.contains(task_id), "{task_id} is in the registry");
    }
}
