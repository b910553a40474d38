//! Figure 8 (export jobs, issue 33): how evenly a job's submits follow the export budget
//! against an emulator that enforces Stream's limits (per minute, and per second a thirtieth
//! of it), what planning a channel query costs, the service's memory while it holds a job of
//! many channels, and how soon a job resumes after a `kill -9`.
//!
//! Each figure runs its own emulator (with the synthetic channels and the limits it needs) and
//! its own service.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use stream_export::{
    contract::json::to_struct,
    proto::{
        ChannelList, ChannelQuery, ChannelRef, CreateExportJobRequest, ExportJob, ExportJobState, GetExportJobRequest,
        create_export_job_request::Selector, export_service_client::ExportServiceClient,
    },
};
use tonic::transport::Channel;

use crate::{
    Scale,
    processes::{self, API_KEY, API_SECRET, ChildProcess, EmulatorClient},
    procfs,
    report::{Figure, Target},
};

/// An emulator with `synthetic` channels and `flags`; tasks stay `waiting` (nothing here
/// needs them to end).
async fn emulator(name: &'static str, synthetic: usize, flags: &[&str]) -> ChildProcess {
    let port = processes::free_port();
    let mut command = Command::new(processes::service_binary());
    command
        .arg("emulator")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-key", API_KEY, "--api-secret", API_SECRET])
        .args(["--waiting-ms", "3600000", "--synthetic-channels", &synthetic.to_string()])
        .args(flags)
        .env("RUST_LOG", "warn");
    let mut child = processes::spawn(name, command, port);
    child.wait_listening().await;
    child
}

/// The service against `emulator`, its state in `state_dir` (or in memory).
async fn service(
    name: &'static str,
    emulator: &ChildProcess,
    state_dir: Option<&PathBuf>,
    flags: &[&str],
) -> ChildProcess {
    let port = processes::free_port();
    let mut command = Command::new(processes::service_binary());
    command
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--stream-base-url", &emulator.url()])
        .args(["--stream-api-key", API_KEY])
        .args(flags)
        .env("STREAM_API_SECRET", API_SECRET);
    match state_dir {
        Some(dir) => command.arg("--state-dir").arg(dir),
        None => command.arg("--memory-state"),
    };
    let mut child = processes::spawn(name, command, port);
    child.wait_listening().await;
    child
}

