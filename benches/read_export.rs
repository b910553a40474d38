//! ReadExport benchmark: records per second and the service's peak memory while it streams
//! exports of growing size (up to 1 GiB and more), generated on the fly by the emulator.
//!
//! `cargo bench --bench read_export` runs the full sizes; `-- --quick` (or
//! `STREAM_EXPORT_BENCH_QUICK=1`) a few megabytes, for CI; `-- --only v2:1024` one format and size
//! alone (both encodings, no saves), for profiling. The service runs as its own release
//! process, so its memory is read from `/proc/<pid>/status` (VmHWM,
//! the peak resident set), a fresh process per file so that each peak is that file's alone.
//! Prints a table and one `BENCH {json}` line per figure.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

#[path = "python_grpc.rs"]
mod python_grpc;
#[path = "read_export/save.rs"]
mod save;

use serde_json::json;
use stream_export::{
    emulator::{self, EmulatorConfig},
    proto::{ReadExportRequest, RecordEncoding, export_service_client::ExportServiceClient},
};
use tokio_stream::StreamExt;

const API_KEY: &str = "bench-key";
const API_SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const RECORD_BYTES: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// One measured read.
struct Run {
    version: &'static str,
    encoding: RecordEncoding,
    file_mib: u64,
    records: u64,
    seconds: f64,
    peak_rss_kib: u64,
    idle_rss_kib: u64,
}

#[tokio::main]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick") || std::env::var_os("STREAM_EXPORT_BENCH_QUICK").is_some();
    let sizes_mib: &[u64] = if quick { &[2, 8] } else { &[64, 256, 1024] };
    // For profiling one case: `-- --only v2:1024` reads that file alone and skips the saves.
    let only = std::env::args().skip_while(|a| a != "--only").nth(1);
    let only =
        only.as_deref().and_then(|o| o.split_once(':')).map(|(v, m)| (v.to_owned(), m.parse::<u64>().unwrap_or(0)));
    let sizes_mib: &[u64] = match &only {
        Some((_, mib)) => std::slice::from_ref(mib),
        None => sizes_mib,
    };
    let binary = release_binary();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the emulator");
    let emulator = emulator::spawn(listener, EmulatorConfig::new(API_KEY, API_SECRET)).await.expect("emulator");
    let control = reqwest::Client::new();

    let mut runs = Vec::new();
    let mut largest = Vec::new();
    for version in ["v2", "v1"] {
        if only.as_ref().is_some_and(|(v, _)| v != version) {
            continue;
        }
        for &mib in sizes_mib {
            let records = mib * MIB / RECORD_BYTES as u64;
            let spec = json!({"records": records, "version": version, "record_bytes": RECORD_BYTES});
            let task_id = synthetic_export(&control, &emulator.base_url(), &spec).await;
            for encoding in [RecordEncoding::Struct, RecordEncoding::Json] {
                runs.push(measure(&binary, &emulator.base_url(), version, encoding, mib, &task_id).await);
            }
            if Some(&mib) == sizes_mib.last() {
                largest.push((version, task_id));
            }
        }
    }
    report(&runs);
    if only.is_some() {
        emulator.shutdown().await;
        return;
    }
    let largest_mib = sizes_mib.last().copied().unwrap_or(0);
    // Saving, first from a source paced like a remote file store (the issue measured its plain
    // download at 2.5-2.8 s per GiB), then from the unpaced generator: the service's own ceiling.
    for (version, _) in &largest {
        let records = largest_mib * MIB / RECORD_BYTES as u64;
        let paced = json!({"records": records, "version": version, "record_bytes": RECORD_BYTES,
                           "mib_per_second": save::PACED_SOURCE_MIB_PER_SECOND});
        let task_id = synthetic_export(&control, &emulator.base_url(), &paced).await;
        save::compare(&binary, &emulator.base_url(), version, largest_mib, &task_id, save::Source::Paced).await;
    }
    for (version, task_id) in &largest {
        save::compare(&binary, &emulator.base_url(), version, largest_mib, task_id, save::Source::Unpaced).await;
    }
    emulator.shutdown().await;
}

/// Creates a synthetic export in the emulator (`spec` as `/_emulator/synthetic_exports` takes it)
/// and returns its task id.
async fn synthetic_export(control: &reqwest::Client, base_url: &str, spec: &serde_json::Value) -> String {
    let created: serde_json::Value = control
        .post(format!("{base_url}/_emulator/synthetic_exports"))
        .json(spec)
        .send()
        .await
        .expect("create a synthetic export")
        .json()
        .await
        .expect("its task id");
    created["task_id"].as_str().expect("a task id").to_owned()
}

