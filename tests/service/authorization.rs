//! Authorization policies (issue 13): with the example policy set (policy/examples/teams.cedar)
//! and three callers identified by tokens, each caller may export and read what the policies
//! permit and nothing else; refusals come before any upstream request; `ListTasks` lists what
//! each caller may read, page by page.

use crate::common;

use std::path::Path;

use common::{Options, TestApp, assert_status, spawn_app_with};
use stream_export::{
    emulator::data::KNOWN_USER,
    proto::{
        ChannelList, ChannelRef, CreateExportJobRequest, ExportChannelsRequest, ExportFormatVersion, ExportUserRequest,
        ExportUsersRequest, GetTaskRequest, ListTasksRequest, ReadExportRequest, TaskRecord, WatchTaskRequest,
        create_export_job_request::Selector, task_record,
    },
};
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status};

const ANALYTICS: &str = "analytics-token-0123456789";
const PRIVACY: &str = "privacy-token-0123456789";
const PLATFORM: &str = "platform-token-0123456789";

/// The service with the example policies and a token per team.
async fn app() -> TestApp {
    app_with_policies("").await
}

/// The service with the example policies, `extra` policies after them, and a token per team.
async fn app_with_policies(extra: &str) -> TestApp {
    let tokens = std::env::temp_dir().join(format!("stream-export-tokens-{}-{}", std::process::id(), rand_suffix()));
    std::fs::write(&tokens, format!("analytics {ANALYTICS}\nprivacy {PRIVACY}\nplatform {PLATFORM}\n")).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("policy/examples/teams.cedar");
    let policy_file =
        std::env::temp_dir().join(format!("stream-export-policies-{}-{}", std::process::id(), rand_suffix()));
    std::fs::write(&policy_file, std::fs::read_to_string(examples).unwrap() + extra).unwrap();
    let (tokens_file, policies) = (tokens.clone(), policy_file.clone());
    let app = spawn_app_with(Options {
        tweak: Some(Box::new(move |settings| {
            settings.access.tokens_file = Some(tokens_file);
            settings.access.policy_file = Some(policies);
            // The example policies give each team its own prefix of this bucket.
            settings.archive.allow = vec!["s3://exports-bucket/teams".into()];
        })),
        ..Options::default()
    })
    .await;
    // Read at start-up: the service needs them no more.
    let _ = std::fs::remove_file(&tokens);
    let _ = std::fs::remove_file(&policy_file);
    app
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

fn as_caller<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn channels(cids: &[&str], version: ExportFormatVersion) -> ExportChannelsRequest {
    let channels = cids
        .iter()
        .map(|cid| {
            let (kind, id) = cid.split_once(':').unwrap();
            ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }
        })
        .collect();
    ExportChannelsRequest { channels, version: version as i32, ..Default::default() }
}

async fn export_channels(app: &TestApp, token: &str, request: ExportChannelsRequest) -> Result<String, Status> {
    let mut client = app.client.clone();
    client.export_channels(as_caller(token, request)).await.map(|response| response.into_inner().task_id)
}

async fn list(
    app: &TestApp,
    token: &str,
    page_size: i32,
    page_token: &str,
) -> Result<(Vec<TaskRecord>, String), Status> {
    let request = ListTasksRequest { page_size, page_token: page_token.into() };
    let response = app.client.clone().list_tasks(as_caller(token, request)).await?.into_inner();
    Ok((response.tasks, response.next_page_token))
}

/// Asserts PERMISSION_DENIED `NOT_AUTHORIZED` naming `resource`.
fn assert_refused(status: &Status, resource: &str) {
    let details = assert_status(status, Code::PermissionDenied, "NOT_AUTHORIZED");
    let info = details.error_info().expect("ErrorInfo");
    assert_eq!(info.metadata.get("resource").map(String::as_str), Some(resource), "{status:?}");
}

