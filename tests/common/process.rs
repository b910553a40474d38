//! The real binary as a child process, with its log captured.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// A running `stream-export serve`.
pub struct ServiceProcess {
    child: Child,
    /// The gRPC port.
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
    /// The state directory this helper made for the process (removed with it).
    own_state_dir: Option<PathBuf>,
}

/// A fresh, empty state directory under the temporary directory.
pub fn scratch_state_dir() -> PathBuf {
    std::env::temp_dir().join(format!("stream-export-test-state-{}", uuid::Uuid::new_v4()))
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl ServiceProcess {
    /// Starts `stream-export serve --listen 127.0.0.1:<free port> <args>` with only `env` (its
    /// log goes to a pipe: no colour, as `tests/process/telemetry.rs` checks).
    ///
    /// Unless `args` or `env` choose where the state goes, the process gets a state directory of
    /// its own, so that tests running in parallel never share one.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(free_port(), args, env)
    }

    /// [`ServiceProcess::start`] on a given port (a restart on the same address).
    pub fn start_on(port: u16, args: &[&str], env: &[(&str, &str)]) -> Self {
        let chooses_state = args.iter().any(|arg| arg.starts_with("--state-dir") || *arg == "--memory-state")
            || env.iter().any(|(name, _)| *name == "STREAM_EXPORT_STATE_DIR" || *name == "STREAM_EXPORT_MEMORY_STATE");
        let own_state_dir = (!chooses_state).then(scratch_state_dir);
        let state_args = own_state_dir.iter().flat_map(|dir| ["--state-dir".into(), dir.display().to_string()]);
        let mut child = Command::new(env!("CARGO_BIN_EXE_stream-export"))
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(state_args)
            .args(args)
            .env_clear()
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stdout.take().map(|p| Box::new(p) as _),
        ]
        .into_iter()
        .flatten()
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    log.lock().unwrap().push(line);
                }
            });
        }
        Self { child, port, log, own_state_dir }
    }

    /// The service's URL.
    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Waits until the port accepts connections (plain-text health when `check_health`).
    pub async fn wait_ready(&self, check_health: bool) {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if check_health {
                if let Ok(channel) = Endpoint::from_shared(self.url("http")).unwrap().connect().await {
                    let response =
                        HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
                    if response.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                        return;
                    }
                }
            } else if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the service did not come up; log:\n{}", self.log());
    }

    /// A plain-text channel to the service.
    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(self.url("http")).unwrap().connect().await.expect("connects")
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP (reload the policy file).
    pub fn hang_up(&self) {
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    }

    /// Waits (without blocking the runtime) for the process to exit.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// Everything the process logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_state_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
