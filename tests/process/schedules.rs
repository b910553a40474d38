//! Export schedules as processes (issue 35): a `kill -9` during a window's job and one between
//! windows neither skip nor repeat a window (the state directory); in a fleet of two replicas
//! one runs the loop and fires each window once, and the other takes over after a `kill -9`;
//! a policy change takes effect from the next window.

use std::time::{Duration, Instant};

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::json;
use stream_export::{
    emulator::EmulatorConfig,
    proto::{
        ChannelList, ChannelRef, CreateExportJobRequest, CreateExportScheduleRequest, ExportJob, ExportJobState,
        ExportSchedule, create_export_job_request::Selector, export_service_client::ExportServiceClient,
    },
};
use tonic::transport::Channel;

use crate::{
    common::{
        API_KEY, API_SECRET, TestEmulator,
        process::{ServiceProcess, scratch_state_dir},
        redis::RedisServer,
        schedules::{assert_tiles, in_window_order, jobs_of, schedule, windows_received},
    },
    fleet::{client, replicas_with},
};

/// Settings that fire windows within 100 ms of their end and submit at once.
const QUICK: [(&str, &str); 2] =
    [("STREAM_EXPORT_SCHEDULE_TICK", "100ms"), ("STREAM_EXPORT_UPSTREAM_EXPORT_BUDGET", "6000")];

async fn emulator() -> TestEmulator {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 4;
    TestEmulator::spawn(config).await
}