#[tokio::test]
async fn channel_exports_are_authorized_channel_by_channel_before_anything_goes_upstream() {
    let app = app().await;
    let v2 = ExportFormatVersion::V2;
    let task_id = export_channels(&app, ANALYTICS, channels(&["livestream:launch"], v2)).await.expect("permitted");
    assert!(!task_id.is_empty());
    assert_eq!(app.emulator.exports_created().await, 1);

    // v1 is not permitted to analytics; a mixed list is refused whole; another team may not.
    let refused = export_channels(&app, ANALYTICS, channels(&["livestream:launch"], ExportFormatVersion::V1)).await;
    assert_refused(&refused.expect_err("v1 is refused"), r#"Channel::"livestream:launch""#);
    let mixed = export_channels(&app, ANALYTICS, channels(&["livestream:launch", "messaging:general"], v2)).await;
    assert_refused(&mixed.expect_err("a mixed list is refused"), r#"Channel::"messaging:general""#);
    let other_team = export_channels(&app, PRIVACY, channels(&["livestream:launch"], v2)).await;
    assert_refused(&other_team.expect_err("privacy may not export channels"), r#"Channel::"livestream:launch""#);
    assert_eq!(app.emulator.exports_created().await, 1, "no refused submit reached Stream");
    app.stop().await;
}

#[tokio::test]
async fn user_exports_are_authorized_user_by_user() {
    let app = app().await;
    let mut client = app.client.clone();
    let users = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    client.export_users(as_caller(PRIVACY, users.clone())).await.expect("privacy exports users");
    let refused = client.export_users(as_caller(ANALYTICS, users)).await.expect_err("analytics may not");
    assert_refused(&refused, &format!("User::\"{KNOWN_USER}\""));
    let one = ExportUserRequest { user_id: KNOWN_USER.into() };
    client.export_user(as_caller(PRIVACY, one.clone())).await.expect("privacy exports a user");
    let refused = client.export_user(as_caller(ANALYTICS, one)).await.expect_err("analytics may not");
    assert_refused(&refused, &format!("User::\"{KNOWN_USER}\""));
    assert_eq!(app.emulator.exports_created().await, 1);
    app.stop().await;
}

#[tokio::test]
async fn a_task_is_read_by_its_owner_and_the_admin_and_by_nobody_else() {
    let app = app().await;
    let task_id = export_channels(&app, ANALYTICS, channels(&["livestream:launch"], ExportFormatVersion::V2))
        .await
        .expect("permitted");
    app.emulator.wait_done(&task_id).await;
    let mut client = app.client.clone();
    for token in [ANALYTICS, PLATFORM] {
        client.get_task(as_caller(token, GetTaskRequest { task_id: task_id.clone() })).await.expect("GetTask");
        let mut watch = client
            .watch_task(as_caller(token, WatchTaskRequest { task_id: task_id.clone() }))
            .await
            .expect("WatchTask")
            .into_inner();
        assert!(watch.next().await.expect("an event").is_ok());
        let mut records = client
            .read_export(as_caller(
                token,
                ReadExportRequest { task_id: task_id.clone(), start_index: 0, ..Default::default() },
            ))
            .await
            .expect("ReadExport")
            .into_inner();
        assert!(records.next().await.expect("a record").is_ok());
    }
    let resource = format!("Task::\"{task_id}\"");
    let get = client.get_task(as_caller(PRIVACY, GetTaskRequest { task_id: task_id.clone() })).await;
    assert_refused(&get.expect_err("not the owner"), &resource);
    let watch = client.watch_task(as_caller(PRIVACY, WatchTaskRequest { task_id: task_id.clone() })).await;
    let Err(refused) = watch else { panic!("WatchTask by another caller was allowed") };
    assert_refused(&refused, &resource);
    let read = client
        .read_export(as_caller(
            PRIVACY,
            ReadExportRequest { task_id: task_id.clone(), start_index: 0, ..Default::default() },
        ))
        .await;
    let Err(refused) = read else { panic!("ReadExport by another caller was allowed") };
    assert_refused(&refused, &resource);
    // A task the service does not know (not submitted through it): only the admin reads it.
    let unknown = app.emulator.export_channels(serde_json::json!({"channels": [{"cid": "messaging:general"}]})).await;
    let refused = client.get_task(as_caller(ANALYTICS, GetTaskRequest { task_id: unknown.clone() })).await;
    assert_refused(&refused.expect_err("no owner"), &format!("Task::\"{unknown}\""));
    client.get_task(as_caller(PLATFORM, GetTaskRequest { task_id: unknown })).await.expect("the admin reads it");
    app.stop().await;
}

#[tokio::test]
async fn list_tasks_shows_each_caller_what_it_may_read_newest_first_page_by_page() {
    let app = app().await;
    let mut analytics_tasks = Vec::new();
    for _ in 0..5 {
        let request = channels(&["livestream:launch"], ExportFormatVersion::V2);
        analytics_tasks.push(export_channels(&app, ANALYTICS, request).await.expect("permitted"));
    }
    let users = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    let privacy_task = app.client.clone().export_users(as_caller(PRIVACY, users)).await.unwrap().into_inner().task_id;

    // Analytics sees its five, newest first, two per page.
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let (tasks, next) = list(&app, ANALYTICS, 2, &token).await.expect("ListTasks");
        assert!(tasks.len() <= 2);
        pages += 1;
        for task in &tasks {
            assert_eq!((task.owner.as_str(), task.rpc.as_str()), ("analytics", "ExportChannels"));
            assert!(task.create_time.is_some());
            let Some(task_record::Submit::ExportChannels(submit)) = &task.submit else { panic!("{task:?}") };
            assert_eq!(submit.channels[0].r#type, "livestream");
        }
        seen.extend(tasks.into_iter().map(|task| task.task_id));
        if next.is_empty() {
            break;
        }
        token = next;
    }
    analytics_tasks.reverse();
    assert_eq!(seen, analytics_tasks, "every task once, newest first");
    assert_eq!(pages, 3);

    // Privacy sees its own; the admin sees everything.
    let (privacy, _) = list(&app, PRIVACY, 0, "").await.unwrap();
    assert_eq!(privacy.iter().map(|task| task.task_id.as_str()).collect::<Vec<_>>(), [privacy_task.as_str()]);
    let (all, next) = list(&app, PLATFORM, 100, "").await.unwrap();
    assert_eq!((all.len(), next.as_str()), (6, ""));
    assert_eq!(all[0].task_id, privacy_task);

    // A token is good for the caller it was given to only; a bad page size is refused.
    let (_, analytics_token) = list(&app, ANALYTICS, 1, "").await.unwrap();
    let stolen = list(&app, PRIVACY, 1, &analytics_token).await.expect_err("another caller's token");
    assert_status(&stolen, Code::InvalidArgument, "INVALID_REQUEST");
    let negative = list(&app, ANALYTICS, -1, "").await.expect_err("a negative page size");
    assert_status(&negative, Code::InvalidArgument, "INVALID_REQUEST");
    app.stop().await;
}

#[tokio::test]
async fn every_spelling_of_a_task_id_is_the_same_task_to_the_policies() {
    // The admin reads every task, but nobody reads user exports.
    let forbid_user_exports = r#"
forbid (principal, action == Action::"ReadExport", resource)
when { resource has rpc && resource.rpc == "ExportUsers" };
"#;
    let app = app_with_policies(forbid_user_exports).await;
    let mut client = app.client.clone();
    let users = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    let task_id = client.export_users(as_caller(PRIVACY, users)).await.expect("permitted").into_inner().task_id;
    app.emulator.wait_done(&task_id).await;
    let resource = format!("Task::\"{task_id}\"");
    let uuid = uuid::Uuid::parse_str(&task_id).unwrap();
    let spellings = [
        task_id.to_uppercase(),
        format!("{{{task_id}}}"),
        format!("urn:uuid:{task_id}"),
        uuid.simple().to_string(),
        uuid.simple().to_string().to_uppercase(),
    ];
    for spelling in &spellings {
        let read = ReadExportRequest { task_id: spelling.clone(), start_index: 0, ..Default::default() };
        let Err(refused) = client.read_export(as_caller(PLATFORM, read)).await else {
            panic!("ReadExport of a user export through {spelling:?} was allowed")
        };
        assert_refused(&refused, &resource);
        let refused = client.get_task(as_caller(ANALYTICS, GetTaskRequest { task_id: spelling.clone() })).await;
        assert_refused(&refused.expect_err("not the owner"), &resource);
        // The owner's task is its own however it spells it, and the answer names it canonically.
        let task = client.get_task(as_caller(PRIVACY, GetTaskRequest { task_id: spelling.clone() })).await;
        assert_eq!(task.expect("the owner reads its task").into_inner().task_id, task_id, "{spelling}");
    }
    // Not a UUID in any spelling: refused before any policy or upstream request.
    for bad in ["t-1", "..", &format!("{task_id}/../x")] {
        let refused = client.get_task(as_caller(PLATFORM, GetTaskRequest { task_id: bad.to_owned() })).await;
        assert_status(&refused.expect_err("not a task id"), Code::InvalidArgument, "INVALID_REQUEST");
    }
    app.stop().await;
}

#[tokio::test]
async fn every_spelling_of_a_task_id_shares_one_poller() {
    let app = app().await;
    let mut client = app.client.clone();
    let task_id = export_channels(&app, ANALYTICS, channels(&["livestream:launch"], ExportFormatVersion::V2))
        .await
        .expect("permitted");
    app.emulator.steer(&task_id, serde_json::json!({"hold": true})).await;
    let mut streams = Vec::new();
    for spelling in [task_id.clone(), task_id.to_uppercase(), format!("{{{task_id}}}")] {
        let request = as_caller(ANALYTICS, WatchTaskRequest { task_id: spelling });
        let mut stream = client.watch_task(request).await.expect("WatchTask").into_inner();
        let snapshot = stream.next().await.expect("a snapshot").expect("an event");
        assert_eq!(snapshot.task.expect("the task").task_id, task_id);
        streams.push(stream);
    }
    assert_eq!(app.hub.watched_tasks(), 1, "one poller for one task, however its id is spelled");
    app.stop().await;
}

/// ListTasks page tokens (issue 30): a listing cut short by the scan limit goes on past the tasks
/// the caller may not read; a token never shows where it stopped, and altered, it is refused.
#[tokio::test]
async fn list_tasks_pages_go_past_what_the_caller_may_not_read_and_tokens_show_nothing() {
    const AUDITOR: &str = "auditor-token-0123456789";
    let dir = std::env::temp_dir().join(format!("stream-export-list-tokens-{}", rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokens"), format!("analytics {ANALYTICS}\nprivacy {PRIVACY}\nauditor {AUDITOR}\n"))
        .unwrap();
    std::fs::write(
        dir.join("policies.cedar"),
        r#"
permit (principal, action in [Action::"ExportChannels", Action::"ExportUsers", Action::"ListTasks"], resource);
permit (principal == Caller::"auditor", action == Action::"GetTask", resource)
when { resource has rpc && resource.rpc == "ExportUsers" };
"#,
    )
    .unwrap();
    let (tokens, policies) = (dir.join("tokens"), dir.join("policies.cedar"));
    let app = spawn_app_with(Options {
        tweak: Some(Box::new(move |settings| {
            settings.access.tokens_file = Some(tokens);
            settings.access.policy_file = Some(policies);
            settings.limits.list_scan_limit = 2;
        })),
        ..Options::default()
    })
    .await;
    let users = || ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
    let export_users = || async { app.client.clone().export_users(as_caller(PRIVACY, users())).await.unwrap() };
    let older = export_users().await.into_inner().task_id;
    let mut hidden = Vec::new();
    for _ in 0..3 {
        let request = channels(&["livestream:launch"], ExportFormatVersion::V2);
        hidden.push(export_channels(&app, ANALYTICS, request).await.expect("permitted"));
    }
    let newer = export_users().await.into_inner().task_id;

    let (first, first_token) = list(&app, AUDITOR, 1, "").await.unwrap();
    assert_eq!(first.iter().map(|t| t.task_id.as_str()).collect::<Vec<_>>(), [newer.as_str()]);
    // The listing goes on through the hidden tasks, a short page at a time (the scan limit is 2
    // here), to the older task; no token shows where it stopped.
    let (mut seen, mut token, mut pages) = (Vec::new(), first_token.clone(), 0);
    while !token.is_empty() {
        let bytes = hex::decode(&token).expect("hex");
        for id in hidden.iter().chain([&newer, &older]) {
            assert!(!bytes.windows(id.len()).any(|w| w == id.as_bytes()), "a token shows {id}");
        }
        let (tasks, next) = list(&app, AUDITOR, 1, &token).await.unwrap();
        seen.extend(tasks.into_iter().map(|task| task.task_id));
        token = next;
        pages += 1;
        assert!(pages <= 4, "the listing makes no progress: {pages} pages");
    }
    assert_eq!(seen, std::slice::from_ref(&older));

    let mut altered = hex::decode(&first_token).unwrap();
    altered[20] ^= 1;
    let refused = list(&app, AUDITOR, 1, &hex::encode(altered)).await.expect_err("an altered token");
    assert_status(&refused, Code::InvalidArgument, "INVALID_REQUEST");
    let _ = std::fs::remove_dir_all(&dir);
    app.stop().await;
}

#[tokio::test]
async fn a_job_archives_only_under_its_teams_own_prefix() {
    let app = app().await;
    let job = |archive_uri: &str| CreateExportJobRequest {
        selector: Some(Selector::Channels(ChannelList {
            channels: vec![ChannelRef { r#type: "livestream".into(), id: "launch".into(), ..Default::default() }],
        })),
        version: ExportFormatVersion::V2 as i32,
        archive_uri: archive_uri.into(),
        ..Default::default()
    };
    let create = |token: &'static str, request: CreateExportJobRequest| {
        let mut client = app.client.clone();
        async move { client.create_export_job(as_caller(token, request)).await }
    };
    create(ANALYTICS, job("s3://exports-bucket/teams/analytics/daily")).await.expect("its own prefix");
    // Normalised first: `//` and a trailing `/` make no other prefix.
    create(ANALYTICS, job("s3://exports-bucket/teams//analytics/weekly/")).await.expect("its own prefix, spelt oddly");
    let refused = create(ANALYTICS, job("s3://exports-bucket/teams/privacy/daily")).await.unwrap_err();
    let details = assert_status(&refused, Code::PermissionDenied, "NOT_AUTHORIZED");
    assert_eq!(details.error_info().unwrap().metadata["action"], "CreateExportJob");
    create(ANALYTICS, job("")).await.expect("a job that does not archive");
    // Three jobs were created, one export each; the refused one submitted nothing.
    let until = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while app.emulator.exports_created().await < 3 {
        assert!(tokio::time::Instant::now() < until, "the three jobs did not submit");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(app.emulator.exports_created().await, 3);
    app.stop().await;
}
