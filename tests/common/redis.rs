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

    /// The scripts it has been asked to run so far (`EVALSHA` and `EVAL`, as `INFO
    /// commandstats` counts them): every call the fleet makes is one. The commands the scripts
    /// run are counted apart, and not here.
    pub async fn script_calls(&self) -> u64 {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let mut connection = client.get_multiplexed_async_connection().await.expect("Redis answers");
        let stats: String =
            redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await.expect("INFO answers");
        stats
            .lines()
            .filter_map(|line| line.strip_prefix("cmdstat_eval"))
            .filter_map(|line| line.split_once("calls=")?.1.split(',').next()?.parse::<u64>().ok())
            .sum()
    }

    /// The keys that match `pattern` (`KEYS`).
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let mut connection = client.get_multiplexed_async_connection().await.expect("Redis answers");
        redis::cmd("KEYS").arg(pattern).query_async(&mut connection).await.expect("KEYS answers")
    }

    /// Deletes `keys` (as an eviction would).
    pub async fn delete(&self, keys: &[String]) {
        let client = redis::Client::open(self.url()).expect("a Redis URL");
        let mut connection = client.get_multiplexed_async_connection().await.expect("Redis answers");
        redis::cmd("DEL").arg(keys).query_async::<i64>(&mut connection).await.expect("DEL answers");
    }

    /// Kills the server (SIGKILL) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stalls the server (SIGSTOP): it keeps its connections and answers nothing until
    /// [`RedisServer::resume`]; its clock runs on, so leases run out meanwhile.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Ends a [`RedisServer::pause`] (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis-server runs").id();
        let sent = Command::new("kill").args([signal, &pid.to_string()]).status().expect("kill runs");
        assert!(sent.success(), "kill {signal} {pid}");
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

/// A real Redis Cluster of `redis-server`s on free loopback ports (no replicas), made with
/// `redis-cli --cluster create`; stopped by PID when dropped.
pub struct RedisCluster {
    nodes: Vec<Child>,
    /// The nodes' ports.
    pub ports: Vec<u16>,
    files: std::path::PathBuf,
    password: String,
}

impl RedisCluster {
    /// Starts `count` nodes (3 or more) with `requirepass password` and makes them one
    /// cluster, waiting until it serves.
    pub async fn start(count: usize, password: &str) -> Self {
        let files = std::env::temp_dir().join(format!("stream-export-redis-cluster-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&files).expect("a directory for the nodes' files");
        let mut cluster = Self { nodes: Vec::new(), ports: Vec::new(), files, password: password.to_owned() };
        for _ in 0..count {
            let port = free_port();
            let node = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--cluster-port", &free_port().to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--cluster-enabled", "yes"])
                .args(["--requirepass", password, "--masterauth", password])
                .args([
                    "--cluster-config-file",
                    &cluster.files.join(format!("nodes-{port}.conf")).display().to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts");
            cluster.nodes.push(node);
            cluster.ports.push(port);
        }
        let started = Instant::now();
        for port in &cluster.ports {
            while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not come up on {port}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let addresses: Vec<String> = cluster.ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        let created = Command::new("redis-cli")
            .args(["--no-auth-warning", "-a", password])
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(created.status.success(), "redis-cli --cluster create: {}", String::from_utf8_lossy(&created.stdout));
        // Every node must know every slot before the test starts.
        for port in &cluster.ports {
            loop {
                let info = Command::new("redis-cli")
                    .args(["--no-auth-warning", "-a", password, "-p", &port.to_string(), "cluster", "info"])
                    .output()
                    .expect("redis-cli runs");
                if String::from_utf8_lossy(&info.stdout).contains("cluster_state:ok") {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(20), "the cluster did not become ok on {port}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        cluster
    }

    /// `redis+cluster://:<password>@127.0.0.1:<port>,…` naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self.ports.iter().map(|port| format!("127.0.0.1:{port}")).collect();
        format!("redis+cluster://:{}@{}", self.password, nodes.join(","))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            let _ = node.kill();
            let _ = node.wait();
        }
        let _ = std::fs::remove_dir_all(&self.files);
    }
}