/// A schedule of 1 s windows with no lag, from `start`, over two channels (one task a window).
fn every_second(start: DateTime<Utc>) -> CreateExportScheduleRequest {
    let channels = (0..2)
        .map(|n| ChannelRef { r#type: "messaging".into(), id: format!("bulk-{n:06}"), ..Default::default() })
        .collect();
    let template =
        CreateExportJobRequest { selector: Some(Selector::Channels(ChannelList { channels })), ..Default::default() };
    let schedule = ExportSchedule {
        template: Some(template),
        interval: Some(prost_types::Duration { seconds: 1, nanos: 0 }),
        start_time: Some(prost_types::Timestamp { seconds: start.timestamp(), nanos: 0 }),
        lag: Some(prost_types::Duration::default()),
        ..Default::default()
    };
    CreateExportScheduleRequest { schedule: Some(schedule), request_id: String::new() }
}

/// Reads the schedule until `done` holds of it (at most `within`).
async fn until(
    client: &mut ExportServiceClient<Channel>,
    schedule_id: &str,
    within: Duration,
    done: impl Fn(&ExportSchedule) -> bool,
) -> ExportSchedule {
    let started = Instant::now();
    loop {
        let read = schedule(client, schedule_id).await;
        if done(&read) {
            return read;
        }
        assert!(started.elapsed() < within, "the schedule did not get there in time: {read:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every job of the schedule once they all ended.
async fn ended_jobs(client: &mut ExportServiceClient<Channel>, schedule_id: &str) -> Vec<ExportJob> {
    let started = Instant::now();
    loop {
        let jobs = jobs_of(client, schedule_id).await;
        if jobs.iter().all(|job| job.state().is_terminal()) {
            return jobs;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the jobs did not end: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn start_on_state(emulator: &TestEmulator, state: &std::path::Path) -> ServiceProcess {
    let base_url = emulator.base_url();
    let mut env = vec![
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
        ("RUST_LOG", "info"),
        ("STREAM_EXPORT_STATE_DIR", state.to_str().unwrap()),
    ];
    env.extend_from_slice(&QUICK);
    ServiceProcess::start(&[], &env)
}

#[tokio::test]
async fn a_kill_9_during_a_windows_job_and_one_between_windows_neither_skip_nor_repeat_a_window() {
    let emulator = emulator().await;
    let state = scratch_state_dir();
    // Tasks that run for a while: the first kill comes while a window's job is running.
    let slow = json!({"waiting_ms": 0, "pending_ms": 0, "running_ms": 3_000});
    emulator.control(reqwest::Method::PUT, "task_defaults", Some(slow)).await;
    let mut service = start_on_state(&emulator, &state);
    service.wait_ready(true).await;
    let start = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(2);
    let mut calls = client(&service).await;
    let id = calls.create_export_schedule(every_second(start)).await.expect("created").into_inner().schedule_id;
    let running = until(&mut calls, &id, Duration::from_secs(10), |read| {
        read.windows_started >= 3 && !read.running_job_ids.is_empty()
    })
    .await;
    service.kill();

    // Down for about two windows; then tasks end at once again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quick = json!({"waiting_ms": 0, "pending_ms": 0, "running_ms": 0});
    emulator.control(reqwest::Method::PUT, "task_defaults", Some(quick)).await;
    let mut service = start_on_state(&emulator, &state);
    service.wait_ready(true).await;
    let mut calls = client(&service).await;
    // Between windows: every job started so far ended, and the next window is not due yet.
    let before = until(&mut calls, &id, Duration::from_secs(20), |read| {
        read.windows_started >= running.windows_started + 3 && read.running_job_ids.is_empty()
    })
    .await;
    service.kill();

    tokio::time::sleep(Duration::from_secs(2)).await;
    let service = start_on_state(&emulator, &state);
    service.wait_ready(true).await;
    let mut calls = client(&service).await;
    until(&mut calls, &id, Duration::from_secs(20), |read| read.windows_started >= before.windows_started + 3).await;

    let jobs = ended_jobs(&mut calls, &id).await;
    assert!(jobs.iter().all(|job| job.state() == ExportJobState::Succeeded), "{jobs:?}");
    let windows = windows_received(&mut calls, &emulator, &jobs).await;
    assert_eq!(windows, in_window_order(windows.clone()), "the jobs were created in window order");
    assert_tiles(&windows, start);
    // One task a window, and at most one duplicate submit for the crash that cut a job.
    let exports = emulator.exports_created().await;
    assert!(
        (jobs.len() as u64..=jobs.len() as u64 + 1).contains(&exports),
        "{exports} exports for {} jobs",
        jobs.len()
    );
}

#[tokio::test]
async fn in_a_fleet_one_replica_fires_each_window_once_and_another_takes_over_after_a_kill_9() {
    let redis = RedisServer::start(None).await;
    let emulator = emulator().await;
    let mut fleet = replicas_with(2, &emulator, &redis.url(), &QUICK).await;
    let mut first = client(&fleet[0]).await;
    let start = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(3);
    let id = first.create_export_schedule(every_second(start)).await.expect("created").into_inner().schedule_id;
    until(&mut first, &id, Duration::from_secs(20), |read| read.windows_started >= 5).await;
    // Once the replicas' heartbeats agree (a second after the second one joined), one of them
    // fires every window.
    let fired = |fleet: &[ServiceProcess]| -> Vec<usize> {
        fleet.iter().map(|replica| replica.log().matches("a window's job was started").count()).collect()
    };
    let before_settled = fired(&fleet);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let firing: Vec<usize> = fired(&fleet).iter().zip(&before_settled).map(|(now, then)| now - then).collect();
    assert_eq!(firing.iter().filter(|count| **count > 0).count(), 1, "one replica runs the loop: {firing:?}");

    // The replica that runs the loop dies; the other takes the loop (and its jobs) over.
    let (dead, alive) = if firing[0] > 0 { (0, 1) } else { (1, 0) };
    fleet[dead].kill();
    let mut survivor = client(&fleet[alive]).await;
    let before = schedule(&mut survivor, &id).await.windows_started;
    until(&mut survivor, &id, Duration::from_secs(30), |read| read.windows_started >= before + 5).await;
    let paused = ExportSchedule { schedule_id: id.clone(), paused: true, ..Default::default() };
    let mask = prost_types::FieldMask { paths: vec!["paused".into()] };
    let request = stream_export::proto::UpdateExportScheduleRequest { schedule: Some(paused), update_mask: Some(mask) };
    survivor.update_export_schedule(request).await.expect("paused");

    let jobs = ended_jobs(&mut survivor, &id).await;
    let read = schedule(&mut survivor, &id).await;
    assert_eq!(jobs.len() as u64, read.windows_started, "one job per window started");
    assert!(jobs.iter().all(|job| job.state() == ExportJobState::Succeeded), "{jobs:?}");
    let windows = windows_received(&mut survivor, &emulator, &jobs).await;
    assert_tiles(&in_window_order(windows), start);
    // One export per window, and at most one more for the job the kill cut.
    let exports = emulator.exports_created().await;
    assert!(
        (jobs.len() as u64..=jobs.len() as u64 + 1).contains(&exports),
        "{exports} exports for {} jobs",
        jobs.len()
    );
}

const TEAM_TOKEN: &str = "team-token-0123456789abcdef";

/// The team schedules exports and reads its own; `CreateExportJob` comes and goes.
fn team_policies(may_create_jobs: bool) -> String {
    let jobs =
        if may_create_jobs { r#"permit (principal, action == Action::"CreateExportJob", resource);"# } else { "" };
    format!(
        r#"
permit (principal, action in [Action::"CreateExportSchedule", Action::"ExportChannels", Action::"ListExportJobs"], resource);
permit (
  principal,
  action in [Action::"GetExportSchedule", Action::"UpdateExportSchedule", Action::"GetExportJob", Action::"ListExportJobTasks"],
  resource
)
when {{ resource has owner && resource.owner == principal }};
{jobs}
"#
    )
}

/// Puts the team's token on a call.
fn team_token(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    request.metadata_mut().insert("authorization", format!("Bearer {TEAM_TOKEN}").parse().expect("ascii"));
    Ok(request)
}

type TeamClient = ExportServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
    >,
>;

/// A client whose every call carries the team's token.
async fn as_team(service: &ServiceProcess) -> TeamClient {
    ExportServiceClient::with_interceptor(service.channel().await, team_token as fn(_) -> _)
}

/// Reads the team's schedule until it started `windows` windows.
async fn team_until(team: &mut TeamClient, schedule_id: &str, windows: u64) -> ExportSchedule {
    let started = Instant::now();
    loop {
        let request = stream_export::proto::GetExportScheduleRequest { schedule_id: schedule_id.into() };
        let schedule = team.get_export_schedule(request).await.expect("read").into_inner();
        if schedule.windows_started >= windows {
            return schedule;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{schedule:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_policy_change_takes_effect_from_the_next_window() {
    let emulator = emulator().await;
    let dir = scratch_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("tokens"), format!("team {TEAM_TOKEN}\n")).unwrap();
    std::fs::write(dir.join("policies.cedar"), team_policies(true)).unwrap();
    let (tokens, policies, state) = (dir.join("tokens"), dir.join("policies.cedar"), dir.join("state"));
    let base_url = emulator.base_url();
    let mut env = vec![
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
        ("RUST_LOG", "info"),
        ("STREAM_EXPORT_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("STREAM_EXPORT_POLICY_FILE", policies.to_str().unwrap()),
        ("STREAM_EXPORT_STATE_DIR", state.to_str().unwrap()),
    ];
    env.extend_from_slice(&QUICK);
    let service = ServiceProcess::start(&[], &env);
    service.wait_ready(true).await;
    let mut team = as_team(&service).await;
    let start = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(2);
    let created = team.create_export_schedule(every_second(start)).await.expect("created").into_inner();
    assert_eq!(created.owner, "team");
    let id = created.schedule_id;
    let allowed = team_until(&mut team, &id, 2).await.windows_started;

    // The team may no longer create jobs: the next windows' jobs fail NOT_AUTHORIZED, each in
    // its window; none is skipped.
    std::fs::write(&policies, team_policies(false)).unwrap();
    service.hang_up();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused_from = team_until(&mut team, &id, 0).await.windows_started;
    team_until(&mut team, &id, refused_from + 2).await;
    std::fs::write(&policies, team_policies(true)).unwrap();
    service.hang_up();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let allowed_again = team_until(&mut team, &id, 0).await.windows_started;
    let last = team_until(&mut team, &id, allowed_again + 2).await;
    assert!(!last.last_failed_job_id.is_empty(), "{last:?}");

    let mut jobs = Vec::new();
    let mut page_token = String::new();
    loop {
        let request =
            stream_export::proto::ListExportJobsRequest { page_size: 1_000, page_token, schedule_id: id.clone() };
        let page = team.list_export_jobs(request).await.expect("listed").into_inner();
        jobs.extend(page.jobs.into_iter().filter(|job| job.schedule_id == id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    jobs.sort_by_key(|job| job.request.as_ref().and_then(|request| request.messages_until).map(|at| at.seconds));
    // Window n is jobs[n]: refused are those started while the permission was gone.
    let refused: Vec<usize> = (0..jobs.len()).filter(|n| jobs[*n].state() == ExportJobState::Failed).collect();
    for n in &refused {
        let error = jobs[*n].error.as_ref().expect("why it failed");
        assert_eq!(error.code, tonic::Code::PermissionDenied as i32, "{:?}", jobs[*n]);
    }
    assert!(!refused.is_empty(), "some windows were refused");
    let while_gone = allowed as usize..allowed_again as usize;
    assert!(refused.iter().all(|n| while_gone.contains(n)), "refused {refused:?}, permission gone for {while_gone:?}");
    assert!(refused_from < allowed_again);
    let windows: Vec<i64> = jobs
        .iter()
        .filter_map(|job| job.request.as_ref().and_then(|request| request.messages_since).map(|at| at.seconds))
        .collect();
    let expected: Vec<i64> = (0..jobs.len() as i64).map(|n| start.timestamp() + n).collect();
    assert_eq!(windows, expected, "every window has its job, refused or not");
}
