//! Figure 2 (watch fan-out: upstream reads per poll round, memory per stream, change delay)
//! and figure 3 (the upstream budget under many watched tasks).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::future::join_all;
use prost::Message;
use serde_json::{Value, json};
use stream_export::proto::{
    GetTaskRequest, TaskState, WatchTaskRequest, export_service_client::ExportServiceClient, task_event::EventType,
};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::{
    Scale,
    processes::{self, ChildProcess, EmulatorClient},
    procfs,
    report::{Figure, Target, quantile},
    tasks,
};

/// The fixed poll interval of figure 2: the delay target is one interval plus 20 ms.
const POLL_INTERVAL: Duration = Duration::from_millis(200);

const MIB: f64 = 1024.0 * 1024.0;

/// Progress shared by all watchers of a run, so the bench can wait for "everyone has X".
#[derive(Default)]
pub(crate) struct Progress {
    pub(crate) snapshots: AtomicUsize,
    pub(crate) running_seen: AtomicUsize,
}

/// One watch stream: counts its snapshot, notes when it sees `RUNNING`, reads to the end.
/// Returns the instant the `RUNNING` change arrived, if it did.
pub(crate) fn spawn_watcher(
    mut client: ExportServiceClient<Channel>,
    task_id: String,
    progress: Arc<Progress>,
) -> JoinHandle<Option<Instant>> {
    tokio::spawn(async move {
        let mut stream = client.watch_task(WatchTaskRequest { task_id }).await.expect("WatchTask opens").into_inner();
        let mut running_at = None;
        while let Some(Ok(event)) = stream.next().await {
            let state = event.task.as_ref().map_or(TaskState::Unspecified, |t| t.state());
            match event.r#type() {
                EventType::Snapshot => {
                    progress.snapshots.fetch_add(1, Ordering::Relaxed);
                }
                EventType::Changed if state == TaskState::Running && running_at.is_none() => {
                    running_at = Some(Instant::now());
                    progress.running_seen.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        running_at
    })
}

/// Waits until `counter` reaches `target`, at most `limit`; returns whether it did.
pub(crate) async fn wait_for(counter: &AtomicUsize, target: usize, limit: Duration) -> bool {
    let started = Instant::now();
    while counter.load(Ordering::Relaxed) < target {
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

pub(crate) async fn connect(process: &ChildProcess, connections: usize) -> Vec<ExportServiceClient<Channel>> {
    join_all((0..connections).map(|_| process.channel())).await.into_iter().map(ExportServiceClient::new).collect()
}

fn task_reads(counters: &Value, task_id: &str) -> f64 {
    counters["tasks"][task_id].as_u64().unwrap_or(0) as f64
}

/// Figure 2. A "poll round" of a task is one poll that a single poller makes: the control task,
/// watched by exactly one stream under the same settings, makes one per round by definition.
/// The fan-out ratio is the mean status reads of a task with many watchers divided by the
/// control task's reads over the same window: 1.0 means the watchers cost Stream nothing more.
pub async fn fan_out(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    let interval = format!("{}ms", POLL_INTERVAL.as_millis());
    let service = processes::start_service(
        "service-watch",
        emulator_process,
        &["--watch-poll-min", &interval, "--watch-poll-max", &interval, "--upstream-poll-budget", "100000"],
    )
    .await;
    let rss_idle = procfs::rss_bytes(service.pid());
    let clients = connect(&service, scale.fanout_connections).await;
    let mut task_ids = tasks::create(&clients[0], scale.fanout_tasks + 1).await;
    let control_id = task_ids.pop().expect("a control task");
    // Connections are the client's choice and their cost is not per stream: measure from here,
    // and report the figure that includes them too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = procfs::rss_bytes(service.pid());

    let progress = Arc::new(Progress::default());
    let total = scale.fanout_tasks * scale.fanout_watchers_per_task;
    eprintln!("watch: opening {total} streams over {} tasks", scale.fanout_tasks);
    let control = spawn_watcher(clients[0].clone(), control_id.clone(), Arc::clone(&progress));
    let watchers = open_streams(&clients, &task_ids, total, &progress);
    let opened = wait_for(&progress.snapshots, total + 1, Duration::from_secs(120)).await;
    assert!(opened, "only {} of {} streams got their snapshot", progress.snapshots.load(Ordering::Relaxed), total + 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = procfs::rss_bytes(service.pid());
    let open_streams = total + 1;
    let per_stream_kib = |after: u64, before: u64| after.saturating_sub(before) as f64 / open_streams as f64 / 1024.0;

    eprintln!("watch: counting upstream reads for {:?}", scale.fanout_window);
    let (fan_out_ratio, control_reads) = reads_per_round(emulator, &task_ids, &control_id, scale.fanout_window).await;

    eprintln!("watch: steering {} tasks to running", scale.fanout_tasks);
    let steered = steer_all(emulator, &task_ids).await;
    if !wait_for(&progress.running_seen, total, Duration::from_secs(30)).await {
        eprintln!("watch: only {} of {total} streams saw RUNNING", progress.running_seen.load(Ordering::Relaxed));
    }
    for id in task_ids.iter().chain([&control_id]) {
        emulator.steer(id, "completed").await;
    }
    let mut delays_ms = change_delays_ms(watchers, &steered).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), control).await;
    let bare_kib = bare_tonic_stream_kib(scale, &clients[0], &task_ids[0], total).await;
    let delivered = delays_ms.len() as f64;
    let delay_target = (POLL_INTERVAL + Duration::from_millis(20)).as_secs_f64() * 1e3;

    vec![
        Figure::info("watch_streams", open_streams as f64, "count"),
        Figure::info("watch_control_task_reads", control_reads, "count"),
        Figure::target("watch_fanout_reads_per_round", fan_out_ratio, "x", Target::AtMost(1.05)),
        Figure::target("watch_rss_per_stream_kib", per_stream_kib(rss_open, rss_connected), "KiB", Target::AtMost(8.0)),
        Figure::info("watch_rss_per_stream_incl_connections_kib", per_stream_kib(rss_open, rss_idle), "KiB"),
        Figure::info("watch_rss_connections_mib", rss_connected.saturating_sub(rss_idle) as f64 / MIB, "MiB"),
        Figure::info("watch_rss_streams_open_mib", rss_open as f64 / MIB, "MiB"),
        Figure::info("watch_rss_per_stream_bare_tonic_kib", bare_kib, "KiB"),
        Figure::info("watch_changes_delivered", delivered, "count"),
        Figure::target("watch_change_delay_p50_ms", quantile(&mut delays_ms, 0.5), "ms", Target::AtMost(delay_target)),
        Figure::target("watch_change_delay_p99_ms", quantile(&mut delays_ms, 0.99), "ms", Target::AtMost(delay_target)),
    ]
}

/// Opens `total` watch streams, round robin over the tasks and the connections. Each comes
/// back with the index of its task.
fn open_streams(
    clients: &[ExportServiceClient<Channel>],
    task_ids: &[String],
    total: usize,
    progress: &Arc<Progress>,
) -> Vec<(usize, JoinHandle<Option<Instant>>)> {
    (0..total)
        .map(|n| {
            let task = n % task_ids.len();
            let client = clients[n % clients.len()].clone();
            (task, spawn_watcher(client, task_ids[task].clone(), Arc::clone(progress)))
        })
        .collect()
}

/// Status reads over `window` of the watched tasks (mean) per read of the control task, and
/// the control task's reads.
pub(crate) async fn reads_per_round(
    emulator: &EmulatorClient,
    task_ids: &[String],
    control_id: &str,
    window: Duration,
) -> (f64, f64) {
    emulator.reset_counters().await;
    tokio::time::sleep(window).await;
    let counters = emulator.counters().await;
    let control_reads = task_reads(&counters, control_id);
    let watched_reads: f64 = task_ids.iter().map(|id| task_reads(&counters, id)).sum();
    (watched_reads / (task_ids.len() as f64 * control_reads.max(1.0)), control_reads)
}

/// Moves every task to `running`, one after another spread over two poll intervals so that
/// the changes land at every phase of the pollers. Returns when each steer was sent.
async fn steer_all(emulator: &EmulatorClient, task_ids: &[String]) -> Vec<Instant> {
    let mut steered = Vec::with_capacity(task_ids.len());
    for id in task_ids {
        steered.push(Instant::now());
        emulator.steer(id, "running").await;
        tokio::time::sleep(POLL_INTERVAL * 2 / task_ids.len() as u32).await;
    }
    steered
}

/// Waits for every watcher to end and returns, for each that saw `RUNNING`, the time from
/// its task's steer to the event's arrival, in milliseconds.
async fn change_delays_ms(watchers: Vec<(usize, JoinHandle<Option<Instant>>)>, steered: &[Instant]) -> Vec<f64> {
    let mut delays = Vec::with_capacity(watchers.len());
    for (task, handle) in watchers {
        if let Ok(Ok(Some(arrived))) = tokio::time::timeout(Duration::from_secs(30), handle).await {
            delays.push(arrived.saturating_duration_since(steered[task]).as_secs_f64() * 1e3);
        }
    }
    delays
}

/// The same count of open server streams on the bare tonic server, measured the same way
/// (from its connected baseline): tonic's own floor per stream, for comparison.
async fn bare_tonic_stream_kib(
    scale: &Scale,
    service: &ExportServiceClient<Channel>,
    task_id: &str,
    streams: usize,
) -> f64 {
    let task = service.clone().get_task(GetTaskRequest { task_id: task_id.to_owned() }).await;
    let task_hex = hex::encode(task.expect("GetTask of a watched task").into_inner().encode_to_vec());
    let bare = processes::start_echo(&task_hex).await;
    let clients = connect(&bare, scale.fanout_connections).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = procfs::rss_bytes(bare.pid());
    eprintln!("watch: opening {streams} streams on the bare tonic server");
    let progress = Arc::new(Progress::default());
    let watchers: Vec<_> = (0..streams)
        .map(|n| spawn_watcher(clients[n % clients.len()].clone(), task_id.to_owned(), Arc::clone(&progress)))
        .collect();
    let opened = wait_for(&progress.snapshots, streams, Duration::from_secs(60)).await;
    assert!(opened, "only {} of {streams} bare streams opened", progress.snapshots.load(Ordering::Relaxed));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_open = procfs::rss_bytes(bare.pid());
    for watcher in &watchers {
        watcher.abort();
    }
    rss_open.saturating_sub(rss_connected) as f64 / streams as f64 / 1024.0
}

/// One reading of the emulator's `get_task` counter.
pub(crate) struct Sample {
    pub(crate) at: Instant,
    unix_secs: f64,
    pub(crate) requests: u64,
}

pub(crate) async fn sample(emulator: &EmulatorClient) -> Sample {
    let counters = emulator.counters().await;
    let unix_secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    Sample { at: Instant::now(), unix_secs, requests: counters["routes"]["get_task"].as_u64().unwrap_or(0) }
}

/// The highest upstream rate over any window of about one second (raw: requests / length).
pub(crate) fn max_window_rate(samples: &[Sample]) -> f64 {
    one_second_windows(samples).map(|(requests, secs)| requests as f64 / secs).fold(0.0, f64::max)
}

/// The most requests any window (of about one second, or the whole run) held beyond what the
/// budget allows in its length, B·t. Paced requests put at most B·t + 1 into a window (the
/// fencepost); the emulator counts a request when it arrives while the budget paces its
/// sending, and the bench reads the counter over HTTP, which adds up to about one more.
pub(crate) fn max_excess_requests(samples: &[Sample], budget: f64) -> f64 {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return 0.0 };
    let whole = (last.requests.saturating_sub(first.requests), last.at.duration_since(first.at).as_secs_f64());
    one_second_windows(samples)
        .chain([whole])
        .map(|(requests, secs)| requests as f64 - budget * secs)
        .fold(f64::MIN, f64::max)
}

/// (requests, seconds) of every window from one sample to the first sample a second later.
fn one_second_windows(samples: &[Sample]) -> impl Iterator<Item = (u64, f64)> + '_ {
    samples.iter().enumerate().filter_map(|(i, start)| {
        let end = samples[i..].iter().find(|s| s.at.duration_since(start.at) >= Duration::from_secs(1))?;
        Some((end.requests.saturating_sub(start.requests), end.at.duration_since(start.at).as_secs_f64()))
    })
}

/// An upper bound of the requests the emulator refused with 429: its limiter counts each
/// calendar minute (its clock is real time here) and refuses past the limit. For each minute
/// the window overlaps, the requests counted between the last sample before the minute and the
/// first sample after it bound those the limiter saw; only what exceeds the limit can be a 429.
pub(crate) fn possible_429s(samples: &[Sample], limit: u64) -> u64 {
    let (Some(first), Some(last)) = (samples.first(), samples.last()) else { return 0 };
    let first_minute = (first.unix_secs / 60.0).floor() as i64;
    let last_minute = (last.unix_secs / 60.0).floor() as i64;
    (first_minute..=last_minute)
        .map(|minute| {
            let (start, end) = ((minute * 60) as f64, ((minute + 1) * 60) as f64);
            let before = samples.iter().rev().find(|s| s.unix_secs <= start).unwrap_or(first);
            let after = samples.iter().find(|s| s.unix_secs >= end).unwrap_or(last);
            after.requests.saturating_sub(before.requests).saturating_sub(limit)
        })
        .sum()
}

/// Figure 3: many tasks watched under a budget of B upstream requests per second, with the
/// emulator's `get_task` limit set to B·60 per minute, so that exceeding B would draw 429s.
pub async fn budget(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    let budget = scale.budget_per_second;
    let service =
        processes::start_service("service-budget", emulator_process, &["--upstream-poll-budget", &budget.to_string()])
            .await;
    let clients = connect(&service, scale.budget_connections).await;
    let task_ids = tasks::create(&clients[0], scale.budget_tasks).await;
    eprintln!("budget: watching {} tasks under {budget} requests/s for {:?}", task_ids.len(), scale.budget_window);

    emulator.reset_counters().await;
    let limit = u64::from(budget) * 60;
    emulator.control(reqwest::Method::PUT, "rate_limits", Some(json!({"get_task": limit}))).await;
    let progress = Arc::new(Progress::default());
    let watchers: Vec<_> = task_ids
        .iter()
        .enumerate()
        .map(|(n, id)| spawn_watcher(clients[n % clients.len()].clone(), id.clone(), Arc::clone(&progress)))
        .collect();

    let mut samples = vec![sample(emulator).await];
    let started = Instant::now();
    while started.elapsed() < scale.budget_window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(sample(emulator).await);
    }
    // A unary read through the service still succeeds: the rate-limit window is not used up.
    let unary = clients[0].clone().get_task(GetTaskRequest { task_id: task_ids[0].clone() }).await;
    let unary_ok = unary.is_ok();
    if let Err(status) = unary {
        eprintln!("budget: GetTask after the window failed: {status:?}");
    }
    for watcher in &watchers {
        watcher.abort();
    }
    emulator.control(reqwest::Method::PUT, "rate_limits", Some(json!({"get_task": 100_000_000}))).await;

    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let requests = last.requests.saturating_sub(first.requests);
    let mean_rate = requests as f64 / last.at.duration_since(first.at).as_secs_f64();
    vec![
        Figure::info("budget_tasks_watched", task_ids.len() as f64, "count"),
        Figure::info("budget_snapshots_delivered", progress.snapshots.load(Ordering::Relaxed) as f64, "count"),
        Figure::info("budget_limit_per_s", f64::from(budget), "1/s"),
        Figure::info("budget_mean_upstream_rate", mean_rate, "1/s"),
        Figure::info("budget_max_1s_upstream_rate", max_window_rate(&samples), "1/s"),
        Figure::target(
            "budget_max_excess_requests",
            max_excess_requests(&samples, f64::from(budget)),
            "count",
            Target::AtMost(2.0),
        ),
        Figure::target("budget_429s", possible_429s(&samples, limit) as f64, "count", Target::AtMost(0.0)),
        Figure::target("budget_unary_get_task_ok", if unary_ok { 1.0 } else { 0.0 }, "bool", Target::AtLeast(1.0)),
    ]
}
