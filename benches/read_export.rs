//! ReadExport benchmark: records per second and the service's peak memory while it streams
//! exports of growing size (up to 1 GiB and more), generated on the fly by the emulator.
//!
//! `cargo bench --bench read_export` runs the full sizes; `-- --quick` (or
//! `STREAM_EXPORT_BENCH_QUICK=1`) a few megabytes, for CI. The service runs as its own release
//! process, so its memory is read from `/proc/<pid>/status` (VmHWM,
//! the peak resident set), a fresh process per file so that each peak is that file's alone.
//! Prints a table and one `BENCH {json}` line per figure.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;
use stream_export::{
    emulator::{self, EmulatorConfig},
    proto::{ReadExportRequest, export_service_client::ExportServiceClient},
};
use tokio_stream::StreamExt;

const API_KEY: &str = "bench-key";
const API_SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";
const RECORD_BYTES: usize = 1024;
const MIB: u64 = 1024 * 1024;

/// One measured read.
struct Run {
    version: &'static str,
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
    let binary = release_binary();
    let _ = rustls::crypto::ring::default_provider().install_default();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the emulator");
    let emulator = emulator::spawn(listener, EmulatorConfig::new(API_KEY, API_SECRET)).await.expect("emulator");
    let control = reqwest::Client::new();

    let mut runs = Vec::new();
    for version in ["v2", "v1"] {
        for &mib in sizes_mib {
            let records = mib * MIB / RECORD_BYTES as u64;
            let created: serde_json::Value = control
                .post(format!("{}/_emulator/synthetic_exports", emulator.base_url()))
                .json(&json!({"records": records, "version": version, "record_bytes": RECORD_BYTES}))
                .send()
                .await
                .expect("create a synthetic export")
                .json()
                .await
                .expect("its task id");
            let task_id = created["task_id"].as_str().expect("a task id").to_owned();
            runs.push(measure(&binary, &emulator.base_url(), version, mib, &task_id).await);
        }
    }
    report(&runs);
    emulator.shutdown().await;
}

/// Reads the whole export through a fresh service process and measures it.
async fn measure(binary: &PathBuf, base_url: &str, version: &'static str, file_mib: u64, task_id: &str) -> Run {
    let mut service = Service::start(binary, base_url);
    let idle_rss_kib = service.status_kib("VmRSS");
    let mut client = ExportServiceClient::new(service.channel().await);
    let started = Instant::now();
    let mut stream = client
        .read_export(ReadExportRequest { task_id: task_id.into(), start_index: 0 })
        .await
        .expect("ReadExport starts")
        .into_inner();
    let mut records = 0u64;
    while let Some(record) = stream.next().await {
        let record = record.expect("every record arrives");
        assert_eq!(record.index, records, "records arrive in order");
        records += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_kib = service.status_kib("VmHWM");
    service.stop();
    Run { version, file_mib, records, seconds, peak_rss_kib, idle_rss_kib }
}

fn report(runs: &[Run]) {
    println!("\nReadExport: records streamed to a gRPC client, file generated on the fly by the emulator");
    println!(
        "{:<8} {:>9} {:>10} {:>9} {:>12} {:>9} {:>14}",
        "format", "file MiB", "records", "seconds", "records/s", "MiB/s", "peak RSS MiB"
    );
    for run in runs {
        println!(
            "{:<8} {:>9} {:>10} {:>9.2} {:>12.0} {:>9.1} {:>14.1}",
            run.version,
            run.file_mib,
            run.records,
            run.seconds,
            run.records as f64 / run.seconds,
            run.file_mib as f64 / run.seconds,
            run.peak_rss_kib as f64 / 1024.0
        );
        let summary = json!({
            "figure": format!("read_export_{}_{}mib", run.version, run.file_mib),
            "records": run.records,
            "records_per_second": (run.records as f64 / run.seconds).round(),
            "mib_per_second": (run.file_mib as f64 / run.seconds * 10.0).round() / 10.0,
            "peak_rss_mib": (run.peak_rss_kib as f64 / 102.4).round() / 10.0,
            "idle_rss_mib": (run.idle_rss_kib as f64 / 102.4).round() / 10.0,
        });
        println!("BENCH {summary}");
    }
    // Flat memory: the largest file's peak against the smallest's, per format.
    for version in ["v2", "v1"] {
        let of_version: Vec<&Run> = runs.iter().filter(|r| r.version == version).collect();
        if let (Some(small), Some(large)) = (of_version.first(), of_version.last()) {
            let growth = large.peak_rss_kib as f64 / small.peak_rss_kib.max(1) as f64;
            let flat = growth <= 1.25;
            println!(
                "{version}: file {}x larger, peak memory {:.2}x ({})",
                large.file_mib / small.file_mib.max(1),
                growth,
                if flat { "flat" } else { "NOT flat" }
            );
            let summary = json!({"figure": format!("read_export_{version}_memory_growth"), "value": (growth * 100.0).round() / 100.0, "target": "<=1.25", "met": flat});
            println!("BENCH {summary}");
        }
    }
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
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
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
