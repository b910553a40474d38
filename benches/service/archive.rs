//! Figure 11 (archives, issue 34): what archiving a task's file costs over downloading it.
//!
//! One paced source, the emulator's synthetic v2 export, is read three times in a row: by
//! `curl -o` to local disk (the baseline, `plain`), and by `Archives::copy` into a `file://`
//! directory (`archive_local`) and into a loopback S3 server (`archive_s3`). The copies run in
//! this process through the library, as a job's runner calls them, so the memory a copy holds is
//! this process's peak RSS during it above its RSS before it (the peak is reset before each copy).
//! The targets are read with the source paced as a remote store serves one download; the same
//! three reads of an unpaced source follow, for context (how fast each reader can go here).
//!
//! The S3 server is this binary again in its hidden `--s3-server` mode (s3s-fs, started as
//! `tests/common/s3.rs` starts it, without the fault injection): a child process, so that its
//! memory and CPU are read apart from the copy's.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use http_body_util::BodyExt;
use hyper::{Request, Response, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use s3s::{Body, auth::SimpleAuth, service::S3ServiceBuilder};
use serde_json::json;
use sha2::{Digest, Sha256};
use stream_export::{
    archive::{AllowList, Archives, StoreOptions},
    upstream::{ClientConfig, Credentials, RetryPolicy, StreamClient},
};

use crate::{
    Scale,
    processes::{self, API_KEY, API_SECRET, ChildProcess, EmulatorClient},
    procfs,
    report::{Figure, Target},
};

/// The S3 server's one bucket.
const BUCKET: &str = "exports";
/// The credentials the S3 server accepts.
const ACCESS_KEY: &str = "bench-access-key";
const SECRET_KEY: &str = "bench-secret-key-0123456789abcdef";
/// Bytes of a synthetic v2 record of 512 bytes, on average: its `message` line (483 bytes at
/// seven-digit record numbers) and a tenth of a `reaction` line.
const BYTES_PER_RECORD: u64 = 490;
/// What the S3 server prints for each CompleteMultipartUpload, before its duration in ms.
const COMPLETE_LINE: &str = "complete_ms ";

/// One copy measured.
struct Measured {
    elapsed: Duration,
    bytes: u64,
    sha256: String,
    /// This process's peak RSS during the copy above its RSS before it.
    rss_growth: u64,
}

/// The three reads of one file, and the S3 server's side of its copy.
struct Round {
    plain: Measured,
    local: Measured,
    s3: Measured,
    /// The S3 server's peak RSS during the copy above its RSS before it.
    s3_server_growth: u64,
    /// The time s3s-fs took to complete the upload, in ms.
    s3_complete_ms: f64,
}

pub async fn run(scale: &Scale) -> Vec<Figure> {
    let emulator_process = processes::start_emulator().await;
    let emulator = EmulatorClient::new(emulator_process.url());
    let paced = round(scale, &emulator, Some(scale.archive_source_mib_per_s)).await;
    // The same without pacing: how fast each reader goes when the source is not the limit.
    let unpaced = round(scale, &emulator, None).await;
    let mib = in_mib(paced.plain.bytes);
    let seconds = |measured: &Measured| measured.elapsed.as_secs_f64();
    vec![
        Figure::info("archive_file_mib", mib, "MiB"),
        Figure::info("archive_source_mib_per_s", f64::from(scale.archive_source_mib_per_s), "MiB/s"),
        Figure::info("archive_plain_mib_per_s", mib / seconds(&paced.plain), "MiB/s"),
        Figure::target(
            "archive_copy_ratio_local",
            seconds(&paced.local) / seconds(&paced.plain),
            "x",
            Target::AtMost(1.15),
        ),
        Figure::info("archive_local_mib_per_s", mib / seconds(&paced.local), "MiB/s"),
        Figure::target("archive_local_rss_growth_mib", in_mib(paced.local.rss_growth), "MiB", Target::AtMost(64.0)),
        Figure::target("archive_copy_ratio_s3", seconds(&paced.s3) / seconds(&paced.plain), "x", Target::AtMost(1.3)),
        Figure::info("archive_s3_mib_per_s", mib / seconds(&paced.s3), "MiB/s"),
        Figure::target("archive_s3_rss_growth_mib", in_mib(paced.s3.rss_growth), "MiB", Target::AtMost(64.0)),
        Figure::info("archive_s3_server_rss_growth_mib", in_mib(paced.s3_server_growth), "MiB"),
        Figure::info("archive_s3_complete_ms", paced.s3_complete_ms, "ms"),
        Figure::info("archive_unpaced_plain_mib_per_s", mib / seconds(&unpaced.plain), "MiB/s"),
        Figure::info("archive_unpaced_local_mib_per_s", mib / seconds(&unpaced.local), "MiB/s"),
        Figure::info("archive_unpaced_s3_mib_per_s", mib / seconds(&unpaced.s3), "MiB/s"),
        Figure::info("archive_unpaced_local_rss_growth_mib", in_mib(unpaced.local.rss_growth), "MiB"),
        Figure::info("archive_unpaced_s3_rss_growth_mib", in_mib(unpaced.s3.rss_growth), "MiB"),
        Figure::info("archive_unpaced_s3_complete_ms", unpaced.s3_complete_ms, "ms"),
    ]
}

fn in_mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// A synthetic file served at `pace` MiB/s (unpaced when `None`), read by curl, then archived
/// to a directory, then to a new S3 server; each copy checked against curl's file.
async fn round(scale: &Scale, emulator: &EmulatorClient, pace: Option<u32>) -> Round {
    let name = pace.map_or_else(|| "unpaced".to_owned(), |pace| format!("paced-{pace}"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-archive-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("local")).expect("a scratch directory for the archive bench");
    let mut spec =
        json!({"records": scale.archive_file_bytes / BYTES_PER_RECORD, "version": "v2", "record_bytes": 512});
    if let Some(pace) = pace {
        spec["mib_per_second"] = pace.into();
    }
    let created = emulator.control(reqwest::Method::POST, "synthetic_exports", Some(spec)).await;
    let task_id = created["task_id"].as_str().expect("a synthetic task id").to_owned();
    let client = stream_client(emulator.base_url());

    let (plain, plain_sha256) = download(&client, &task_id, &dir.join("plain.jsonl")).await;

    let s3_root = dir.join("s3");
    std::fs::create_dir_all(s3_root.join(BUCKET)).expect("a directory for the S3 server");
    let s3 = start_s3_server(&s3_root).await;
    let local_prefix = format!("file://{}", dir.join("local").display());
    let s3_prefix = format!("s3://{BUCKET}/bench");
    let allow = AllowList::new(&[local_prefix.clone(), s3_prefix.clone()]).expect("the bench's prefixes parse");
    let archives = Archives::new(allow, StoreOptions::new(s3_env(s3.port)), client);

    let local = copy(&archives, &local_prefix, &task_id, None).await;
    let _ = std::fs::remove_dir_all(dir.join("local"));
    let s3_pid = s3.pid();
    let s3_rss_before = procfs::rss_bytes(s3_pid);
    let s3_copy = copy(&archives, &s3_prefix, &task_id, Some(s3_pid)).await;
    let s3_server_growth = procfs::peak_rss_bytes(s3_pid).saturating_sub(s3_rss_before);
    let s3_complete_ms = completes(&processes::log_path("archive-s3"));
    drop(s3);
    let _ = std::fs::remove_dir_all(&dir);

    for (copy, measured) in [("archive_local", &local), ("archive_s3", &s3_copy)] {
        assert_eq!(
            (measured.bytes, measured.sha256.as_str()),
            (plain.bytes, plain_sha256.as_str()),
            "{copy} ({name}) archived another file than curl downloaded"
        );
    }
    Round { plain, local, s3: s3_copy, s3_server_growth, s3_complete_ms }
}

/// The upstream client that a service started with the emulator as its Stream would build.
fn stream_client(base_url: &str) -> StreamClient {
    StreamClient::new(ClientConfig {
        base_url: base_url.parse().expect("the emulator's URL"),
        credentials: Credentials::new(API_KEY, &API_SECRET.to_owned().into()).expect("sign the server token"),
        connect_timeout: Duration::from_secs(5),
        // A read of the body, not the whole download (a 1 GiB file takes seconds).
        request_timeout: Duration::from_secs(60),
        retry: RetryPolicy::default(),
    })
    .expect("the upstream client")
}

/// `plain`: `curl -o file URL` with the task's download URL, timed; the file's SHA-256, read
/// after the clock stopped. The file is removed.
async fn download(client: &StreamClient, task_id: &str, file: &Path) -> (Measured, String) {
    let status = client.get_task(task_id, None).await.expect("the synthetic task's status");
    let url = status.body.result.and_then(|result| result.url).expect("the synthetic task's download URL");
    let started = Instant::now();
    let curl = tokio::process::Command::new("curl").args(["-sSf", "-o"]).arg(file).arg(&url).status().await;
    let elapsed = started.elapsed();
    // Not the URL in the message: it is signed.
    assert!(curl.expect("curl runs").success(), "curl could not download the synthetic file");
    let bytes = std::fs::metadata(file).expect("curl wrote the file").len();
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(file).expect("the downloaded file opens"), &mut hasher)
        .expect("the downloaded file reads");
    let _ = std::fs::remove_file(file);
    (Measured { elapsed, bytes, sha256: String::new(), rss_growth: 0 }, hex::encode(hasher.finalize()))
}

/// One `Archives::copy` of the task's file under `prefix` (without the read-back check), timed,
/// with this process's peak RSS reset before it; and the peak of `server` reset too.
async fn copy(archives: &Archives, prefix: &str, task_id: &str, server: Option<u32>) -> Measured {
    let location = archives.check(prefix).expect("the bench's prefix is allowed");
    let key = Archives::file_key(&location, "bench-job", 0, task_id, true);
    let me = std::process::id();
    for pid in std::iter::once(me).chain(server) {
        if !procfs::reset_peak_rss(pid) {
            println!("note: the peak RSS of {pid} could not be reset; its growth counts from its start");
        }
    }
    let before = procfs::rss_bytes(me);
    let started = Instant::now();
    let copied = archives.copy(&location, &key, task_id, false).await.expect("the archive copy succeeds");
    let elapsed = started.elapsed();
    let rss_growth = procfs::peak_rss_bytes(me).saturating_sub(before);
    Measured { elapsed, bytes: copied.file.bytes, sha256: copied.file.sha256, rss_growth }
}

/// The object_store settings that reach the S3 server (as `AWS_*` variables).
fn s3_env(port: u16) -> Vec<(String, String)> {
    [
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ("AWS_REGION", "us-east-1".into()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect()
}

/// This binary in its `--s3-server` mode over `root`.
async fn start_s3_server(root: &Path) -> ChildProcess {
    let port = processes::free_port();
    let mut command = Command::new(std::env::current_exe().expect("the bench binary's path"));
    command.arg("--s3-server").arg(format!("127.0.0.1:{port}")).arg(root);
    let mut child = processes::spawn("archive-s3", command, port);
    child.wait_listening().await;
    child
}

/// The total time of the CompleteMultipartUpload requests the S3 server logged, in ms: s3s-fs
/// concatenates the parts into the object then, a copy of the whole file that S3 does not make.
fn completes(log: &Path) -> f64 {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    log.lines().filter_map(|line| line.strip_prefix(COMPLETE_LINE)?.parse::<f64>().ok()).sum()
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The hidden `--s3-server ADDR ROOT` mode: s3s-fs over `ROOT` (the bucket a folder in it) on
/// `ADDR`, SigV4-checked with the bench's credentials, until killed.
pub fn serve_s3(addr: &str, root: &str) {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async move {
        let filesystem = s3s_fs::FileSystem::new(root).expect("s3s-fs opens its directory");
        let mut builder = S3ServiceBuilder::new(filesystem);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let s3 = builder.build();
        let listener = tokio::net::TcpListener::bind(addr).await.expect("the S3 server's port");
        loop {
            let Ok((socket, _)) = listener.accept().await else { continue };
            let s3 = s3.clone();
            let service = hyper::service::service_fn(move |request| handle(s3.clone(), request));
            tokio::spawn(async move {
                let _ = ConnBuilder::new(TokioExecutor::new()).serve_connection(TokioIo::new(socket), service).await;
            });
        }
    });
}

/// Hands a request to s3s-fs, and prints how long a CompleteMultipartUpload took.
async fn handle(s3: s3s::service::S3Service, request: Request<Incoming>) -> Result<Response<Body>, BoxError> {
    let completes = request.method() == hyper::Method::POST
        && request.uri().query().is_some_and(|query| query.split('&').any(|pair| pair.starts_with("uploadId=")));
    let started = Instant::now();
    let response = s3.call(request.map(Body::from)).await?;
    if completes {
        // The answer's body is where s3s-fs reports a failure: read it before the clock stops.
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        println!("{COMPLETE_LINE}{:.1}", started.elapsed().as_secs_f64() * 1e3);
        return Ok(Response::from_parts(parts, Body::from(body)));
    }
    Ok(response)
}
