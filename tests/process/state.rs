//! The state directory (issue 31): a single process keeps its task registry and idempotency
//! records on disk, so that after `kill -9` and a restart on the same directory an owner still
//! reads, watches and lists its tasks, and a repeated `request_id` is not sent to Stream again.
//! One process per directory; a directory or file that cannot be used stops start-up with
//! exit code 2.

use std::{path::Path, time::Duration};

use serde_json::json;
use stream_export::{
    emulator::EmulatorConfig,
    proto::{
        ChannelRef, ExportChannelsRequest, ExportFormatVersion, GetTaskRequest, ListTasksRequest, WatchTaskRequest,
        export_service_client::ExportServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::{Code, Request, transport::Channel};

use crate::common::{
    API_KEY, API_SECRET, TestEmulator, assert_status,
    process::{ServiceProcess, scratch_state_dir},
};

const ANALYTICS_TOKEN: &str = "analytics-token-0123456789abcdef";
const OTHER_TOKEN: &str = "other-team-token-0123456789abcdef";

/// Owner-based policies, as in policy/examples/teams.cedar.
const OWNERS_READ_THEIR_TASKS: &str = r#"
permit (principal, action == Action::"ExportChannels", resource);
permit (principal, action in [Action::"GetTask", Action::"WatchTask", Action::"ReadExport"], resource)
when { resource has owner && resource.owner == principal };
permit (principal, action == Action::"ListTasks", resource);
"#;

/// A service with tokens, owner-based policies and its state in `state`.
fn start(emulator: &TestEmulator, files: &Path, state: &Path) -> ServiceProcess {
    std::fs::write(files.join("tokens"), format!("analytics {ANALYTICS_TOKEN}\nother {OTHER_TOKEN}\n")).unwrap();
    std::fs::write(files.join("policies.cedar"), OWNERS_READ_THEIR_TASKS).unwrap();
    let (tokens, policies) = (files.join("tokens"), files.join("policies.cedar"));
    let base_url = emulator.base_url();
    let env = [
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
        ("RUST_LOG", "info"),
        ("STREAM_EXPORT_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("STREAM_EXPORT_POLICY_FILE", policies.to_str().unwrap()),
        ("STREAM_EXPORT_STATE_DIR", state.to_str().unwrap()),
    ];
    ServiceProcess::start(&[], &env)
}

fn as_caller<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn export(request_id: &str) -> ExportChannelsRequest {
    ExportChannelsRequest {
        channels: vec![ChannelRef { r#type: "messaging".into(), id: "general".into(), ..Default::default() }],
        request_id: request_id.into(),
        version: ExportFormatVersion::V2.into(),
        ..Default::default()
    }
}

async fn client(service: &ServiceProcess) -> ExportServiceClient<Channel> {
    ExportServiceClient::new(service.channel().await)
}

async fn listed(service: &ServiceProcess, token: &str) -> Vec<String> {
    let request = as_caller(token, ListTasksRequest { page_size: 100, page_token: String::new() });
    let page = client(service).await.list_tasks(request).await.expect("ListTasks").into_inner();
    page.tasks.into_iter().map(|record| record.task_id).collect()
}

/// A directory for one test's files.
fn scratch() -> std::path::PathBuf {
    let dir = scratch_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn after_kill_9_the_owner_still_reads_watches_and_lists_its_task_and_a_request_id_is_not_sent_again() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let (files, state) = (scratch(), scratch_state_dir());
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut service = start(&emulator, &files, &state);
    service.wait_ready(true).await;
    let mut api = client(&service).await;
    let task_id = api
        .export_channels(as_caller(ANALYTICS_TOKEN, export(&request_id)))
        .await
        .expect("submit")
        .into_inner()
        .task_id;
    let second =
        api.export_channels(as_caller(ANALYTICS_TOKEN, export(""))).await.expect("submit").into_inner().task_id;
    emulator.wait_done(&task_id).await;
    let before = listed(&service, ANALYTICS_TOKEN).await;
    assert_eq!(before, [second.clone(), task_id.clone()]);

    service.kill();
    let service = start(&emulator, &files, &state);
    service.wait_ready(true).await;
    let mut api = client(&service).await;

    let read = api.get_task(as_caller(ANALYTICS_TOKEN, GetTaskRequest { task_id: task_id.clone() })).await;
    assert_eq!(read.expect("the owner reads its task after the restart").into_inner().task_id, task_id);
    let mut watch = api
        .watch_task(as_caller(ANALYTICS_TOKEN, WatchTaskRequest { task_id: task_id.clone() }))
        .await
        .expect("the owner watches its task after the restart")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(10), watch.next()).await.expect("an event").unwrap().unwrap();
    assert_eq!(first.task.expect("a snapshot").task_id, task_id);
    let refused = api.get_task(as_caller(OTHER_TOKEN, GetTaskRequest { task_id: task_id.clone() })).await;
    assert_status(&refused.expect_err("not its task"), Code::PermissionDenied, "NOT_AUTHORIZED");
    assert_eq!(listed(&service, ANALYTICS_TOKEN).await, before, "ListTasks shows what it showed before");
    assert!(listed(&service, OTHER_TOKEN).await.is_empty());

    emulator.reset_counters().await;
    let repeat = api.export_channels(as_caller(ANALYTICS_TOKEN, export(&request_id))).await.expect("repeat");
    assert_eq!(repeat.into_inner().task_id, task_id, "the first submit's task");
    assert_eq!(emulator.requests("export_channels").await, 0, "Stream was not called again");
}

#[tokio::test]
async fn a_submit_cut_by_kill_9_is_not_taken_for_done_after_the_restart() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let (files, state) = (scratch(), scratch_state_dir());
    let request_id = uuid::Uuid::new_v4().to_string();
    let mut service = start(&emulator, &files, &state);
    service.wait_ready(true).await;

    // Stream is slow to answer; the process dies while the POST is out.
    emulator.inject("export_channels", 1, json!({"kind": "delay", "ms": 30_000})).await;
    let mut api = client(&service).await;
    let cut_request = export(&request_id);
    let cut = tokio::spawn(async move { api.export_channels(as_caller(ANALYTICS_TOKEN, cut_request)).await });
    let started = std::time::Instant::now();
    while emulator.requests("export_channels").await == 0 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    service.kill();
    assert!(cut.await.unwrap().is_err(), "the caller saw the process die");

    let service = start(&emulator, &files, &state);
    service.wait_ready(true).await;
    let mut api = client(&service).await;
    let retried = api.export_channels(as_caller(ANALYTICS_TOKEN, export(&request_id))).await;
    let task_id = retried.expect("the retry gets a task, not an empty or stale answer").into_inner().task_id;
    assert_eq!(emulator.requests("export_channels").await, 2, "the retry ran the submit again");
    let read = api.get_task(as_caller(ANALYTICS_TOKEN, GetTaskRequest { task_id: task_id.clone() })).await;
    read.expect("the owner reads the retried task");
    assert_eq!(listed(&service, ANALYTICS_TOKEN).await, std::slice::from_ref(&task_id));
    let log = service.log();
    assert!(log.contains("outcome is unknown"), "the operator is told a submit was cut:\n{log}");

    // From now on it is done: another repeat is not sent.
    let repeat = api.export_channels(as_caller(ANALYTICS_TOKEN, export(&request_id))).await.expect("repeat");
    assert_eq!(repeat.into_inner().task_id, task_id);
    assert_eq!(emulator.requests("export_channels").await, 2);
}

#[tokio::test]
async fn a_second_process_on_one_state_directory_exits_2_naming_it_and_the_holder() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let (files, state) = (scratch(), scratch_state_dir());
    let first = start(&emulator, &files, &state);
    first.wait_ready(true).await;
    let mut second = start(&emulator, &files, &state);
    let status = second.wait_exit(Duration::from_secs(20)).await.expect("the second process exits");
    assert_eq!(status.code(), Some(2));
    let log = second.log();
    assert!(log.contains(&state.display().to_string()), "names the directory: {log}");
    assert!(log.contains(&format!("pid {}", first.pid())), "names the holder: {log}");
    assert!(!log.contains("panicked"), "{log}");
    // The first keeps serving.
    let mut api = client(&first).await;
    api.export_channels(as_caller(ANALYTICS_TOKEN, export(""))).await.expect("the first still serves");
}

#[tokio::test]
async fn a_state_directory_that_cannot_be_made_or_a_foreign_file_exits_2_naming_it() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let files = scratch();
    // A regular file where the directory should be (root may write anywhere, so permissions
    // would not stop this test's user).
    let blocked = files.join("a-file");
    std::fs::write(&blocked, "not a directory").unwrap();
    let mut service = start(&emulator, &files, &blocked.join("state"));
    let status = service.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert_eq!(status.code(), Some(2), "{}", service.log());
    let log = service.log();
    assert!(log.contains(&blocked.join("state").display().to_string()) && log.contains("cannot create"), "{log}");

    let foreign = scratch();
    std::fs::write(foreign.join("state.redb"), vec![0x5a; 8192]).unwrap();
    let mut service = start(&emulator, &files, &foreign);
    let status = service.wait_exit(Duration::from_secs(20)).await.expect("exits");
    assert_eq!(status.code(), Some(2), "{}", service.log());
    let log = service.log();
    assert!(log.contains(&foreign.join("state.redb").display().to_string()), "names the file: {log}");
    assert!(!log.contains("panicked"), "{log}");
}
