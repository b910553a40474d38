//! The state directory against memory, side by side in one run (issue 31 §3):
//! - `GetTask` CPU on the release service with tokens and `teams.cedar`, its state in a state
//!   directory against `--memory-state` (each call looks the task up in the registry and notes
//!   what it read there), in alternating rounds; and the registry lookup alone, in process;
//! - the submit p50 added by the durable writes of a submit with a `request_id`: the claim and
//!   the record in the idempotency store (`get_or_submit` with an instant submit), then the
//!   task's record in the registry;
//! - the time to reopen a state directory holding N registry records, up to the first read;
//! - file size and RSS while M submits go through both stores (the service's write path) past
//!   their capacities.
//!
//! `cargo bench --bench store` (100,000 records, 1,000,000 submits); `-- --quick` runs in
//! seconds with small counts; `-- --get-task-only` measures `GetTask` alone; `-- --submits N`
//! runs N steady submits instead.

#[allow(dead_code)]
#[path = "service/processes.rs"]
mod processes;
#[allow(dead_code)]
#[path = "service/procfs.rs"]
mod procfs;
#[allow(dead_code)]
#[path = "service/tasks.rs"]
mod tasks;

use std::{
    path::Path,
    time::{Duration, Instant},
};

use futures::{FutureExt, future::join_all};
use stream_export::{
    emulator::data::LIVESTREAM_CHANNEL,
    proto::{GetTaskRequest, TaskRecord, export_service_client::ExportServiceClient},
    store::{
        Fingerprint, MemoryRegistry, MemoryStore, SubmitStore, TaskRegistry,
        embedded::{DATABASE_FILE, EmbeddedRegistry, EmbeddedSubmitStore, StateDir},
    },
};
use tonic::transport::Channel;

fn record(number: usize) -> TaskRecord {
    let at = chrono::Utc::now() - chrono::Duration::seconds(1_000_000 - number as i64 % 1_000_000);
    TaskRecord {
        task_id: uuid::Uuid::new_v4().to_string(),
        owner: format!("caller-{}", number % 7),
        rpc: "ExportChannels".into(),
        create_time: Some(prost_types::Timestamp { seconds: at.timestamp(), nanos: 0 }),
        ..TaskRecord::default()
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmRSS:"))
                .and_then(|line| line.split_whitespace().nth(1).and_then(|kib| kib.parse().ok()))
        })
        .unwrap_or(0)
}

fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stream-export-bench-store-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir
}

async fn lookups(registry: &dyn TaskRegistry, ids: &[String], rounds: usize) -> Duration {
    let started = Instant::now();
    for round in 0..rounds {
        let id = &ids[round % ids.len()];
        assert!(registry.get(id).await.expect("get").is_some());
    }
    started.elapsed() / rounds as u32
}

/// One submit with a `request_id` as the service writes it: the idempotency store's claim and
/// record around an instant upstream call, then the task's record in the registry unless the
/// store wrote it with its record (the state directory does). How long each of the two took.
async fn submit(
    store: &dyn SubmitStore,
    registry: &dyn TaskRegistry,
    key: String,
    number: usize,
) -> (Duration, Duration) {
    let fingerprint = Fingerprint::of("ExportChannels", &"body");
    let task_id = uuid::Uuid::new_v4().to_string();
    let upstream = futures::future::ready(Ok(task_id)).boxed();
    let started = Instant::now();
    let (submitted, recorded) =
        store.get_or_submit_recording(key, fingerprint, upstream, record(number)).await.expect("submit");
    let submitted_at = Instant::now();
    if !recorded {
        registry.record(TaskRecord { task_id: submitted.task_id, ..record(number) }).await.expect("record");
    }
    (submitted_at - started, submitted_at.elapsed())
}

/// The p50 of `count` submits: of the idempotency store's part, of the registry's, of both.
async fn submit_p50(store: &dyn SubmitStore, registry: &dyn TaskRegistry, count: usize) -> [Duration; 3] {
    let (mut stored, mut recorded, mut both) = (Vec::new(), Vec::new(), Vec::new());
    for number in 0..count {
        let (store_time, record_time) = submit(store, registry, format!("key-{number}"), number).await;
        stored.push(store_time);
        recorded.push(record_time);
        both.push(store_time + record_time);
    }
    [median(stored), median(recorded), median(both)]
}

