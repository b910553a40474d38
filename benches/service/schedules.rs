//! Figure 12 (export schedules, issue 35): many schedules on one replica, each firing every
//! second (interval 1 s, lag 0). How long after its window ends each window's job is created
//! (p50, p99, max), whether every window fired exactly once (none missed, none twice, the windows
//! of each schedule tiling time, each under its own `request_id`), and the service's CPU over
//! the run as a share of one core.
//!
//! The service runs with caps that do not bind (running jobs, schedules per caller, the export
//! and poll budgets, watch streams), against an emulator that completes an export the moment it
//! is submitted, so that each job is one submit and one poll and the schedules' own bound
//! (`--schedule-catch-up` jobs running per schedule, the default) is not reached while the
//! service keeps up. Stream itself allows 60 exports a minute per app: against it, the export
//! budget would pace these jobs at one a second. What is measured here is the service's firing
//! (and the jobs it starts), not Stream.
//!
//! Run twice: with the state in a state directory (the default, as deployed) and in memory.
//! `STREAM_EXPORT_BENCH_SCHEDULES=N` runs N schedules instead of the scale's (to find how many
//! one replica keeps up with).

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{StreamExt, stream};
use stream_export::{
    emulator::data::KNOWN_CHANNEL,
    proto::{
        ChannelList, ChannelRef, CreateExportJobRequest, CreateExportScheduleRequest, ExportJob, ExportJobState,
        ExportSchedule, ListExportJobsRequest, ListExportSchedulesRequest, create_export_job_request::Selector,
        export_service_client::ExportServiceClient,
    },
};
use tonic::transport::Channel;

use crate::{
    Scale,
    processes::{self, API_KEY, API_SECRET, ChildProcess, EmulatorClient},
    procfs,
    report::{Figure, Target, quantile},
};

/// Every schedule's window length (and the "firing every second").
const INTERVAL_MICROS: i64 = 1_000_000;
/// Creates in flight at once.
const CREATES_IN_FLIGHT: usize = 16;
/// The largest page of `ListExportJobs`.
const PAGE_SIZE: i32 = 1000;

/// Where the service keeps its state in one run.
#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// `--state-dir`: the default, as deployed.
    Directory,
    /// `--memory-state`.
    Memory,
}

/// The names of one run's figures (a `Figure`'s name is static).
struct Names {
    delay_p50: &'static str,
    delay_p99: &'static str,
    delay_max: &'static str,
    delay_min: &'static str,
    expected: &'static str,
    fired: &'static str,
    missed: &'static str,
    behind: &'static str,
    twice: &'static str,
    untiled: &'static str,
    service_cpu: &'static str,
    emulator_cpu: &'static str,
    exports_per_s: &'static str,
    job_seconds_p99: &'static str,
    create_seconds: &'static str,
    rss_growth: &'static str,
}

impl State {
    fn names(self) -> Names {
        match self {
            State::Directory => Names {
                delay_p50: "schedule_fire_delay_p50_ms",
                delay_p99: "schedule_fire_delay_p99_ms",
                delay_max: "schedule_fire_delay_max_ms",
                delay_min: "schedule_fire_delay_min_ms",
                expected: "schedule_windows_expected",
                fired: "schedule_windows_fired",
                missed: "schedule_windows_missed",
                behind: "schedule_windows_behind",
                twice: "schedule_windows_twice",
                untiled: "schedule_windows_untiled",
                service_cpu: "schedule_service_cpu_cores",
                emulator_cpu: "schedule_emulator_cpu_cores",
                exports_per_s: "schedule_exports_per_s",
                job_seconds_p99: "schedule_job_seconds_p99",
                create_seconds: "schedule_create_seconds",
                rss_growth: "schedule_service_rss_growth_mib",
            },
            State::Memory => Names {
                delay_p50: "schedule_fire_delay_p50_ms_memory",
                delay_p99: "schedule_fire_delay_p99_ms_memory",
                delay_max: "schedule_fire_delay_max_ms_memory",
                delay_min: "schedule_fire_delay_min_ms_memory",
                expected: "schedule_windows_expected_memory",
                fired: "schedule_windows_fired_memory",
                missed: "schedule_windows_missed_memory",
                behind: "schedule_windows_behind_memory",
                twice: "schedule_windows_twice_memory",
                untiled: "schedule_windows_untiled_memory",
                service_cpu: "schedule_service_cpu_cores_memory",
                emulator_cpu: "schedule_emulator_cpu_cores_memory",
                exports_per_s: "schedule_exports_per_s_memory",
                job_seconds_p99: "schedule_job_seconds_p99_memory",
                create_seconds: "schedule_create_seconds_memory",
                rss_growth: "schedule_service_rss_growth_mib_memory",
            },
        }
    }