/// Reads the whole export through a fresh service process and measures it.
async fn measure(
    binary: &PathBuf,
    base_url: &str,
    version: &'static str,
    encoding: RecordEncoding,
    file_mib: u64,
    task_id: &str,
) -> Run {
    let mut service = Service::start(binary, base_url);
    let idle_rss_kib = service.status_kib("VmRSS");
    let mut client = ExportServiceClient::new(service.channel().await);
    let started = Instant::now();
    let mut stream = client
        .read_export(ReadExportRequest { task_id: task_id.into(), start_index: 0, encoding: encoding.into() })
        .await
        .expect("ReadExport starts")
        .into_inner();
    let mut records = 0u64;
    while let Some(message) = stream.next().await {
        let message = message.expect("every record arrives");
        assert_eq!(message.index, records, "records arrive in order");
        records += message.json.len().max(1) as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_kib = service.status_kib("VmHWM");
    service.stop();
    Run { version, encoding, file_mib, records, seconds, peak_rss_kib, idle_rss_kib }
}

fn report(runs: &[Run]) {
    println!("\nReadExport: records streamed to a gRPC client, file generated on the fly by the emulator");
    println!(
        "{:<8} {:<9} {:>9} {:>10} {:>9} {:>12} {:>9} {:>14}",
        "format", "encoding", "file MiB", "records", "seconds", "records/s", "MiB/s", "peak RSS MiB"
    );
    for run in runs {
        println!(
            "{:<8} {:<9} {:>9} {:>10} {:>9.2} {:>12.0} {:>9.1} {:>14.1}",
            run.version,
            encoding_name(run.encoding),
            run.file_mib,
            run.records,
            run.seconds,
            run.records_per_second(),
            run.file_mib as f64 / run.seconds,
            run.peak_rss_kib as f64 / 1024.0
        );
        // The Struct figures keep their names from before the JSON encoding existed.
        let prefix = if run.encoding == RecordEncoding::Json { "read_export_json" } else { "read_export" };
        let summary = json!({
            "figure": format!("{prefix}_{}_{}mib", run.version, run.file_mib),
            "records": run.records,
            "records_per_second": run.records_per_second().round(),
            "mib_per_second": (run.file_mib as f64 / run.seconds * 10.0).round() / 10.0,
            "peak_rss_mib": (run.peak_rss_kib as f64 / 102.4).round() / 10.0,
            "idle_rss_mib": (run.idle_rss_kib as f64 / 102.4).round() / 10.0,
        });
        println!("BENCH {summary}");
    }
    for version in ["v2", "v1"] {
        // Flat memory: the largest file's peak against the smallest's, per format and encoding.
        for encoding in [RecordEncoding::Struct, RecordEncoding::Json] {
            let of: Vec<&Run> = runs.iter().filter(|r| r.version == version && r.encoding == encoding).collect();
            let (Some(small), Some(large)) = (of.first(), of.last()) else { continue };
            let growth = large.peak_rss_kib as f64 / small.peak_rss_kib.max(1) as f64;
            let flat = growth <= 1.25;
            println!(
                "{version} {}: file {}x larger, peak memory {growth:.2}x ({})",
                encoding_name(encoding),
                large.file_mib / small.file_mib.max(1),
                if flat { "flat" } else { "NOT flat" }
            );
            let name = match encoding {
                RecordEncoding::Json => format!("read_export_json_{version}_memory_growth"),
                _ => format!("read_export_{version}_memory_growth"),
            };
            let summary =
                json!({"figure": name, "value": (growth * 100.0).round() / 100.0, "target": "<=1.25", "met": flat});
            println!("BENCH {summary}");
        }
        // JSON against Struct on the largest file, in this run.
        let largest = |encoding| runs.iter().rfind(|r| r.version == version && r.encoding == encoding);
        if let (Some(structs), Some(json)) = (largest(RecordEncoding::Struct), largest(RecordEncoding::Json)) {
            let speedup = json.records_per_second() / structs.records_per_second();
            let target = if version == "v2" { 4.0 } else { 3.0 };
            println!("{version}: JSON records/s {speedup:.2}x the Struct encoding's (target >= {target}x)");
            let summary = json!({
                "figure": format!("read_export_json_speedup_{version}"),
                "value": (speedup * 100.0).round() / 100.0,
                "unit": "x",
                "target": format!(">={target}"),
                "met": speedup >= target,
            });
            println!("BENCH {summary}");
        }
    }
}

impl Run {
    fn records_per_second(&self) -> f64 {
        self.records as f64 / self.seconds
    }
}

fn encoding_name(encoding: RecordEncoding) -> &'static str {
    if encoding == RecordEncoding::Json { "json" } else { "struct" }
}

/// The service binary that cargo built for this bench (release profile).
fn release_binary() -> PathBuf {
    std::env::var_os("STREAM_EXPORT_BIN")
        .map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_stream-export")), PathBuf::from)
}

/// A `stream-export serve` process.
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    fn start(binary: &PathBuf, base_url: &str) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("addr").port();
        let mut child = Command::new(binary)
            .args(["serve", "--memory-state", "--listen", &format!("127.0.0.1:{port}")])
            .env_clear()
            .env("STREAM_BASE_URL", base_url)
            .env("STREAM_API_KEY", API_KEY)
            .env("STREAM_API_SECRET", API_SECRET)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::piped())
            .spawn()
            .expect("the service starts");
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                BufReader::new(stderr).lines().map_while(Result::ok).for_each(|l| eprintln!("{l}"))
            });
        }
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(20), "the service did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{}", self.port))
            .expect("endpoint")
            .connect()
            .await
            .expect("connects")
    }

    /// A `/proc/<pid>/status` field in KiB.
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| {
                line.strip_prefix(field)?.trim_start_matches(':').trim().strip_suffix(" kB")?.trim().parse().ok()
            })
            .unwrap_or(0)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