/// The example policy set: `platform` may read every task, `analytics` its own.
const POLICY_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/policy/examples/teams.cedar");
const ANALYTICS: &str = "Bearer bench-token-analytics-0123456789";
const PLATFORM: &str = "Bearer bench-token-platform-0123456789a";

/// A service under `GetTask` load: its process, a client, and the task it reads.
struct Service {
    process: processes::ChildProcess,
    client: ExportServiceClient<Channel>,
    task_id: String,
}

impl Service {
    /// The release service with tokens and `teams.cedar`, its state in `state_dir` (or in
    /// memory), and one task submitted by `analytics`.
    async fn start(name: &'static str, emulator: &processes::ChildProcess, state_dir: Option<&Path>) -> Self {
        let tokens = std::env::temp_dir().join(format!("stream-export-bench-store-tokens-{}", std::process::id()));
        std::fs::write(
            &tokens,
            "analytics bench-token-analytics-0123456789\nplatform bench-token-platform-0123456789a\n",
        )
        .expect("write the tokens file");
        let tokens = tokens.to_str().expect("a UTF-8 path").to_owned();
        let args = ["--auth-tokens-file", tokens.as_str(), "--policy-file", POLICY_FILE];
        let process = processes::start_service_in(name, emulator, state_dir, &args, &[("RUST_LOG", "warn")]).await;
        let client = ExportServiceClient::new(process.channel().await);
        let task_id = tasks::create_as(&client, ANALYTICS, LIVESTREAM_CHANNEL).await;
        Self { process, client, task_id }
    }

    /// `concurrency` callers send `platform`'s `GetTask` back to back for `window`: the
    /// service's CPU time per call.
    async fn cpu_per_call(&self, concurrency: usize, window: Duration) -> Duration {
        let cpu_before = procfs::cpu_time(self.process.pid());
        let deadline = Instant::now() + window;
        let workers = (0..concurrency).map(|_| {
            let (mut client, task_id) = (self.client.clone(), self.task_id.clone());
            tokio::spawn(async move {
                let mut calls = 0u32;
                while Instant::now() < deadline {
                    let mut request = tonic::Request::new(GetTaskRequest { task_id: task_id.clone() });
                    request.metadata_mut().insert("authorization", PLATFORM.parse().expect("ASCII"));
                    client.get_task(request).await.expect("GetTask succeeds");
                    calls += 1;
                }
                calls
            })
        });
        let calls: u32 = join_all(workers).await.into_iter().map(|calls| calls.expect("a load worker")).sum();
        procfs::cpu_time(self.process.pid()).saturating_sub(cpu_before) / calls.max(1)
    }
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (records, submits, rounds) = if quick { (1_000, 1_000, 20_000) } else { (100_000, 1_000_000, 500_000) };
    // `--submits N`: another count of steady submits (the capacities are a tenth of it).
    let args: Vec<String> = std::env::args().collect();
    let submits =
        args.iter().position(|arg| arg == "--submits").and_then(|at| args.get(at + 1)?.parse().ok()).unwrap_or(submits);
    let (get_rounds, get_window, get_concurrency) =
        if quick { (2, Duration::from_millis(300), 4) } else { (9, Duration::from_secs(2), 8) };
    // `--get-task-only`: the GetTask figure alone.
    let get_task_only = std::env::args().any(|arg| arg == "--get-task-only");
    println!("# store bench ({})", if quick { "quick" } else { "full" });

    // GetTask through the service, state directory against memory, in rotating rounds, with a
    // second memory service as a control: how far two identical services drift apart here.
    {
        let emulator = processes::start_emulator().await;
        let dir = scratch();
        let services = [
            Service::start("service-memory-state", &emulator, None).await,
            Service::start("service-state-dir", &emulator, Some(&dir)).await,
            Service::start("service-memory-control", &emulator, None).await,
        ];
        for service in &services {
            let _ = service.cpu_per_call(get_concurrency, get_window / 4).await;
        }
        let mut cpu: [Vec<Duration>; 3] = Default::default();
        for round in 0..get_rounds {
            // Each round starts with another service, so that none always follows the same one.
            for k in 0..services.len() {
                let at = (round + k) % services.len();
                cpu[at].push(services[at].cpu_per_call(get_concurrency, get_window).await);
            }
        }
        let [on_memory, on_disk, on_control] = cpu.map(median);
        let ratio = |cpu: Duration| cpu.as_secs_f64() / on_memory.as_secs_f64();
        println!(
            "GetTask CPU (tokens and teams.cedar, median of {get_rounds} rounds): memory {on_memory:.1?}, \
             state directory {on_disk:.1?} per call ({:.2}x); a second memory service, as a control: \
             {on_control:.1?} ({:.2}x)",
            ratio(on_disk),
            ratio(on_control)
        );
        drop((services, emulator));
        let _ = std::fs::remove_dir_all(&dir);
    }