    fn label(self) -> &'static str {
        match self {
            State::Directory => "state directory",
            State::Memory => "memory",
        }
    }
}

pub async fn run(scale: &Scale) -> Vec<Figure> {
    let mut figures = fire(scale, State::Directory).await;
    figures.extend(fire(scale, State::Memory).await);
    figures
}

/// An emulator whose exports complete as soon as they are submitted, with no rate limit in the way.
async fn emulator(name: &'static str) -> ChildProcess {
    let port = processes::free_port();
    let mut command = Command::new(processes::service_binary());
    command
        .arg("emulator")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-key", API_KEY, "--api-secret", API_SECRET])
        .args(["--waiting-ms", "0", "--pending-ms", "0", "--running-ms", "0", "--rate-limit", "100000000"])
        .env("RUST_LOG", "warn");
    let mut child = processes::spawn(name, command, port);
    child.wait_listening().await;
    child
}

/// The service's flags: no cap of jobs, schedules, budgets or watch streams binds at this load;
/// the schedules' own settings (`--schedule-tick`, `--schedule-catch-up`) are the defaults.
fn service_flags(schedules: usize) -> Vec<String> {
    let plenty = (schedules * 100).max(10_000).to_string();
    let mut flags: Vec<String> = Vec::new();
    for (flag, value) in [
        ("--schedule-max-per-caller", schedules.max(100).to_string()),
        ("--schedule-max", schedules.max(10_000).to_string()),
        ("--job-max-running", plenty.clone()),
        ("--job-max-running-per-caller", plenty.clone()),
        // Per minute: ten times the firing rate, so that the export pacer never holds a job.
        ("--upstream-export-budget", (schedules * 600).max(600).to_string()),
        // Per second: each job's task is polled once or twice.
        ("--upstream-poll-budget", (schedules * 10).max(100).to_string()),
        ("--watch-max-streams", plenty.clone()),
        ("--watch-max-streams-per-caller", plenty),
    ] {
        flags.push(flag.into());
        flags.push(value);
    }
    flags
}

fn micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_micros() as i64)
}

fn timestamp_micros(timestamp: Option<&prost_types::Timestamp>) -> Option<i64> {
    timestamp.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000)
}

fn timestamp_of(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

/// The schedule: one known channel, every second from `start_micros`, no lag.
fn schedule(start_micros: i64) -> ExportSchedule {
    let (kind, id) = KNOWN_CHANNEL.split_once(':').expect("KNOWN_CHANNEL is type:id");
    ExportSchedule {
        template: Some(CreateExportJobRequest {
            selector: Some(Selector::Channels(ChannelList {
                channels: vec![ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }],
            })),
            ..Default::default()
        }),
        interval: Some(prost_types::Duration { seconds: INTERVAL_MICROS / 1_000_000, nanos: 0 }),
        lag: Some(prost_types::Duration { seconds: 0, nanos: 0 }),
        start_time: Some(timestamp_of(start_micros)),
        ..Default::default()
    }
}

/// Waits until the wall clock reads `micros`.
async fn sleep_until_micros(target: i64) {
    let now = micros(SystemTime::now());
    if target > now {
        tokio::time::sleep(Duration::from_micros((target - now) as u64)).await;
    }
}

/// The jobs the service listed, each as last seen. The service keeps the newest 10,000 finished
/// jobs (`store::jobs::FINISHED_JOBS_KEPT`), fewer than a run creates, so the jobs are read
/// during the run, every [`READ_EVERY`], each read going back only as far as the last one.
#[derive(Default)]
struct Collected {
    jobs: HashMap<String, ExportJob>,
    /// When the last read started (µs): the next goes back to a little before it.
    last_read: Option<i64>,
}

