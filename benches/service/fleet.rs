//! Figure 7 (fleet mode, issue 12): three `stream-export serve` replicas sharing one
//! `redis-server`. Watch fan-out across the fleet (one poll per round for the whole fleet),
//! the fleet's one upstream budget, and the takeover of a task's poll when the polling
//! replica is killed.
//!
//! Each figure (and each takeover trial) gets a fresh Redis and fresh replicas, so no lease,
//! shared view or budget state carries over from one to the next.
//!
//! The fleet's cost (issue 32, [`cost`]): for each count of watched tasks, what the fleet asks of
//! Redis against the upstream work it coordinates, how fast a change reaches the other
//! replicas, and what Redis and the replicas spend on it.

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::future::join_all;
use serde_json::json;
use stream_export::proto::{
    TaskState, WatchTaskRequest, export_service_client::ExportServiceClient, task_event::EventType,
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
    watch::{self, Progress},
};

/// Replicas in every fleet of this figure.
const REPLICAS: usize = 3;

/// The fixed poll interval of the fan-out figure (as figure 2).
const FANOUT_POLL: &str = "200ms";

/// The shortest poll interval of the takeover figure; the lease is the default (3 s).
const TAKEOVER_POLL_MIN: &str = "200ms";

/// How long a takeover trial waits for the change to reach the surviving replicas.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(20);

/// A `redis-server` on a free loopback port, persistence off, killed (SIGKILL) on drop.
async fn start_redis() -> ChildProcess {
    let port = processes::free_port();
    let mut command = Command::new("redis-server");
    command.args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
    let mut redis = processes::spawn("redis", command, port);
    redis.wait_listening().await;
    redis
}

/// Three replicas and their Redis. The replicas are dropped (killed) before the Redis.
struct Fleet {
    replicas: Vec<ChildProcess>,
    redis: ChildProcess,
}

