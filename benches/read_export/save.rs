//! Saving an export to a file, as users do it, against a plain download of the same file:
//! `stream-export task watch ID --output FILE` (the CLI, JSON records), the README's Python
//! example (grpcio, JSON records, when Python with grpcio is present), and `curl -o` of the
//! task's result URL (or reqwest when there is no curl). Runs alternate, median of 3 each.
//!
//! The targets hold for a source paced like a remote file store ([`Source::Paced`]); from the
//! unpaced generator (several GiB/s on loopback) the ratios are reported without a target: they
//! show what the service itself costs when the source is never the bottleneck.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use serde_json::json;
use stream_export::proto::{GetTaskRequest, export_service_client::ExportServiceClient};

use super::{Service, python_grpc::python_with_grpcio};

/// Trials per way of saving.
const TRIALS: usize = 3;

/// The paced source's rate: the plain download took 2.5-2.8 s per GiB (366-410 MiB/s).
pub const PACED_SOURCE_MIB_PER_SECOND: u32 = 400;

/// Where the export file comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The emulator serves it at [`PACED_SOURCE_MIB_PER_SECOND`]: the targets' figures.
    Paced,
    /// As fast as the emulator generates it: `..._unpaced` figures, without targets.
    Unpaced,
}

/// Targets from the issue: saving through the service at most this many times the download.
fn target(figure: &str) -> Option<f64> {
    match figure {
        "export_save_ratio" => Some(1.25),
        "export_save_ratio_v1" => Some(1.6),
        "export_save_ratio_python" => Some(2.0),
        _ => None,
    }
}

/// Measures the ways of saving the export `task_id` (`version`, `file_mib`) and prints the ratios.
pub async fn compare(binary: &PathBuf, base_url: &str, version: &str, file_mib: u64, task_id: &str, source: Source) {
    let mut service = Service::start(binary, base_url);
    let server = format!("http://127.0.0.1:{}", service.port);
    let mut client = ExportServiceClient::new(service.channel().await);
    let directory = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = directory.join(format!("bench-save-{version}.jsonl"));
    let python = python_with_grpcio();

    let (mut download, mut cli, mut py) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        // The URL is re-signed at each status call, as a user would get it.
        let task = client.get_task(GetTaskRequest { task_id: task_id.into() }).await.expect("the task").into_inner();
        let url = task.result.expect("a completed task has a result").url;
        download.push(timed(&file, || plain_download(&url, &file)));
        cli.push(timed(&file, || {
            let status = Command::new(binary)
                .args(["task", "watch", task_id, "--output"])
                .arg(&file)
                .args(["--server", &server])
                .env_clear()
                .stdout(Stdio::null())
                .status()
                .expect("the CLI runs");
            assert!(status.success(), "the CLI saved the export");
        }));
        if let Some(python) = &python
            && version == "v2"
        {
            py.push(timed(&file, || {
                let script = concat!(env!("CARGO_MANIFEST_DIR"), "/conformance/python-grpc/save_export.py");
                let target = server.trim_start_matches("http://");
                let status = Command::new(python)
                    .args([script, target, task_id])
                    .arg(&file)
                    .stdout(Stdio::null())
                    .status()
                    .expect("python runs");
                assert!(status.success(), "the Python example saved the export");
            }));
        }
    }
    let (download, cli) = (median(&mut download), median(&mut cli));
    let (suffix, from) = match source {
        Source::Paced => ("", format!("a source paced at {PACED_SOURCE_MIB_PER_SECOND} MiB/s")),
        Source::Unpaced => ("_unpaced", "the unpaced generator".to_owned()),
    };
    println!(
        "\nSaving the {file_mib} MiB {version} export from {from} to a file (median of {TRIALS}, alternating): \
         plain download ({}) {download:.2} s, `stream-export task watch --output` {cli:.2} s",
        if has_curl() { "curl" } else { "reqwest" }
    );
    let figure =
        if version == "v2" { format!("export_save_ratio{suffix}") } else { format!("export_save_ratio{suffix}_v1") };
    print_ratio(&figure, cli / download);
    if version == "v2" {
        let figure = format!("export_save_ratio{suffix}_python");
        match python {
            Some(_) => {
                let py = median(&mut py);
                println!("the README's Python example (grpcio, JSON records) {py:.2} s");
                print_ratio(&figure, py / download);
            }
            None => {
                println!("{figure}: skipped, no Python with grpcio (run conformance/python-grpc/run.sh)");
                let summary = json!({"figure": figure, "skipped": "no Python with grpcio in .venv/python-grpc"});
                println!("BENCH {summary}");
            }
        }
    }
    let _ = std::fs::remove_file(&file);
    service.stop();
}

fn print_ratio(figure: &str, ratio: f64) {
    let value = (ratio * 100.0).round() / 100.0;
    let summary = match target(figure) {
        Some(target) => {
            println!("{figure}: {ratio:.2}x (target <= {target})");
            json!({"figure": figure, "value": value, "unit": "x", "target": format!("<={target}"), "met": ratio <= target})
        }
        None => {
            println!("{figure}: {ratio:.2}x (no target)");
            json!({"figure": figure, "value": value, "unit": "x"})
        }
    };
    println!("BENCH {summary}");
}

/// Seconds `save` takes to write `file` (removed before and checked non-empty after).
fn timed(file: &Path, save: impl FnOnce()) -> f64 {
    let _ = std::fs::remove_file(file);
    let started = Instant::now();
    save();
    let seconds = started.elapsed().as_secs_f64();
    let size = std::fs::metadata(file).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "{} was written", file.display());
    seconds
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn has_curl() -> bool {
    Command::new("curl").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// `curl -o FILE URL`, or the same with a blocking reqwest client when there is no curl.
fn plain_download(url: &str, file: &Path) {
    if has_curl() {
        let status = Command::new("curl").args(["-sS", "--fail", "-o"]).arg(file).arg(url).status().expect("curl runs");
        assert!(status.success(), "curl downloaded the file");
        return;
    }
    let url = url.to_owned();
    let file = file.to_owned();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            use tokio::io::AsyncWriteExt;
            let mut response = reqwest::get(url).await.expect("the download starts");
            let mut out = tokio::fs::File::create(&file).await.expect("the file");
            while let Some(chunk) = response.chunk().await.expect("the download goes on") {
                out.write_all(&chunk).await.expect("written");
            }
            out.flush().await.expect("flushed");
        });
    })
    .join()
    .expect("the download thread");
}