/// How often the jobs are read during a run: fewer than 10,000 finish in this time.
const READ_EVERY: Duration = Duration::from_secs(5);

impl Collected {
    /// Reads the jobs created since (a little before) the last read, newest first.
    async fn read(&mut self, client: &mut ExportServiceClient<Channel>) {
        // A job's create_time is taken just before it is stored: a margin for the ones in between.
        let since = self.last_read.map_or(i64::MIN, |at| at - 2_000_000);
        self.last_read = Some(micros(SystemTime::now()));
        let mut page_token = String::new();
        loop {
            let page = client
                .list_export_jobs(ListExportJobsRequest { page_size: PAGE_SIZE, page_token, ..Default::default() })
                .await
                .expect("ListExportJobs")
                .into_inner();
            let reached =
                page.jobs.last().is_none_or(|oldest| timestamp_micros(oldest.create_time.as_ref()) < Some(since));
            for job in page.jobs {
                self.jobs.insert(job.job_id.clone(), job);
            }
            if reached || page.next_page_token.is_empty() {
                return;
            }
            page_token = page.next_page_token;
        }
    }
}

/// Every schedule the service lists.
async fn list_schedules(client: &mut ExportServiceClient<Channel>) -> Vec<ExportSchedule> {
    let mut schedules = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_export_schedules(ListExportSchedulesRequest { page_size: PAGE_SIZE, page_token })
            .await
            .expect("ListExportSchedules")
            .into_inner();
        schedules.extend(page.schedules);
        if page.next_page_token.is_empty() {
            return schedules;
        }
        page_token = page.next_page_token;
    }
}

/// Exports the emulator was asked for so far.
async fn exports_submitted(emulator: &EmulatorClient) -> u64 {
    emulator.counters().await["routes"]["export_channels"].as_u64().unwrap_or(0)
}