fn channels(count: usize) -> Vec<ChannelRef> {
    (0..count)
        .map(|n| ChannelRef { r#type: "messaging".into(), id: format!("bulk-{n:06}"), ..Default::default() })
        .collect()
}

fn list_job(count: usize) -> CreateExportJobRequest {
    CreateExportJobRequest {
        selector: Some(Selector::Channels(ChannelList { channels: channels(count) })),
        ..Default::default()
    }
}

async fn client_of(service: &ChildProcess) -> ExportServiceClient<Channel> {
    ExportServiceClient::new(service.channel().await).max_encoding_message_size(16 << 20)
}

async fn get(client: &mut ExportServiceClient<Channel>, job_id: &str) -> ExportJob {
    client.get_export_job(GetExportJobRequest { job_id: job_id.into() }).await.expect("GetExportJob").into_inner()
}

/// Reads the job every 20 ms until `done` says so (at most `limit`); returns when.
async fn until(
    client: &mut ExportServiceClient<Channel>,
    job_id: &str,
    limit: Duration,
    done: impl Fn(&ExportJob) -> bool,
) -> Instant {
    let started = Instant::now();
    loop {
        let job = get(client, job_id).await;
        if done(&job) {
            return Instant::now();
        }
        assert!(started.elapsed() < limit, "the job did not get there in {limit:?}: {job:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn submitted(job: &ExportJob) -> u64 {
    job.progress.as_ref().map_or(0, |progress| progress.tasks_submitted)
}

fn all_submitted(job: &ExportJob) -> bool {
    job.progress
        .as_ref()
        .is_some_and(|progress| progress.tasks_total > 0 && progress.tasks_submitted == progress.tasks_total)
}

pub async fn run(scale: &Scale) -> Vec<Figure> {
    let mut figures = Vec::new();
    figures.extend(pacing(scale).await);
    figures.extend(planning(scale).await);
    figures.extend(memory(scale).await);
    figures.extend(resume(scale).await);
    figures
}

/// `job_submit_pacing_ratio`: the time to submit every shard ÷ (shards ÷ budget), against an
/// emulator whose export route allows a little more than the budget (per minute, and a
/// thirtieth of that per second, as Stream does); and how many of its answers were 429.
async fn pacing(scale: &Scale) -> Vec<Figure> {
    let (shards, budget) = (scale.job_pacing_shards, scale.job_pacing_budget);
    let limit = budget + budget / 20;
    let emulator_process = emulator(
        "jobs-emulator",
        shards * 25,
        &["--per-second-limits", "--route-rate-limit", &format!("export_channels={limit}")],
    )
    .await;
    let emulator_client = EmulatorClient::new(emulator_process.url());
    let service =
        service("jobs-service", &emulator_process, None, &["--upstream-export-budget", &budget.to_string()]).await;
    let mut client = client_of(&service).await;
    let started = Instant::now();
    let job = client.create_export_job(list_job(shards * 25)).await.expect("CreateExportJob").into_inner();
    let done = until(&mut client, &job.job_id, Duration::from_secs(600), all_submitted).await;
    let elapsed = done.duration_since(started).as_secs_f64();
    let ideal = shards as f64 / (f64::from(budget) / 60.0);
    let counters = emulator_client.counters().await;
    let refused = counters["rate_limited"]["export_channels"].as_u64().unwrap_or(0);
    vec![
        Figure::target("job_submit_pacing_ratio", elapsed / ideal, "x", Target::AtMost(1.05)),
        Figure::target("job_submit_429s", refused as f64, "", Target::AtMost(0.0)),
    ]
}

/// `job_plan_query_calls`: QueryChannels calls to list a query's channels (30 a page, so at most
/// channels ÷ 30 + 1), and the planning time (create to RUNNING).
async fn planning(scale: &Scale) -> Vec<Figure> {
    let count = scale.job_plan_channels;
    let emulator_process = emulator("jobs-plan-emulator", count, &[]).await;
    let emulator_client = EmulatorClient::new(emulator_process.url());
    let service = service("jobs-plan-service", &emulator_process, None, &["--job-max-channels", "1000000"]).await;
    let mut client = client_of(&service).await;
    // Every synthetic channel, and none of the emulator's own.
    let filter = serde_json::json!({"team": {"$in": ["acme", "globex", "initech"]}});
    let request = CreateExportJobRequest {
        selector: Some(Selector::ChannelQuery(ChannelQuery {
            filter: Some(to_struct(filter.as_object().cloned().unwrap_or_default()).into()),
        })),
        ..Default::default()
    };
    emulator_client.reset_counters().await;
    let started = Instant::now();
    let job = client.create_export_job(request).await.expect("CreateExportJob").into_inner();
    let planned =
        until(&mut client, &job.job_id, Duration::from_secs(600), |job| job.state() != ExportJobState::Planning).await;
    let job = get(&mut client, &job.job_id).await;
    let listed = job.progress.as_ref().map_or(0, |progress| progress.channels_total);
    assert_eq!(listed as usize, count, "the plan holds every channel: {job:?}");
    let calls = emulator_client.counters().await["routes"]["query_channels"].as_u64().unwrap_or(0);
    vec![
        Figure::target("job_plan_query_calls", calls as f64, "", Target::AtMost((count / 30 + 1) as f64)),
        Figure::info("job_plan_seconds", planned.duration_since(started).as_secs_f64(), "s"),
    ]
}

/// `job_rss_above_idle_mib`: the service's resident memory while it runs a job of many
/// channels (an explicit list), above its memory before the job; its state in a state
/// directory, as deployed by default.
async fn memory(scale: &Scale) -> Vec<Figure> {
    let count = scale.job_memory_channels;
    let emulator_process = emulator("jobs-memory-emulator", 0, &[]).await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-jobs-memory-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let flags = ["--job-max-channels", "1000000"];
    let service = service("jobs-memory-service", &emulator_process, Some(&dir), &flags).await;
    let mut client = client_of(&service).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = procfs::rss_bytes(service.pid());
    let cpu_before = procfs::cpu_time(service.pid());
    let job = client.create_export_job(list_job(count)).await.expect("CreateExportJob").into_inner();
    until(&mut client, &job.job_id, Duration::from_secs(600), |job| job.state() != ExportJobState::Planning).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let running = procfs::rss_bytes(service.pid());
    let cpu = procfs::cpu_time(service.pid()).saturating_sub(cpu_before);
    let shards = count.div_ceil(25);
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
    vec![
        Figure::target(
            "job_rss_above_idle_mib",
            running.saturating_sub(idle) as f64 / (1 << 20) as f64,
            "MiB",
            Target::Below(64.0),
        ),
        Figure::info("job_plan_cpu_us_per_shard", cpu.as_secs_f64() * 1e6 / shards as f64, "µs"),
    ]
}

/// `job_resume_seconds`: after a `kill -9` mid-job, from the restart of the service on the same
/// state directory to the job's next submit.
async fn resume(scale: &Scale) -> Vec<Figure> {
    let shards = scale.job_resume_shards;
    let emulator_process = emulator("jobs-resume-emulator", shards * 25, &[]).await;
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-jobs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let flags = ["--upstream-export-budget", "120"];
    let mut first = service("jobs-resume-service", &emulator_process, Some(&dir), &flags).await;
    let mut client = client_of(&first).await;
    let job = client.create_export_job(list_job(shards * 25)).await.expect("CreateExportJob").into_inner();
    until(&mut client, &job.job_id, Duration::from_secs(60), |job| submitted(job) >= 2).await;
    first.kill();
    let restarted_at = Instant::now();
    let second = service("jobs-resume-service-2", &emulator_process, Some(&dir), &flags).await;
    let mut again = client_of(&second).await;
    let before = submitted(&get(&mut again, &job.job_id).await);
    let resumed = until(&mut again, &job.job_id, Duration::from_secs(60), |job| submitted(job) > before).await;
    let _ = std::fs::remove_dir_all(&dir);
    vec![Figure::info("job_resume_seconds", resumed.duration_since(restarted_at).as_secs_f64(), "s")]
}