impl Fleet {
    /// Starts a Redis and three replicas on it, each with `flags`; `names` name their logs.
    async fn start(emulator_process: &ChildProcess, names: [&'static str; REPLICAS], flags: &[&str]) -> Self {
        let redis = start_redis().await;
        let url = format!("redis://127.0.0.1:{}", redis.port);
        let env = [("STREAM_EXPORT_REDIS_URL", url.as_str())];
        let replicas = join_all(
            names.into_iter().map(|name| processes::start_service_with_env(name, emulator_process, flags, &env)),
        )
        .await;
        Self { replicas, redis }
    }

    /// The scripts Redis has run so far (`EVALSHA` and `EVAL` in `INFO commandstats`): every
    /// call a replica makes is one (the commands inside them are counted apart, not here).
    async fn redis_calls(&self) -> u64 {
        let client = redis::Client::open(format!("redis://127.0.0.1:{}", self.redis.port)).expect("a Redis URL");
        let mut connection = client.get_multiplexed_async_connection().await.expect("Redis answers");
        let stats: String =
            redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await.expect("INFO answers");
        stats
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_eval"))
            .filter_map(|line| line.split_once("calls=")?.1.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// `per_replica` connections to each replica, by replica.
    async fn connect(&self, per_replica: usize) -> Vec<Vec<ExportServiceClient<Channel>>> {
        join_all(self.replicas.iter().map(|replica| watch::connect(replica, per_replica))).await
    }
}

/// Every fleet figure, one after another.
pub async fn run(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    let mut figures = fan_out(scale, emulator_process, emulator).await;
    figures.extend(budget(scale, emulator_process, emulator).await);
    figures.extend(takeover(scale, emulator_process, emulator).await);
    figures.extend(cost(scale, emulator_process, emulator).await);
    figures
}

/// Fan-out across the fleet: each task's watchers spread round robin over the three replicas,
/// a fixed poll interval, a budget that does not bind. Reads per poll round exactly as in
/// figure 2: the mean status reads of a watched task over the control task's reads (one
/// watcher, on one replica) in the same window. 1.0: the fleet polls each task once per round.
async fn fan_out(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    // Every stream is the same (anonymous) caller's: its limit is raised above the streams of
    // one replica.
    let flags = [
        "--watch-poll-min",
        FANOUT_POLL,
        "--watch-poll-max",
        FANOUT_POLL,
        "--upstream-poll-budget",
        "100000",
        "--watch-max-streams-per-caller",
        "20000",
    ];
    let names = ["fleet-fanout-1", "fleet-fanout-2", "fleet-fanout-3"];
    let fleet = Fleet::start(emulator_process, names, &flags).await;
    let clients = fleet.connect(scale.fleet_fanout_connections.div_ceil(REPLICAS)).await;
    let mut task_ids = tasks::create(&clients[0][0], scale.fleet_fanout_tasks + 1).await;
    let control_id = task_ids.pop().expect("a control task");

    let progress = Arc::new(Progress::default());
    let total = scale.fleet_fanout_tasks * scale.fleet_fanout_watchers_per_task;
    eprintln!("fleet: opening {total} streams over {} tasks on {REPLICAS} replicas", task_ids.len());
    let control = watch::spawn_watcher(clients[0][0].clone(), control_id.clone(), Arc::clone(&progress));
    // The k-th watcher of a task goes to replica k mod 3, and round robin over its connections.
    let mut opened = [0usize; REPLICAS];
    let watchers: Vec<_> = (0..total)
        .map(|n| {
            let (task, replica) = (n % task_ids.len(), (n / task_ids.len()) % REPLICAS);
            let connections = &clients[replica];
            let client = connections[opened[replica] % connections.len()].clone();
            opened[replica] += 1;
            watch::spawn_watcher(client, task_ids[task].clone(), Arc::clone(&progress))
        })
        .collect();
    let all_open = watch::wait_for(&progress.snapshots, total + 1, Duration::from_secs(120)).await;
    assert!(
        all_open,
        "only {} of {} streams got their snapshot",
        progress.snapshots.load(Ordering::Relaxed),
        total + 1
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    eprintln!("fleet: counting upstream reads for {:?}", scale.fleet_window);
    let (ratio, control_reads) = watch::reads_per_round(emulator, &task_ids, &control_id, scale.fleet_window).await;
    for watcher in watchers.iter().chain([&control]) {
        watcher.abort();
    }
    vec![
        Figure::info("fleet_fanout_streams", (total + 1) as f64, "count"),
        Figure::info("fleet_fanout_streams_first_replica", (opened[0] + 1) as f64, "count"),
        Figure::info("fleet_fanout_control_task_reads", control_reads, "count"),
        Figure::target("fleet_fanout_reads_per_round", ratio, "x", Target::AtMost(1.05)),
    ]
}

/// The fleet's one budget: every task watched on every replica, default poll intervals, the
/// emulator's `get_task` limit at B·60 per minute, and its counter sampled every 250 ms, as in
/// figure 3. Three replicas each keeping to B on their own would send about 3·B.
async fn budget(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    let budget = scale.budget_per_second;
    let names = ["fleet-budget-1", "fleet-budget-2", "fleet-budget-3"];
    let fleet = Fleet::start(emulator_process, names, &["--upstream-poll-budget", &budget.to_string()]).await;
    let clients = fleet.connect(scale.fleet_budget_connections_per_replica).await;
    let task_ids = tasks::create(&clients[0][0], scale.fleet_budget_tasks).await;
    eprintln!(
        "fleet: watching {} tasks on each of {REPLICAS} replicas under {budget} requests/s for {:?}",
        task_ids.len(),
        scale.fleet_budget_window
    );

    emulator.reset_counters().await;
    let limit = u64::from(budget) * 60;
    emulator.control(reqwest::Method::PUT, "rate_limits", Some(json!({"get_task": limit}))).await;
    let progress = Arc::new(Progress::default());
    let watchers: Vec<_> = task_ids
        .iter()
        .enumerate()
        .flat_map(|(n, id)| {
            clients.iter().map(move |connections| (connections[n % connections.len()].clone(), id.clone()))
        })
        .map(|(client, id)| watch::spawn_watcher(client, id, Arc::clone(&progress)))
        .collect();

    let mut samples = vec![watch::sample(emulator).await];
    let redis_calls_before = fleet.redis_calls().await;
    let started = Instant::now();
    while started.elapsed() < scale.fleet_budget_window {
        tokio::time::sleep(Duration::from_millis(250)).await;
        samples.push(watch::sample(emulator).await);
    }
    let redis_calls_per_s =
        fleet.redis_calls().await.saturating_sub(redis_calls_before) as f64 / started.elapsed().as_secs_f64();
    for watcher in &watchers {
        watcher.abort();
    }
    emulator.control(reqwest::Method::PUT, "rate_limits", Some(json!({"get_task": 100_000_000}))).await;

    let (first, last) = (&samples[0], &samples[samples.len() - 1]);
    let requests = last.requests.saturating_sub(first.requests);
    let mean_rate = requests as f64 / last.at.duration_since(first.at).as_secs_f64();
    vec![
        Figure::info("fleet_budget_tasks_watched", task_ids.len() as f64, "count"),
        Figure::info("fleet_budget_streams", watchers.len() as f64, "count"),
        Figure::info("fleet_budget_snapshots_delivered", progress.snapshots.load(Ordering::Relaxed) as f64, "count"),
        Figure::info("fleet_budget_limit_per_s", f64::from(budget), "1/s"),
        Figure::info("fleet_budget_mean_upstream_rate", mean_rate, "1/s"),
        Figure::info("fleet_budget_max_1s_upstream_rate", watch::max_window_rate(&samples), "1/s"),
        Figure::target(
            "fleet_budget_max_excess_requests",
            watch::max_excess_requests(&samples, f64::from(budget)),
            "count",
            Target::AtMost(2.0),
        ),
        Figure::info("fleet_budget_429s", watch::possible_429s(&samples, limit) as f64, "count"),
        // What the coordination costs Redis, against the work it coordinates (issue 32).
        Figure::info("fleet_upstream_polls_per_s", mean_rate, "1/s"),
        Figure::target(
            "fleet_redis_calls_per_s",
            redis_calls_per_s,
            "1/s",
            Target::AtMost(3.0 * mean_rate + 15.0 * REPLICAS as f64),
        ),
    ]
}

/// Takeover: a task watched on all three replicas, first on A (which takes the lease and
/// polls); A is killed (SIGKILL), the task is steered to `running` at once, and the time from
/// the kill until the change reaches the watchers on B and C (the later of the two) is one
/// trial. A fresh Redis and fresh replicas for each trial.
async fn takeover(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    let mut takeovers_ms = Vec::with_capacity(scale.fleet_takeover_trials);
    for trial in 1..=scale.fleet_takeover_trials {
        // Kill at a different phase of the pollers' and followers' cycles in each trial.
        let settle =
            Duration::from_millis(500) + Duration::from_secs(1) * trial as u32 / scale.fleet_takeover_trials as u32;
        match takeover_trial(emulator_process, emulator, settle).await {
            Some(ms) => {
                eprintln!("fleet: takeover trial {trial}: {ms:.0} ms");
                takeovers_ms.push(ms);
            }
            None => eprintln!("fleet: takeover trial {trial}: the change did not arrive within {TAKEOVER_LIMIT:?}"),
        }
    }
    let completed = takeovers_ms.len() as f64;
    let max = takeovers_ms.iter().copied().fold(f64::NAN, f64::max);
    let min = takeovers_ms.iter().copied().fold(f64::NAN, f64::min);
    vec![
        Figure::info("fleet_takeover_trials", completed, "count"),
        Figure::info("fleet_takeover_min_ms", min, "ms"),
        Figure::info("fleet_takeover_p50_ms", quantile(&mut takeovers_ms, 0.5), "ms"),
        Figure::info("fleet_takeover_max_ms", max, "ms"),
    ]
}

/// One takeover trial, killing A `settle` after B and C have their snapshot; `None` if the
/// change did not reach both surviving replicas in time.
async fn takeover_trial(emulator_process: &ChildProcess, emulator: &EmulatorClient, settle: Duration) -> Option<f64> {
    let names = ["fleet-takeover-a", "fleet-takeover-b", "fleet-takeover-c"];
    let mut fleet = Fleet::start(emulator_process, names, &["--watch-poll-min", TAKEOVER_POLL_MIN]).await;
    let clients = fleet.connect(1).await;
    let task_id = tasks::create(&clients[0][0], 1).await.pop().expect("a task");

    let progress = Arc::new(Progress::default());
    let on_a = watch::spawn_watcher(clients[0][0].clone(), task_id.clone(), Arc::clone(&progress));
    assert!(watch::wait_for(&progress.snapshots, 1, Duration::from_secs(10)).await, "no snapshot on replica A");
    let elsewhere: Vec<JoinHandle<Option<Instant>>> = clients[1..]
        .iter()
        .map(|connections| watch::spawn_watcher(connections[0].clone(), task_id.clone(), Arc::clone(&progress)))
        .collect();
    let followers = elsewhere.len();
    let all_open = watch::wait_for(&progress.snapshots, 1 + followers, Duration::from_secs(10)).await;
    assert!(all_open, "no snapshot on replicas B and C");
    // Let B and C settle into following.
    tokio::time::sleep(settle).await;

    let killed = Instant::now();
    fleet.replicas[0].kill();
    emulator.steer(&task_id, "running").await;
    let arrived = watch::wait_for(&progress.running_seen, followers, TAKEOVER_LIMIT).await;
    emulator.steer(&task_id, "completed").await;
    on_a.abort();
    let mut delays = Vec::with_capacity(followers);
    for handle in elsewhere {
        if let Ok(Ok(Some(running_at))) = tokio::time::timeout(Duration::from_secs(10), handle).await {
            delays.push(running_at.saturating_duration_since(killed));
        }
    }
    let later = delays.iter().max().filter(|_| arrived && delays.len() == followers);
    later.map(|later| later.as_secs_f64() * 1e3)
}

/// The fleet budget of the cost figures, upstream status reads per second for all replicas:
/// high enough that 10,000 tasks' first polls take under a minute (10,000 / 200 = 50 s), low
/// enough to bind at 10,000 tasks (their steady polls at the default 10 s interval would be
/// 1,000/s), as it would in production. The emulator's `get_task` limit stays far above it,
/// so no poll is refused.
const COST_BUDGET: u32 = 200;

/// Watch streams per connection in the cost figures: below the service's default
/// `--max-concurrent-streams` (200), as a client spreading its streams would keep them.
const COST_STREAMS_PER_CONNECTION: usize = 150;

/// Tasks steered to `running` during the window, for the follow delay, when there are more
/// than this many tasks (fewer: all of them).
const COST_FOLLOW_SAMPLE: usize = 200;

/// How long the MONITOR sample that tells a client's calls from a script's commands lasts.
const MONITOR_SAMPLE: Duration = Duration::from_secs(1);

/// The harness's own commands (its readings of `INFO`, its `MONITOR`): not the replicas' calls.
const HARNESS_COMMANDS: [&str; 2] = ["info", "monitor"];

/// The calls per command in `INFO commandstats` (`config|get` and the like keep their
/// subcommand), read on one connection opened before the window, so that its set-up commands
/// fall before the first reading.
async fn command_stats(connection: &mut redis::aio::MultiplexedConnection) -> HashMap<String, u64> {
    let stats: String = redis::cmd("INFO").arg("commandstats").query_async(connection).await.expect("INFO answers");
    stats
        .lines()
        .filter_map(|line| line.strip_prefix("cmdstat_")?.split_once(':'))
        .filter_map(|(name, fields)| {
            let calls = fields.split_once("calls=")?.1.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

/// For each command (lower case, no subcommand), how many times a client sent it and how many
/// times a script ran it, in `MONITOR`'s output over `MONITOR_SAMPLE` (`redis-cli monitor`):
/// a script's commands show there with the source `lua`, a client's with its address.
async fn monitor_sample(port: u16) -> HashMap<String, (u64, u64)> {
    let seconds = MONITOR_SAMPLE.as_secs_f64().to_string();
    let output = tokio::process::Command::new("timeout")
        .args([seconds.as_str(), "redis-cli", "-p", &port.to_string(), "monitor"])
        .output()
        .await
        .expect("run redis-cli monitor");
    let mut sample: HashMap<String, (u64, u64)> = HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        // `1796653524.615627 [0 lua] "SET" "a" "1"`
        let Some((source, command)) = line.split_once(" [").and_then(|(_, rest)| rest.split_once("] \"")) else {
            continue;
        };
        let Some(command) = command.split('"').next() else { continue };
        let counts = sample.entry(command.to_ascii_lowercase()).or_default();
        if source.ends_with(" lua") {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
    }
    sample
}

/// The calls the replicas made to Redis between two [`command_stats`] readings.
///
/// Found on Redis 7.0 with one `EVALSHA` whose script runs `SET`, `GET` and `INCR`, after
/// `CONFIG RESETSTAT`: `INFO commandstats` then shows `evalsha` with 1 call and `set`, `get`
/// and `incr` with 1 each, and `total_commands_processed` grows by 4, not 1. Redis counts the
/// commands a script runs as commands in both, so neither their sum nor
/// `total_commands_processed` is the count of calls; and one entry mixes both kinds (a plain
/// `GET` and a script's `GET` add to the same `cmdstat_get`). `MONITOR` tells them apart: a
/// script's commands show with the source `lua`. So each command's calls over the window are
/// counted in the share that `MONITOR`, sampled right after the window, saw sent by a client
/// (not during it: `MONITOR` slows Redis, whose CPU the window measures). A command the sample
/// did not see counts whole: the count can only err upwards. A call is what a client sends:
/// a pipeline of ten commands is ten calls, one script is one. The harness's own `INFO` and
/// `MONITOR` are left out.
fn replica_calls(
    before: &HashMap<String, u64>,
    after: &HashMap<String, u64>,
    sample: &HashMap<String, (u64, u64)>,
) -> (f64, Vec<(String, u64, f64)>) {
    let mut breakdown: Vec<(String, u64, f64)> = after
        .iter()
        .map(|(name, calls)| (name, calls.saturating_sub(before.get(name).copied().unwrap_or(0))))
        .filter(|(name, delta)| *delta > 0 && !HARNESS_COMMANDS.contains(&command_of(name)))
        .map(|(name, delta)| {
            let client_share = match sample.get(command_of(name)) {
                Some(&(client, script)) if client + script > 0 => client as f64 / (client + script) as f64,
                _ => 1.0,
            };
            (name.clone(), delta, client_share)
        })
        .collect();
    breakdown.sort_by_key(|(_, delta, _)| std::cmp::Reverse(*delta));
    let calls = breakdown.iter().map(|(_, delta, share)| *delta as f64 * share).sum();
    (calls, breakdown)
}

/// `config|get` → `config`: `MONITOR` names the command only.
fn command_of(stat_name: &str) -> &str {
    stat_name.split('|').next().unwrap_or(stat_name)
}

/// When each replica's watcher of each task saw `RUNNING`: `[task][replica]`.
type Arrivals = Vec<[OnceLock<Instant>; REPLICAS]>;

/// One watch stream of the cost figures: counts its snapshot (or its refusal), and notes when
/// `RUNNING` arrived in its slot of `arrivals`.
fn spawn_cost_watcher(
    mut client: ExportServiceClient<Channel>,
    task_id: String,
    (task, replica): (usize, usize),
    arrivals: Arc<Arrivals>,
    progress: Arc<CostProgress>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut stream = match client.watch_task(WatchTaskRequest { task_id }).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                if progress.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("fleet cost: a WatchTask was refused: {status:?}");
                }
                return;
            }
        };
        while let Some(Ok(event)) = stream.next().await {
            let state = event.task.as_ref().map_or(TaskState::Unspecified, |t| t.state());
            match event.r#type() {
                EventType::Snapshot => {
                    progress.snapshots.fetch_add(1, Ordering::Relaxed);
                }
                EventType::Changed
                    if state == TaskState::Running && arrivals[task][replica].set(Instant::now()).is_ok() =>
                {
                    progress.running_seen.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
    })
}

#[derive(Default)]
struct CostProgress {
    snapshots: AtomicUsize,
    running_seen: AtomicUsize,
    refused: AtomicUsize,
}

/// The fleet's cost (issue 32), for each count N of watched tasks in `scale.fleet_cost_sizes`:
/// a fresh Redis and three fresh replicas, each task watched once on every replica (streams
/// spread over connections of at most 150 streams), default poll intervals, a fleet budget of
/// [`COST_BUDGET`]. Measured over a steady window that starts once every stream has its
/// snapshot (or once the wait for them gives up: then the figures with a target are reported
/// as information only):
/// - `fleet_cost_<N>_upstream_polls_per_s`: the emulator's `get_task` reads per second;
/// - `fleet_cost_<N>_redis_calls_per_s`: the replicas' calls to Redis per second (see
///   [`replica_calls`]), with the target 3 × polls/s + 15 × replicas;
/// - `fleet_cost_<N>_follow_delay_p99_ms` (and p50): a sample of the tasks is steered to
///   `running` during the window; for each, the time from the first of its three watchers
///   seeing `RUNNING` (on the replica that polled) to the last (which heard through the fleet);
///   a task that some replicas had not heard of by the end of the wait counts with the time
///   it waited (`follow_partial` of them);
/// - `fleet_cost_<N>_replicas_cpu_share`: the three replicas' CPU seconds over the window per
///   second (on a machine that hosts all of it, whether the replicas kept up);
/// - `fleet_cost_<N>_redis_cpu_share`: Redis's CPU seconds over the window per second;
/// - `fleet_cost_<N>_rss_kib_per_task`: the replicas' RSS after every snapshot minus before
///   the first watch, summed over the replicas, per task and per replica (KiB).
pub async fn cost(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    emulator.control(reqwest::Method::PUT, "rate_limits", Some(json!({"get_task": 100_000_000}))).await;
    let mut figures = Vec::new();
    for &tasks in &scale.fleet_cost_sizes {
        figures.extend(cost_at(scale, emulator_process, emulator, tasks).await);
    }
    figures
}

/// A figure's name with its size in it, e.g. `fleet_cost_100_redis_calls_per_s`. Leaked: a
/// few short strings once per run, and `Figure` names are `'static`.
fn cost_name(tasks: usize, figure: &str) -> &'static str {
    Box::leak(format!("fleet_cost_{tasks}_{figure}").into_boxed_str())
}

/// The cost figures at one count of watched tasks.
async fn cost_at(
    scale: &Scale,
    emulator_process: &ChildProcess,
    emulator: &EmulatorClient,
    tasks: usize,
) -> Vec<Figure> {
    let started = Instant::now();
    let streams_limit = (tasks + 100).max(2_000).to_string();
    let flags = [
        "--upstream-poll-budget",
        &COST_BUDGET.to_string(),
        "--watch-max-streams",
        &(tasks + 100).max(20_000).to_string(),
        "--watch-max-streams-per-caller",
        &streams_limit,
    ];
    let names = ["fleet-cost-1", "fleet-cost-2", "fleet-cost-3"];
    let fleet = Fleet::start(emulator_process, names, &flags).await;
    let clients = fleet.connect(tasks.div_ceil(COST_STREAMS_PER_CONNECTION).max(2)).await;
    let task_ids = tasks::create(&clients[0][0], tasks).await;
    eprintln!(
        "fleet cost: {tasks} tasks created in {:.1} s; opening {} streams on {REPLICAS} replicas ({} connections each)",
        started.elapsed().as_secs_f64(),
        tasks * REPLICAS,
        clients[0].len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = || fleet.replicas.iter().map(|replica| procfs::rss_bytes(replica.pid())).sum::<u64>();
    let rss_before = rss();

    let arrivals: Arc<Arrivals> = Arc::new((0..tasks).map(|_| Default::default()).collect());
    let progress = Arc::new(CostProgress::default());
    let watchers: Vec<JoinHandle<()>> = task_ids
        .iter()
        .enumerate()
        .flat_map(|(task, id)| {
            clients.iter().enumerate().map(move |(replica, connections)| {
                (connections[task % connections.len()].clone(), id.clone(), (task, replica))
            })
        })
        .map(|(client, id, slot)| spawn_cost_watcher(client, id, slot, Arc::clone(&arrivals), Arc::clone(&progress)))
        .collect();
    let streams = watchers.len();
    let snapshot_limit = (scale.fleet_cost_snapshot_limit_per_1000 * tasks as u32 / 1000).max(Duration::from_secs(60));
    let opening = Instant::now();
    let all_open = watch::wait_for(&progress.snapshots, streams, snapshot_limit).await;
    let snapshots = progress.snapshots.load(Ordering::Relaxed);
    let refused = progress.refused.load(Ordering::Relaxed);
    eprintln!(
        "fleet cost: {snapshots} of {streams} streams got their snapshot in {:.1} s{}{}",
        opening.elapsed().as_secs_f64(),
        if all_open { "" } else { " (gave up waiting)" },
        if refused > 0 { format!(", {refused} refused") } else { String::new() }
    );
    let rss_open = rss();

    // The window: the upstream's reads, Redis's calls and CPU, while a sample of the tasks is
    // steered to `running` at an even pace.
    let sample: Vec<usize> = if tasks <= COST_FOLLOW_SAMPLE {
        (0..tasks).collect()
    } else {
        (0..COST_FOLLOW_SAMPLE).map(|n| n * tasks / COST_FOLLOW_SAMPLE).collect()
    };
    let redis_client = redis::Client::open(format!("redis://127.0.0.1:{}", fleet.redis.port)).expect("a Redis URL");
    let mut redis_connection = redis_client.get_multiplexed_async_connection().await.expect("Redis answers");
    eprintln!("fleet cost: measuring {tasks} tasks for {:?}, steering {}", scale.fleet_cost_window, sample.len());
    let reads_before = emulator.counters().await;
    let polls_before = watch::sample(emulator).await;
    let stats_before = command_stats(&mut redis_connection).await;
    let cpu_before = procfs::cpu_time(fleet.redis.pid());
    let replicas_cpu = || fleet.replicas.iter().map(|replica| procfs::cpu_time(replica.pid())).sum::<Duration>();
    let replicas_cpu_before = replicas_cpu();
    let window_start = Instant::now();
    for (n, &task) in sample.iter().enumerate() {
        let at = window_start + scale.fleet_cost_window * n as u32 / sample.len() as u32;
        tokio::time::sleep_until(at.into()).await;
        emulator.steer(&task_ids[task], "running").await;
    }
    tokio::time::sleep_until((window_start + scale.fleet_cost_window).into()).await;
    let polls_after = watch::sample(emulator).await;
    let reads_after = emulator.counters().await;
    let stats_after = command_stats(&mut redis_connection).await;
    let cpu_after = procfs::cpu_time(fleet.redis.pid());
    let replicas_cpu_after = replicas_cpu();
    let window = window_start.elapsed().as_secs_f64();

    let monitored = monitor_sample(fleet.redis.port).await;
    let (calls, breakdown) = replica_calls(&stats_before, &stats_after, &monitored);
    let redis_calls_per_s = calls / window;
    let redis_commands_per_s = breakdown.iter().map(|(_, delta, _)| *delta as f64).sum::<f64>() / window;
    let top: Vec<String> = breakdown
        .iter()
        .take(8)
        .map(|(name, delta, share)| {
            format!("{name} {:.0}/s ({:.0}% from clients)", *delta as f64 / window, share * 100.0)
        })
        .collect();
    eprintln!("fleet cost: Redis commands over the window: {}", top.join(", "));
    let polls_per_s = polls_after.requests.saturating_sub(polls_before.requests) as f64
        / polls_after.at.duration_since(polls_before.at).as_secs_f64();
    let redis_cpu_share = cpu_after.saturating_sub(cpu_before).as_secs_f64() / window;
    let replicas_cpu_share = replicas_cpu_after.saturating_sub(replicas_cpu_before).as_secs_f64() / window;

    // The steered tasks' changes: a task unchanged for a while is polled at up to the longest
    // interval (10 s), and under the budget all tasks take N / budget seconds to go round.
    let follow_limit = Duration::from_secs(12) + Duration::from_secs_f64(tasks as f64 / f64::from(COST_BUDGET));
    let everyone = sample.len() * REPLICAS;
    let waiting = Instant::now();
    while progress.running_seen.load(Ordering::Relaxed) < everyone && waiting.elapsed() < follow_limit {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A task that reached some replicas but not all by the end of the wait counts with the
    // time from its first arrival to the end of the wait, a lower bound of its delay: leaving
    // it out would report the fast ones only. A task no watcher saw was not polled in time,
    // which is no follow delay; those are counted apart (`follow_steered` minus the others).
    let waited = Instant::now();
    let mut spreads_ms = Vec::with_capacity(sample.len());
    let (mut followed, mut partly_followed) = (0, 0);
    // Which replicas' watchers saw the change, for the tasks that did not reach all of them.
    let mut partial_sets: HashMap<Vec<usize>, usize> = HashMap::new();
    for &task in &sample {
        let seen: Vec<Instant> = arrivals[task].iter().filter_map(|at| at.get().copied()).collect();
        if !seen.is_empty() && seen.len() < REPLICAS {
            let replicas = (0..REPLICAS).filter(|&r| arrivals[task][r].get().is_some()).collect();
            *partial_sets.entry(replicas).or_default() += 1;
        }
        let (Some(first), Some(last)) = (seen.iter().min(), seen.iter().max()) else { continue };
        let last = if seen.len() == REPLICAS {
            followed += 1;
            *last
        } else {
            partly_followed += 1;
            waited
        };
        spreads_ms.push(last.duration_since(*first).as_secs_f64() * 1e3);
    }
    // A steered task that no watcher saw: was it polled at all after its steer (the emulator's
    // status reads of it)?
    let reads_end = emulator.counters().await;
    let reads = |counters: &serde_json::Value, task: usize| counters["tasks"][&task_ids[task]].as_u64().unwrap_or(0);
    let steered_unpolled = sample.iter().filter(|&&task| reads(&reads_end, task) == reads(&reads_before, task)).count();
    // How evenly the budget went round: tasks not polled at all during the window, and the
    // most polls one task had in it.
    let window_reads: Vec<u64> =
        (0..tasks).map(|task| reads(&reads_after, task).saturating_sub(reads(&reads_before, task))).collect();
    let unpolled_in_window = window_reads.iter().filter(|&&n| n == 0).count();
    let most_polls = window_reads.iter().copied().max().unwrap_or(0);
    for watcher in &watchers {
        watcher.abort();
    }
    drop(fleet);
    let seconds = started.elapsed().as_secs_f64();
    if !partial_sets.is_empty() {
        eprintln!(
            "fleet cost: tasks that reached only some replicas (0-based), by the replicas they reached: {partial_sets:?}"
        );
    }
    eprintln!(
        "fleet cost: {tasks} tasks: {polls_per_s:.1} polls/s, {redis_calls_per_s:.0} Redis calls/s; of {} steered \
         tasks {followed} reached all replicas within {follow_limit:?} of the window's end, {partly_followed} only \
         some, {steered_unpolled} were not polled after their steer; {unpolled_in_window} tasks not polled in the window, at most {most_polls} polls of one; \
         {seconds:.0} s in all",
        sample.len()
    );

    // Rounded to a tenth, for the table.
    let calls_target = Target::AtMost(((3.0 * polls_per_s + 15.0 * REPLICAS as f64) * 10.0).round() / 10.0);
    let delay_p50 = quantile(&mut spreads_ms, 0.5);
    let delay_p99 = quantile(&mut spreads_ms, 0.99);
    let judged = |name: &'static str, value: f64, unit: &'static str, target: Target| {
        if all_open { Figure::target(name, value, unit, target) } else { Figure::info(name, value, unit) }
    };
    let per_task_kib = rss_open.saturating_sub(rss_before) as f64 / 1024.0 / tasks as f64 / REPLICAS as f64;
    vec![
        Figure::info(cost_name(tasks, "streams"), streams as f64, "count"),
        Figure::info(cost_name(tasks, "snapshots_delivered"), snapshots as f64, "count"),
        Figure::info(cost_name(tasks, "upstream_polls_per_s"), polls_per_s, "1/s"),
        judged(cost_name(tasks, "redis_calls_per_s"), redis_calls_per_s, "1/s", calls_target),
        Figure::info(cost_name(tasks, "redis_commands_per_s"), redis_commands_per_s, "1/s"),
        Figure::info(cost_name(tasks, "follow_steered"), sample.len() as f64, "count"),
        Figure::info(cost_name(tasks, "follow_sample"), followed as f64, "count"),
        Figure::info(cost_name(tasks, "follow_partial"), partly_followed as f64, "count"),
        Figure::info(cost_name(tasks, "follow_steered_unpolled"), steered_unpolled as f64, "count"),
        Figure::info(cost_name(tasks, "tasks_unpolled_in_window"), unpolled_in_window as f64, "count"),
        Figure::info(cost_name(tasks, "most_polls_of_a_task_in_window"), most_polls as f64, "count"),
        Figure::info(cost_name(tasks, "follow_delay_p50_ms"), delay_p50, "ms"),
        judged(cost_name(tasks, "follow_delay_p99_ms"), delay_p99, "ms", Target::AtMost(300.0)),
        Figure::info(cost_name(tasks, "redis_cpu_share"), redis_cpu_share, "cores"),
        Figure::info(cost_name(tasks, "replicas_cpu_share"), replicas_cpu_share, "cores"),
        Figure::info(cost_name(tasks, "rss_kib_per_task"), per_task_kib, "KiB"),
        Figure::info(cost_name(tasks, "seconds"), seconds, "s"),
    ]
}