async fn fire(scale: &Scale, state: State) -> Vec<Figure> {
    let count = std::env::var("STREAM_EXPORT_BENCH_SCHEDULES")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(scale.schedule_count);
    let names = state.names();
    let emulator_process = emulator("schedules-emulator").await;
    let emulator_client = EmulatorClient::new(emulator_process.url());
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-schedules-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let state_dir = (state == State::Directory).then_some(dir.as_path());
    let flags = service_flags(count);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let service = processes::start_service_in("schedules-service", &emulator_process, state_dir, &flags, &[]).await;
    let client = ExportServiceClient::new(service.channel().await).max_decoding_message_size(64 << 20);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_before = procfs::rss_bytes(service.pid());

    // The first window starts on the whole second after the creates should be done, so that
    // no window is due before every schedule exists (a window due at its create is a backfill,
    // whose delay is the create's, not the firing's).
    let start_micros = (micros(SystemTime::now() + scale.schedule_lead) / INTERVAL_MICROS + 1) * INTERVAL_MICROS;
    let creating = Instant::now();
    let ids: Vec<String> = stream::iter(0..count)
        .map(|_| {
            let mut client = client.clone();
            async move {
                let request =
                    CreateExportScheduleRequest { schedule: Some(schedule(start_micros)), ..Default::default() };
                client.create_export_schedule(request).await.expect("CreateExportSchedule").into_inner().schedule_id
            }
        })
        .buffer_unordered(CREATES_IN_FLIGHT)
        .collect()
        .await;
    let create_seconds = creating.elapsed().as_secs_f64();
    let created_at = micros(SystemTime::now());
    if created_at > start_micros + INTERVAL_MICROS {
        println!(
            "schedules ({}): the creates ended {:.2} s after the first window did: its delays include them",
            state.label(),
            (created_at - start_micros - INTERVAL_MICROS) as f64 / 1e6
        );
    }

    // The run: from the first window's start, `schedule_run` seconds of windows.
    sleep_until_micros(start_micros).await;
    let (service_cpu_before, emulator_cpu_before) =
        (procfs::cpu_time(service.pid()), procfs::cpu_time(emulator_process.pid()));
    let submits_before = exports_submitted(&emulator_client).await;
    let running = Instant::now();
    let stop_micros = start_micros + scale.schedule_run.as_micros() as i64;
    let mut collected = Collected::default();
    loop {
        let next_read = micros(SystemTime::now()) + READ_EVERY.as_micros() as i64;
        if next_read >= stop_micros {
            break;
        }
        sleep_until_micros(next_read).await;
        collected.read(&mut client.clone()).await;
    }
    sleep_until_micros(stop_micros).await;
    let run_seconds = running.elapsed().as_secs_f64();
    let service_cpu = procfs::cpu_time(service.pid()).saturating_sub(service_cpu_before);
    let emulator_cpu = procfs::cpu_time(emulator_process.pid()).saturating_sub(emulator_cpu_before);
    let submits = exports_submitted(&emulator_client).await.saturating_sub(submits_before);
    let rss_after = procfs::rss_bytes(service.pid());
    // Every window that ended by the stop has had `schedule_settle` more to fire.
    tokio::time::sleep(scale.schedule_settle).await;
    let read_micros = micros(SystemTime::now());
    // The schedules first: every window they count as started has its job in the read after.
    let started: HashMap<String, u64> = list_schedules(&mut client.clone())
        .await
        .into_iter()
        .map(|schedule| (schedule.schedule_id, schedule.windows_started))
        .collect();
    collected.read(&mut client.clone()).await;
    let jobs: Vec<ExportJob> = collected.jobs.into_values().collect();

    let windows = Windows::of(&ids, &jobs, start_micros, stop_micros, read_micros);
    let started_by_cursors: u64 = started.values().sum();
    // Windows the schedules count as started whose jobs the bench never saw (forgotten before a
    // read): the bench's blind spot, which would hide a gap there.
    let unseen: usize = started
        .iter()
        .map(|(id, &count)| {
            let seen = windows.seen.get(id);
            (0..count as i64)
                .filter(|k| !seen.is_some_and(|seen| seen.contains(&(start_micros + k * INTERVAL_MICROS))))
                .count()
        })
        .sum();
    drop(service);
    let _ = std::fs::remove_dir_all(&dir);
    let mut delays = windows.delays_ms.clone();
    let mut job_seconds = windows.job_seconds.clone();
    println!(
        "schedules ({}): {count} schedules, {:.1} s run, {} windows expected, {} fired, {} behind ({} fired in \
         all by the read, {:.1} s after the stop; {started_by_cursors} by the schedules' counts, {unseen} of them \
         unseen by the bench), {} jobs read, {submits} exports submitted in the run, {} jobs of the run seen \
         SUCCEEDED",
        state.label(),
        run_seconds,
        windows.expected,
        windows.fired_in_run,
        windows.behind,
        windows.fired_total,
        (read_micros - stop_micros) as f64 / 1e6,
        jobs.len(),
        windows.succeeded,
    );
    vec![
        Figure::info(names.delay_p50, quantile(&mut delays, 0.5), "ms"),
        Figure::info(names.delay_p99, quantile(&mut delays, 0.99), "ms"),
        Figure::info(names.delay_max, quantile(&mut delays, 1.0), "ms"),
        // The floor: the phase of the service's tick against the windows' ends.
        Figure::info(names.delay_min, quantile(&mut delays, 0.0), "ms"),
        Figure::info(names.expected, windows.expected as f64, ""),
        Figure::info(names.fired, windows.fired_in_run as f64, ""),
        Figure::target(names.missed, windows.missed as f64, "", Target::AtMost(0.0)),
        Figure::info(names.behind, windows.behind as f64, ""),
        Figure::target(names.twice, windows.twice as f64, "", Target::AtMost(0.0)),
        Figure::target(names.untiled, windows.untiled as f64, "", Target::AtMost(0.0)),
        Figure::info(names.service_cpu, service_cpu.as_secs_f64() / run_seconds, "cores"),
        Figure::info(names.emulator_cpu, emulator_cpu.as_secs_f64() / run_seconds, "cores"),
        Figure::info(names.exports_per_s, submits as f64 / run_seconds, "/s"),
        Figure::info(names.job_seconds_p99, quantile(&mut job_seconds, 0.99), "s"),
        Figure::info(names.create_seconds, create_seconds, "s"),
        Figure::info(names.rss_growth, rss_after.saturating_sub(rss_before) as f64 / f64::from(1 << 20), "MiB"),
    ]
}

