//! The state directory against memory, side by side in one run (issue 31 §3):
//! - the registry lookup every policy-checked GetTask makes (CPU per lookup, disk vs memory);
//! - the submit p50 added by the durable claim and record (`get_or_submit` with an instant submit);
//! - the time to reopen a state directory holding N registry records;
//! - file size and RSS after M submits through both stores (steady load past the capacity).
//!
//! `cargo bench --bench store` (100,000 records, 1,000,000 submits); `-- --quick` runs in
//! seconds with small counts.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use futures::FutureExt;
use stream_export::{
    proto::TaskRecord,
    store::{
        Fingerprint, MemoryRegistry, MemoryStore, SubmitStore, TaskRegistry,
        embedded::{DATABASE_FILE, EmbeddedRegistry, EmbeddedSubmitStore, StateDir},
    },
};

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

async fn submit_p50(store: &dyn SubmitStore, count: usize) -> Duration {
    let mut times = Vec::with_capacity(count);
    let fingerprint = Fingerprint::of("ExportChannels", &"body");
    for number in 0..count {
        let started = Instant::now();
        let submit = async move { Ok(format!("task-{number}")) }.boxed();
        store.get_or_submit(format!("key-{number}"), fingerprint, submit).await.expect("submit");
        times.push(started.elapsed());
    }
    times.sort();
    times[times.len() / 2]
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|arg| arg == "--quick");
    let (records, submits, rounds) = if quick { (1_000, 1_000, 20_000) } else { (100_000, 1_000_000, 500_000) };
    println!("# store bench ({})", if quick { "quick" } else { "full" });

    // Registry lookups.
    let dir = scratch();
    let state = StateDir::open(&dir).expect("state");
    let disk = EmbeddedRegistry::new(state.db(), records * 2);
    let memory = MemoryRegistry::new(records * 2);
    let mut ids = Vec::new();
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
        "registry lookup (each policy-checked GetTask): memory {on_memory:.2?}, disk {on_disk:.2?} per call \
         ({:.2}x, {:+.2?})",
        on_disk.as_secs_f64() / on_memory.as_secs_f64(),
        on_disk.saturating_sub(on_memory)
    );
    drop(disk);
    drop(state);

    // Restart.
    let reopened = Instant::now();
    let state = StateDir::open(&dir).expect("reopen");
    let disk = EmbeddedRegistry::new(state.db(), records * 2);
    let _ = disk.get(&ids[0]).await;
    println!("restart with {records} registry records: {:.1?}", reopened.elapsed());
    drop(disk);
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);

    // Submits: p50 and steady state.
    let dir = scratch();
    let state = StateDir::open(&dir).expect("state");
    let capacity = (submits / 10).max(1_000) as u64;
    let disk_store =
        Arc::new(EmbeddedSubmitStore::new(state.db(), Duration::from_secs(3600), capacity).expect("store"));
    let memory_store = MemoryStore::new(Duration::from_secs(3600), capacity);
    let sample = if quick { 200 } else { 2_000 };
    let (p50_memory, p50_disk) = (submit_p50(&memory_store, sample).await, submit_p50(&*disk_store, sample).await);
    println!(
        "submit p50: memory {p50_memory:.2?}, disk {p50_disk:.2?} (added by the durable claim and record: {:.2?})",
        p50_disk.saturating_sub(p50_memory)
    );
    let fingerprint = Fingerprint::of("ExportChannels", &"body");
    let rss_before = rss_kib();
    for number in 0..submits {
        let submit = async move { Ok(format!("task-{number}")) }.boxed();
        disk_store.get_or_submit(format!("steady-{number}"), fingerprint, submit).await.expect("submit");
        if (number + 1) % (submits / 4).max(1) == 0 {
            let size = std::fs::metadata(dir.join(DATABASE_FILE)).map_or(0, |meta| meta.len());
            println!(
                "after {:>9} submits (capacity {capacity}): file {:>6.1} MiB, RSS {:>6.1} MiB (+{:.1})",
                number + 1,
                size as f64 / 1_048_576.0,
                rss_kib() as f64 / 1024.0,
                (rss_kib().saturating_sub(rss_before)) as f64 / 1024.0
            );
        }
    }
    drop(disk_store);
    drop(state);
    let _ = std::fs::remove_dir_all(&dir);
}