    if get_task_only {
        return;
    }

    // Registry lookups, in process.
    let dir = scratch();
    let state = StateDir::open(&dir).expect("state");
    let disk = EmbeddedRegistry::new(state.db(), records * 2);
    let mut ids = Vec::new();
    {
        let memory = MemoryRegistry::new(records * 2);
        let filled = Instant::now();
        for number in 0..records {
            let record = record(number);
            ids.push(record.task_id.clone());
            memory.record(record.clone()).await.expect("memory");
            disk.record(record).await.expect("disk");
        }
        println!("filled {records} records in {:.1?} (each a durable commit on disk)", filled.elapsed());
        let (on_memory, on_disk) = (lookups(&memory, &ids, rounds).await, lookups(&disk, &ids, rounds).await);
        println!(
            "registry lookup alone, in process: memory {on_memory:.2?}, disk {on_disk:.2?} per call ({:.2}x, \
             {:+.2?})",
            on_disk.as_secs_f64() / on_memory.as_secs_f64(),
            on_disk.saturating_sub(on_memory)
        );
    }
    drop(disk);
    drop(state);

    // Restart.
    let size = std::fs::metadata(dir.join(DATABASE_FILE)).map_or(0, |meta| meta.len());
    let reopened = Instant::now();
    let state = StateDir::open(&dir).expect("reopen");
    let disk = EmbeddedRegistry::new(state.db(), records * 2);
    assert!(disk.get(&ids[0]).await.expect("read").is_some(), "the record is there after the reopen");
    println!(
        "restart with {records} registry records ({:.1} MiB file): {:.1?} to open and read one",
        size as f64 / 1_048_576.0,
        reopened.elapsed()
    );
    drop(disk);
    drop(state);
    drop(ids);
    let _ = std::fs::remove_dir_all(&dir);

    // Submits: p50, then steady load past both capacities.
    let dir = scratch();
    let state = StateDir::open(&dir).expect("state");
    let capacity = (submits / 10).max(1_000);
    let ttl = Duration::from_secs(3600);
    let disk_store =
        EmbeddedSubmitStore::new(state.db(), ttl, capacity as u64).expect("store").recording_into_registry(capacity);
    let disk_registry = EmbeddedRegistry::new(state.db(), capacity);
    let sample = if quick { 200 } else { 2_000 };
    let p50_memory = {
        let (store, registry) = (MemoryStore::new(ttl, capacity as u64), MemoryRegistry::new(capacity));
        submit_p50(&store, &registry, sample).await
    };
    let p50_disk = submit_p50(&disk_store, &disk_registry, sample).await;
    let added = |part: usize| p50_disk[part].saturating_sub(p50_memory[part]);
    println!(
        "submit p50 (idempotency claim and record, then registry record): memory {:.2?}, disk {:.2?}, added by the \
         durable writes {:.2?} (the idempotency store {:.2?} + the registry {:.2?}: p50s of each part)",
        p50_memory[2],
        p50_disk[2],
        added(2),
        added(0),
        added(1)
    );
    let rss_before = rss_kib();
    let steady = Instant::now();
    for number in 0..submits {
        let _ = submit(&disk_store, &disk_registry, format!("steady-{number}"), number).await;
        if (number + 1) % (submits / 10).max(1) == 0 {
            let size = std::fs::metadata(dir.join(DATABASE_FILE)).map_or(0, |meta| meta.len());
            let rss = rss_kib();
            println!(
                "after {:>9} submits (capacities {capacity}): file {:>6.1} MiB, RSS {:>6.1} MiB ({:+.1}), {:.0?} per \
                 submit",
                number + 1,
                size as f64 / 1_048_576.0,
                rss as f64 / 1024.0,
                (rss as f64 - rss_before as f64) / 1024.0,
                steady.elapsed() / (number + 1) as u32
            );
        }
    }
    drop(disk_store);
    drop(disk_registry);
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
}
