//! A real `redis-server` for the fleet tests: each test starts its own on a free port, with
//! persistence off, and stops it by PID (`.ci/run` installs the Debian package).

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::process::free_port;

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    password: Option<String>,
    /// More `redis-server` arguments (settings), given at every start.
    settings: Vec<String>,
}

impl RedisServer {
    /// Starts one on a free port, with `requirepass` when `password` is given.
    pub async fn start(password: Option<&str>) -> Self {
        Self::start_with(password, &[]).await
    }

    /// [`RedisServer::start`] with more `redis-server` arguments (`["--maxmemory", "1"]`).
    pub async fn start_with(password: Option<&str>, settings: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            password: password.map(str::to_owned),
            settings: settings.iter().map(|setting| (*setting).to_owned()).collect(),
        };
        server.restart().await;
        server
    }

    /// One that speaks TLS only (on [`RedisServer::port`]), with the certificate and key given
    /// as PEM files, and no client certificate asked for.
    pub async fn start_tls(password: Option<&str>, certificate: &Path, key: &Path) -> Self {
        let port = free_port();
        let (certificate, key) = (certificate.display().to_string(), key.display().to_string());
        let mut server = Self {
            child: None,
            port,
            password: password.map(str::to_owned),
            settings: ["--port", "0", "--tls-port", &port.to_string(), "--tls-cert-file", &certificate]
                .into_iter()
                .chain(["--tls-key-file", &key, "--tls-auth-clients", "no"])
                .map(str::to_owned)
                .collect(),
        };
        server.restart().await;
        server
    }

    /// `redis://[:password@]127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (empty: nothing was persisted) and waits until
    /// it accepts connections.
    pub async fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("redis-server");
        command.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        if let Some(password) = &self.password {
            command.args(["--requirepass", password]);
        }
        command.args(&self.settings);
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is the redis-server package installed? .ci/run installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not come up on {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}