/// What the listed jobs say about the schedules' windows.
#[derive(Default)]
struct Windows {
    /// Windows that ended by the stop, over all schedules.
    expected: usize,
    /// Of those, the windows that have a job.
    fired_in_run: usize,
    /// Windows with a job, the ones that ended after the stop included.
    fired_total: usize,
    /// Windows with no job before a later window of the same schedule that has one: a gap,
    /// which the cursor (moved with each job's creation, in window order) must never leave.
    missed: usize,
    /// Windows that ended by the stop and had no job yet when the jobs were read, after every
    /// fired window of their schedule: the firing is behind (too slow), not skipping.
    behind: usize,
    /// Jobs beyond the first of a window (the same `messages_since` or `request_id` again).
    twice: usize,
    /// Jobs whose window is not one of its schedule's (a start off the grid, a length other than
    /// the interval, an end that is not the next start minus 1 µs, a `request_id` that does not
    /// name the window), or that belong to no schedule of the run.
    untiled: usize,
    /// Per window that ended by the stop: its job's `create_time` − (window end + lag), in ms;
    /// for a window still behind at the read, the read's time − its end (a lower bound), so
    /// that a slow firing does not leave its worst delays out.
    delays_ms: Vec<f64>,
    /// Per job of the run that ended: `end_time` − `create_time`, in seconds.
    job_seconds: Vec<f64>,
    /// Jobs of the run's windows that SUCCEEDED by the read.
    succeeded: usize,
    /// Per schedule, the starts of the windows that have a job.
    seen: HashMap<String, HashSet<i64>>,
}

impl Windows {
    fn of(ids: &[String], jobs: &[ExportJob], start: i64, stop: i64, read: i64) -> Self {
        let mut windows = Self::default();
        let schedules: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let mut seen: HashMap<String, HashSet<i64>> = HashMap::new();
        let mut request_ids: HashSet<String> = HashSet::new();
        for job in jobs {
            if job.schedule_id.is_empty() {
                continue;
            }
            let request = job.request.clone().unwrap_or_default();
            let (Some(since), Some(until), Some(created)) = (
                timestamp_micros(request.messages_since.as_ref()),
                timestamp_micros(request.messages_until.as_ref()),
                timestamp_micros(job.create_time.as_ref()),
            ) else {
                windows.untiled += 1;
                continue;
            };
            let end = until + 1;
            let on_grid = since >= start && (since - start) % INTERVAL_MICROS == 0 && end == since + INTERVAL_MICROS;
            let named = request.request_id == format!("schedule:{}:window:{since}", job.schedule_id);
            if !schedules.contains(job.schedule_id.as_str()) || !on_grid || !named {
                windows.untiled += 1;
                continue;
            }
            if !seen.entry(job.schedule_id.clone()).or_default().insert(since)
                || !request_ids.insert(request.request_id.clone())
            {
                windows.twice += 1;
                continue;
            }
            windows.fired_total += 1;
            if end <= stop {
                windows.fired_in_run += 1;
                windows.delays_ms.push((created - end) as f64 / 1000.0);
                if job.state() == ExportJobState::Succeeded {
                    windows.succeeded += 1;
                }
                if let Some(ended) = timestamp_micros(job.end_time.as_ref()) {
                    windows.job_seconds.push((ended - created) as f64 / 1e6);
                }
            }
        }
        let per_schedule = ((stop - start) / INTERVAL_MICROS).max(0) as usize;
        windows.expected = per_schedule * ids.len();
        let empty = HashSet::new();
        for id in ids {
            let fired = seen.get(id).unwrap_or(&empty);
            let after_last = fired.iter().max().map_or(0, |last| (last - start) / INTERVAL_MICROS + 1);
            for k in 0..per_schedule as i64 {
                let window_start = start + k * INTERVAL_MICROS;
                if fired.contains(&window_start) {
                    continue;
                }
                if k < after_last {
                    windows.missed += 1;
                } else {
                    windows.behind += 1;
                    windows.delays_ms.push((read - (window_start + INTERVAL_MICROS)) as f64 / 1000.0);
                }
            }
        }
        windows.seen = seen;
        windows
    }
}
