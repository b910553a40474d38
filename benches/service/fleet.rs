//! Figure 7 (fleet mode, issue 12): three `stream-export serve` replicas sharing one
//! `redis-server`. Watch fan-out across the fleet (one poll per round for the whole fleet),
//! the fleet's one upstream budget, and the takeover of a task's poll when the polling
//! replica is killed.
//!
//! Each figure (and each takeover trial) gets a fresh Redis and fresh replicas, so no lease,
//! shared view or budget state carries over from one to the next.

use std::{
    process::Command,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use futures::future::join_all;
use serde_json::json;
use stream_export::proto::export_service_client::ExportServiceClient;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use crate::{
    Scale,
    processes::{self, ChildProcess, EmulatorClient},
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
    figures
}

/// Fan-out across the fleet: each task's watchers spread round robin over the three replicas,
/// a fixed poll interval, a budget that does not bind. Reads per poll round exactly as in
/// figure 2: the mean status reads of a watched task over the control task's reads (one
/// watcher, on one replica) in the same window. 1.0: the fleet polls each task once per round.
async fn fan_out(scale: &Scale, emulator_process: &ChildProcess, emulator: &EmulatorClient) -> Vec<Figure> {
    let flags = ["--watch-poll-min", FANOUT_POLL, "--watch-poll-max", FANOUT_POLL, "--upstream-poll-budget", "100000"];
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
