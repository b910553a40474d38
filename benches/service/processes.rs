//! The processes under measurement: the release `stream-export` binary (service and emulator)
//! and the bare tonic server (this binary re-executed), each a child on a loopback port.
//!
//! Children, not in-process servers, so that each one's CPU time and memory can be read from
//! `/proc/<pid>/` without counting the load generator's own work.

use std::{
    fs::File,
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

/// Credentials shared by the emulator and the service.
pub const API_KEY: &str = "bench-key";
/// A secret of at least 32 bytes, like a real one.
pub const API_SECRET: &str = "bench-secret-0123456789abcdef0123456789abcdef";

/// A child process that is killed when dropped, so no run leaves a server behind.
pub struct ChildProcess {
    child: Child,
    /// The loopback port it listens on.
    pub port: u16,
    name: &'static str,
}

impl ChildProcess {
    /// The process id, for `/proc/<pid>/`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Waits until the port accepts TCP connections, failing if the child exits first.
    pub async fn wait_listening(&mut self) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited before listening ({status}); see {}", self.name, log_path(self.name).display());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} did not listen within 20 s; see {}", self.name, log_path(self.name).display());
    }

    /// Kills the child now (SIGKILL, like `kill -9`) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// A new HTTP/2 connection to the child (a tonic channel is one connection).
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url()).expect("a valid URL").connect().await.expect("connects to the child")
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (the listener is closed again; the child binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// Where a child's output goes: quiet on the terminal, but there to read when it fails.
pub fn log_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{name}.log"))
}

pub fn spawn(name: &'static str, mut command: Command, port: u16) -> ChildProcess {
    let log = File::create(log_path(name)).expect("create the child's log file");
    let child = command
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone the log handle"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|error| panic!("start {name}: {error}"));
    ChildProcess { child, port, name }
}

/// The release binary that `cargo bench` built next to this bench.
pub fn service_binary() -> &'static str {
    env!("CARGO_BIN_EXE_stream-export")
}

/// `stream-export emulator`: tasks stay `waiting` for an hour (the bench steers them), and rate
/// limits are out of the way unless a figure sets one.
pub async fn start_emulator() -> ChildProcess {
    let port = free_port();
    let mut command = Command::new(service_binary());
    command
        .arg("emulator")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--api-key", API_KEY, "--api-secret", API_SECRET])
        .args(["--waiting-ms", "3600000", "--rate-limit", "100000000"])
        .env("RUST_LOG", "warn");
    let mut child = spawn("emulator", command, port);
    child.wait_listening().await;
    child
}

/// `stream-export serve` against the emulator, with `extra` flags. It logs at its default level
/// (`info`), as deployed.
pub async fn start_service(name: &'static str, emulator: &ChildProcess, extra: &[&str]) -> ChildProcess {
    start_service_with_env(name, emulator, extra, &[]).await
}

/// [`start_service`] with environment variables (`OTEL_*`, say).
pub async fn start_service_with_env(
    name: &'static str,
    emulator: &ChildProcess,
    extra: &[&str],
    env: &[(&str, &str)],
) -> ChildProcess {
    // In memory, as the figures in BENCHMARKS.md were measured; the state directory's cost is
    // measured by benches/store.rs.
    start_service_in(name, emulator, None, extra, env).await
}

/// [`start_service_with_env`] with its state in `state_dir` (`--state-dir`), or in memory
/// (`--memory-state`) when `None`.
pub async fn start_service_in(
    name: &'static str,
    emulator: &ChildProcess,
    state_dir: Option<&std::path::Path>,
    extra: &[&str],
    env: &[(&str, &str)],
) -> ChildProcess {
    let port = free_port();
    let mut command = Command::new(service_binary());
    command
        .arg("serve")
        .args(["--listen", &format!("127.0.0.1:{port}"), "--stream-base-url", &emulator.url()])
        .args(["--stream-api-key", API_KEY]);
    match state_dir {
        Some(dir) => command.arg("--state-dir").arg(dir),
        None => command.arg("--memory-state"),
    };
    command.args(extra).env("STREAM_API_SECRET", API_SECRET).envs(env.iter().copied());
    let mut child = spawn(name, command, port);
    child.wait_listening().await;
    child
}

/// The bare tonic server: this bench binary again, in its hidden `--echo-server` mode, answering
/// `GetTask` with `task` (protobuf, hex).
pub async fn start_echo(task_hex: &str) -> ChildProcess {
    let port = free_port();
    let mut command = Command::new(std::env::current_exe().expect("the bench binary's path"));
    command.args(["--echo-server", &format!("127.0.0.1:{port}"), task_hex]);
    let mut child = spawn("echo", command, port);
    child.wait_listening().await;
    child
}

/// Calls to the emulator: its control endpoints, and its API signed as Stream's SDKs sign it.
pub struct EmulatorClient {
    base_url: String,
    http: reqwest::Client,
    token: String,
}

impl EmulatorClient {
    /// A client of the emulator at `base_url`.
    pub fn new(base_url: String) -> Self {
        // Plain HTTP only, but reqwest wants a TLS provider chosen before it builds a client.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"server": true}),
            &jsonwebtoken::EncodingKey::from_secret(API_SECRET.as_bytes()),
        )
        .expect("sign the server token");
        Self { base_url, http: reqwest::Client::new(), token }
    }

    /// The emulator's URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Sends a control request (`/_emulator/<path>`) and returns its JSON answer.
    pub async fn control(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}/_emulator/{path}", self.base_url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("emulator control request");
        let status = response.status();
        let text = response.text().await.expect("emulator control answer");
        assert!(status.is_success(), "emulator control {path}: HTTP {status}: {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    /// `GET /_emulator/counters`.
    pub async fn counters(&self) -> Value {
        self.control(reqwest::Method::GET, "counters", None).await
    }

    /// `POST /_emulator/counters/reset`.
    pub async fn reset_counters(&self) {
        self.control(reqwest::Method::POST, "counters/reset", None).await;
    }

    /// Moves a task to `status` now (and holds it there).
    pub async fn steer(&self, task_id: &str, status: &str) {
        self.control(reqwest::Method::POST, &format!("tasks/{task_id}"), Some(json!({"status": status}))).await;
    }

    /// `GET /tasks/{id}` exactly as the service sends it: `?api_key=`, the raw server JWT in
    /// `Authorization`, `stream-auth-type: jwt`. Returns the HTTP status.
    pub async fn get_task(&self, task_id: &str) -> u16 {
        let response = self
            .http
            .get(format!("{}/tasks/{task_id}", self.base_url))
            .query(&[("api_key", API_KEY)])
            .header("Authorization", &self.token)
            .header("stream-auth-type", "jwt")
            .send()
            .await
            .expect("direct GET /tasks/{id}");
        let status = response.status().as_u16();
        let _ = response.bytes().await.expect("direct GET /tasks/{id} body");
        status
    }
}
