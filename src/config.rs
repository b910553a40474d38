//! Settings of `stream-export serve`, from flags with environment fallbacks.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use secrecy::{ExposeSecret, SecretSlice, SecretString};
use url::Url;

use crate::{
    export_file::ReadLimits,
    fleet::RedisSettings,
    service::{
        CallLimits,
        authorization::Policies,
        caller::{CallerAuth, TokenTable},
    },
    store::embedded::DEFAULT_STATE_DIR,
    task_watch::WatchSettings,
    telemetry::LogFormat,
};

/// The real Stream API: paths hang directly off this origin.
pub const DEFAULT_STREAM_BASE_URL: &str = "https://chat.stream-io-api.com";

/// Concurrent HTTP/2 streams per client connection: enough for a client that multiplexes
/// many watches over one connection, small enough that one connection cannot tie up the
/// server's memory and tasks alone (h2's own default is unlimited).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 200;

/// Flags of `stream-export serve`. Every flag has an environment variable of the same meaning.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STREAM_EXPORT_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Origin of the Stream API.
    #[arg(long, env = "STREAM_BASE_URL", default_value = DEFAULT_STREAM_BASE_URL)]
    pub stream_base_url: String,

    /// Stream API key (required unless --emulator).
    #[arg(long, env = "STREAM_API_KEY")]
    pub stream_api_key: Option<String>,

    /// Stream API secret (required unless --emulator). Prefer the environment variable:
    /// a flag shows in the process list.
    #[arg(long, env = "STREAM_API_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub stream_api_secret: Option<SecretString>,

    /// Start the embedded Stream API emulator on a loopback port with generated credentials and
    /// use it as the upstream: every RPC works without a Stream account.
    #[arg(long, env = "STREAM_EXPORT_EMULATOR")]
    pub emulator: bool,

    /// Time allowed to open a connection to Stream.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_CONNECT_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration)]
    pub upstream_connect_timeout: Duration,

    /// Time allowed for one whole upstream request.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,

    /// Log output format.
    #[arg(long, env = "STREAM_EXPORT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics at `GET /metrics` on this admin address (off unless set).
    #[arg(long, env = "STREAM_EXPORT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// WatchTask: send a heartbeat after this long without another event.
    #[arg(long, env = "STREAM_EXPORT_WATCH_HEARTBEAT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub watch_heartbeat: Duration,

    /// WatchTask: first interval between upstream polls of a task, and the interval after a change.
    #[arg(long, env = "STREAM_EXPORT_WATCH_POLL_MIN", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub watch_poll_min: Duration,

    /// WatchTask: longest interval between upstream polls of an unchanged task.
    #[arg(long, env = "STREAM_EXPORT_WATCH_POLL_MAX", default_value = "10s", value_parser = humantime::parse_duration)]
    pub watch_poll_max: Duration,

    /// WatchTask: how long upstream may keep failing before watchers get UNAVAILABLE.
    #[arg(long, env = "STREAM_EXPORT_WATCH_FAILURE_BUDGET", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_failure_budget: Duration,

    /// WatchTask: the longest a stream lives before it ends as interrupted (resumable).
    #[arg(long, env = "STREAM_EXPORT_WATCH_MAX_LIFETIME", default_value = "1h", value_parser = humantime::parse_duration)]
    pub watch_max_lifetime: Duration,

    /// WatchTask: most concurrent watch streams on this replica.
    #[arg(long, env = "STREAM_EXPORT_WATCH_MAX_STREAMS", default_value_t = 20_000)]
    pub watch_max_streams: usize,

    /// WatchTask: most concurrent watch streams of one caller on this replica.
    #[arg(long, env = "STREAM_EXPORT_WATCH_MAX_STREAMS_PER_CALLER", default_value_t = 2_000)]
    pub watch_max_streams_per_caller: usize,

    /// WatchTask: how long a finished task's final state is kept for late watchers.
    #[arg(long, env = "STREAM_EXPORT_WATCH_RETENTION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_retention: Duration,

    /// WatchTask: how long upstream's NOT_FOUND for a task id is remembered, so that repeated
    /// watchers of an unknown id do not spend the upstream budget again.
    #[arg(long, env = "STREAM_EXPORT_WATCH_NOT_FOUND_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub watch_not_found_ttl: Duration,

    /// Upstream task-status requests per second, all watched tasks together; in fleet mode,
    /// of all the replicas that share the Redis together.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_POLL_BUDGET", default_value_t = 10.0)]
    pub upstream_poll_budget: f64,

    /// Fleet mode: how long a replica's lease on polling a task lasts unless it renews it (every
    /// third of it); another replica with watchers takes over a dead replica's polls within
    /// about this long plus --watch-fleet-follow-interval.
    #[arg(long, env = "STREAM_EXPORT_WATCH_FLEET_LEASE", default_value = "3s", value_parser = humantime::parse_duration)]
    pub watch_fleet_lease: Duration,

    /// Fleet mode: how often a replica reads the shared state of a task that another replica
    /// polls while changes are not announced (no subscription yet, or a Redis Cluster): then
    /// the delay a change may take to reach its watchers. With announcements (pub/sub on one
    /// Redis) it reads the state when it changes, and at least once a lease.
    #[arg(long, env = "STREAM_EXPORT_WATCH_FLEET_FOLLOW_INTERVAL", default_value = "250ms", value_parser = humantime::parse_duration)]
    pub watch_fleet_follow_interval: Duration,

    /// Most unary calls handled at once; past it, calls are shed at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAM_EXPORT_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// The longest a unary call may take, whatever deadline the caller sent.
    #[arg(long, env = "STREAM_EXPORT_UNARY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub unary_timeout: Duration,

    /// ReadExport: most streams reading an export at once; past it, RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "STREAM_EXPORT_MAX_READ_STREAMS", default_value_t = 64)]
    pub max_read_streams: usize,

    /// ReadExport: the longest one stream reads before it ends with UNAVAILABLE and `next_index`.
    #[arg(long, env = "STREAM_EXPORT_READ_MAX_LIFETIME", default_value = "6h", value_parser = humantime::parse_duration)]
    pub read_max_lifetime: Duration,

    /// ReadExport: how long a stream waits for a client that stopped reading before it ends
    /// with UNAVAILABLE and `next_index`.
    #[arg(long, env = "STREAM_EXPORT_READ_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub read_idle_timeout: Duration,

    /// ReadExport: the longest V2 line or V1 entity read, in bytes; a longer one ends the
    /// stream with DATA_LOSS instead of being buffered.
    #[arg(long, env = "STREAM_EXPORT_MAX_EXPORT_ENTITY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_export_entity_bytes: usize,

    /// ReadExport: the largest export file read, in bytes; past it, the stream ends with DATA_LOSS.
    #[arg(long, env = "STREAM_EXPORT_MAX_EXPORT_FILE_BYTES", default_value_t = 64 * 1024 * 1024 * 1024)]
    pub max_export_file_bytes: u64,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "STREAM_EXPORT_MAX_REQUEST_BYTES", default_value_t = 64 * 1024)]
    pub max_request_bytes: usize,

    /// Most concurrent calls (HTTP/2 streams) on one client connection, advertised to clients
    /// in SETTINGS_MAX_CONCURRENT_STREAMS; past it, clients queue calls or open another connection.
    #[arg(long, env = "STREAM_EXPORT_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,

    /// HTTP/2 keepalive ping interval on client connections ("0s": off).
    #[arg(long, env = "STREAM_EXPORT_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, env = "STREAM_EXPORT_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,

    /// Close client connections after this age, so load spreads over new replicas ("0s": never).
    /// Long WatchTask streams are cut when it passes: leave it off unless clients resume.
    #[arg(long, env = "STREAM_EXPORT_MAX_CONNECTION_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// On SIGTERM/SIGINT, the longest the process waits for calls and connections to finish.
    #[arg(long, env = "STREAM_EXPORT_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How long a `request_id` is remembered for idempotent submits.
    #[arg(long, env = "STREAM_EXPORT_IDEMPOTENCY_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub idempotency_ttl: Duration,

    /// Most `request_id`s remembered (the least recently used go first).
    #[arg(long, env = "STREAM_EXPORT_IDEMPOTENCY_CAPACITY", default_value_t = 100_000)]
    pub idempotency_capacity: u64,

    /// Fleet mode: the Redis (or Valkey) that the replicas share, `redis://[user:password@]host:port`
    /// or `rediss://` for TLS. Idempotent submits then hold across replicas. Unset: one process,
    /// nothing else needed. Unreachable at start: the service starts anyway and says so.
    #[arg(long, env = "STREAM_EXPORT_REDIS_URL", hide_env_values = true, value_parser = parse_secret)]
    pub redis_url: Option<SecretString>,

    /// Put before every Redis key, to share one Redis between deployments.
    #[arg(long, env = "STREAM_EXPORT_REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,

    /// Require `authorization: Bearer <token>` on ExportService; the file lists
    /// `<caller-name> <token>` per line. Health and reflection stay open.
    #[arg(long, env = "STREAM_EXPORT_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Authorization policies (Cedar; schema in policy/stream-export.cedarschema): what each caller
    /// may export and read. Unset: every caller may do everything. SIGHUP reloads the file.
    #[arg(long, env = "STREAM_EXPORT_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Most tasks kept in the task registry (ListTasks, task owners); the oldest go first, and
    /// owner-based policies then no longer let their owners read them. Default: 2,000,000 in
    /// the state directory, 100,000 in memory or Redis.
    #[arg(long, env = "STREAM_EXPORT_TASK_REGISTRY_CAPACITY")]
    pub task_registry_capacity: Option<usize>,

    /// Where this process keeps its state (the task registry, idempotent submits), so that a
    /// restart forgets nothing: created if missing, one process per directory (a second one
    /// exits with code 2). Relative to the working directory. Not used in fleet mode (Redis).
    #[arg(long, env = "STREAM_EXPORT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Keep the state in memory only, instead of --state-dir: a restart forgets every task's
    /// owner (owner-based policies then refuse their owners) and every request_id. For tests
    /// and read-only filesystems.
    #[arg(long, env = "STREAM_EXPORT_MEMORY_STATE", conflicts_with = "state_dir")]
    pub memory_state: bool,

    /// Take the caller's identity for the audit log from the last element of
    /// `x-forwarded-client-cert` (only behind an Envoy sidecar in SANITIZE_SET or
    /// APPEND_FORWARD mode).
    #[arg(long, env = "STREAM_EXPORT_TRUST_FORWARDED_CLIENT_CERT")]
    pub trust_forwarded_client_cert: bool,

    /// Serve TLS with this PEM certificate chain (with --tls-key).
    #[arg(long, env = "STREAM_EXPORT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert.
    #[arg(long, env = "STREAM_EXPORT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Require client certificates signed by this PEM CA (mutual TLS).
    #[arg(long, env = "STREAM_EXPORT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
}

/// Validated settings of the service.
#[derive(Debug)]
pub struct Settings {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Where upstream requests go.
    pub upstream: UpstreamSettings,
    /// Time allowed to open an upstream connection.
    pub upstream_connect_timeout: Duration,
    /// Time allowed for one upstream request.
    pub upstream_timeout: Duration,
    /// Log output format.
    pub log_format: LogFormat,
    /// The admin address of the Prometheus metrics, if served.
    pub metrics_listen: Option<SocketAddr>,
    /// Tuning of WatchTask.
    pub watch: WatchSettings,
    /// Limits on unary calls.
    pub limits: CallLimits,
    /// HTTP/2, TLS and shutdown settings of the gRPC server.
    pub transport: TransportSettings,
    /// Caller authentication and identity.
    pub auth: CallerAuth,
    /// The idempotent-submit store.
    pub idempotency: IdempotencySettings,
    /// Fleet mode: the shared Redis, if any.
    pub redis: Option<RedisSettings>,
    /// The authorization policies.
    pub policies: Policies,
    /// Most tasks kept in the task registry (`None`: the default of the store in use).
    pub task_registry_capacity: Option<usize>,
    /// Where a single process keeps its state.
    pub state: StateSettings,
}

/// Where a single process keeps its state (fleet mode keeps it in Redis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateSettings {
    /// In this state directory, on disk.
    Dir(PathBuf),
    /// In memory only: lost at exit.
    Memory,
}

impl Settings {
    /// Settings with every default, listening on `listen` and talking to `upstream`.
    pub fn new(listen: SocketAddr, upstream: UpstreamSettings) -> Self {
        Self {
            listen,
            upstream,
            upstream_connect_timeout: Duration::from_secs(3),
            upstream_timeout: Duration::from_secs(10),
            log_format: LogFormat::Text,
            metrics_listen: None,
            watch: WatchSettings::default(),
            limits: CallLimits::default(),
            transport: TransportSettings::default(),
            auth: CallerAuth::default(),
            idempotency: IdempotencySettings::default(),
            redis: None,
            policies: Policies::permit_all(),
            task_registry_capacity: None,
            state: StateSettings::Dir(PathBuf::from(DEFAULT_STATE_DIR)),
        }
    }
}

/// HTTP/2, TLS and shutdown settings of the gRPC server.
#[derive(Debug)]
pub struct TransportSettings {
    /// Largest request message, in bytes.
    pub max_request_bytes: usize,
    /// Most concurrent streams per client connection (SETTINGS_MAX_CONCURRENT_STREAMS).
    pub max_concurrent_streams: u32,
    /// HTTP/2 keepalive ping interval (`None`: off).
    pub http2_keepalive_interval: Option<Duration>,
    /// Time to wait for a keepalive answer.
    pub http2_keepalive_timeout: Duration,
    /// Maximum connection age (`None`: unlimited).
    pub max_connection_age: Option<Duration>,
    /// The longest a drain may take.
    pub shutdown_grace: Duration,
    /// TLS, if served.
    pub tls: Option<TlsSettings>,
}

impl Default for TransportSettings {
    fn default() -> Self {
        Self {
            max_request_bytes: 64 * 1024,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_connection_age: None,
            shutdown_grace: Duration::from_secs(20),
            tls: None,
        }
    }
}

/// The PEM files of TLS serving, read at start.
pub struct TlsSettings {
    /// The certificate chain.
    pub cert_pem: Vec<u8>,
    /// The private key.
    pub key_pem: SecretSlice<u8>,
    /// The CA that signs client certificates, for mutual TLS.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings").field("mutual", &self.client_ca_pem.is_some()).finish_non_exhaustive()
    }
}

/// Settings of the idempotent-submit store.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencySettings {
    /// How long a `request_id` is remembered.
    pub ttl: Duration,
    /// Most `request_id`s remembered.
    pub capacity: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(3600), capacity: 100_000 }
    }
}

/// The Stream API the service talks to.
#[derive(Debug)]
pub enum UpstreamSettings {
    /// A real (or externally run) Stream API.
    Remote {
        /// Origin of the API.
        base_url: Url,
        /// The API key.
        api_key: String,
        /// The API secret.
        api_secret: SecretString,
    },
    /// The embedded emulator, started with generated credentials.
    Emulator,
}

/// A setting that is missing or wrong; its message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ServeArgs {
    /// Checks the flags and turns them into settings.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        self.check_limits()?;
        let upstream = if self.emulator {
            UpstreamSettings::Emulator
        } else {
            UpstreamSettings::Remote {
                base_url: parse_base_url(&self.stream_base_url)?,
                api_key: required(self.stream_api_key.clone(), "STREAM_API_KEY (--stream-api-key)")?,
                api_secret: self
                    .stream_api_secret
                    .clone()
                    .filter(|secret| !secret.expose_secret().trim().is_empty())
                    .ok_or_else(|| missing("STREAM_API_SECRET (--stream-api-secret)"))?,
            }
        };
        let auth = CallerAuth {
            tokens: match &self.auth_tokens_file {
                Some(path) => Some(Arc::new(TokenTable::load(path).map_err(|error| {
                    ConfigError(format!("invalid setting STREAM_EXPORT_AUTH_TOKENS_FILE (--auth-tokens-file): {error}"))
                })?)),
                None => None,
            },
            trust_forwarded_client_cert: self.trust_forwarded_client_cert,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert_pem: read_file(cert, "STREAM_EXPORT_TLS_CERT (--tls-cert)")?,
                key_pem: read_file(key, "STREAM_EXPORT_TLS_KEY (--tls-key)")?.into(),
                client_ca_pem: match &self.tls_client_ca {
                    Some(ca) => Some(read_file(ca, "STREAM_EXPORT_TLS_CLIENT_CA (--tls-client-ca)")?),
                    None => None,
                },
            }),
            _ => None,
        };
        Ok(Settings {
            listen: self.listen,
            upstream,
            upstream_connect_timeout: self.upstream_connect_timeout,
            upstream_timeout: self.upstream_timeout,
            log_format: self.log_format,
            metrics_listen: self.metrics_listen,
            watch: WatchSettings {
                heartbeat_interval: self.watch_heartbeat,
                poll_interval_min: self.watch_poll_min,
                poll_interval_max: self.watch_poll_max,
                failure_budget: self.watch_failure_budget,
                max_stream_lifetime: self.watch_max_lifetime,
                max_streams: self.watch_max_streams,
                max_streams_per_caller: self.watch_max_streams_per_caller,
                upstream_budget_per_second: self.upstream_poll_budget,
                terminal_retention: self.watch_retention,
                not_found_retention: self.watch_not_found_ttl,
                fleet_lease: self.watch_fleet_lease,
                fleet_follow_interval: self.watch_fleet_follow_interval,
            },
            limits: CallLimits {
                max_in_flight: self.max_in_flight,
                unary_timeout: self.unary_timeout,
                reads: ReadLimits {
                    max_streams: self.max_read_streams,
                    max_lifetime: self.read_max_lifetime,
                    idle_timeout: self.read_idle_timeout,
                    max_entity_bytes: self.max_export_entity_bytes,
                    max_file_bytes: self.max_export_file_bytes,
                },
                ..CallLimits::default()
            },
            transport: TransportSettings {
                max_request_bytes: self.max_request_bytes,
                max_concurrent_streams: self.max_concurrent_streams,
                http2_keepalive_interval: nonzero(self.http2_keepalive_interval),
                http2_keepalive_timeout: self.http2_keepalive_timeout,
                max_connection_age: nonzero(self.max_connection_age),
                shutdown_grace: self.shutdown_grace,
                tls,
            },
            auth,
            idempotency: IdempotencySettings { ttl: self.idempotency_ttl, capacity: self.idempotency_capacity },
            redis: self.redis_url.clone().map(|url| RedisSettings { url, key_prefix: self.redis_key_prefix.clone() }),
            policies: match &self.policy_file {
                Some(path) => Policies::load(path).map_err(|error| {
                    ConfigError(format!("invalid setting STREAM_EXPORT_POLICY_FILE (--policy-file): {error}"))
                })?,
                None => Policies::permit_all(),
            },
            task_registry_capacity: self.task_registry_capacity,
            state: if self.memory_state { StateSettings::Memory } else { StateSettings::Dir(self.state_dir.clone()) },
        })
    }
}

impl ServeArgs {
    /// Rejects durations and counts that cannot work.
    fn check_limits(&self) -> Result<(), ConfigError> {
        let positive_durations = [
            (self.upstream_connect_timeout, "STREAM_EXPORT_UPSTREAM_CONNECT_TIMEOUT (--upstream-connect-timeout)"),
            (self.upstream_timeout, "STREAM_EXPORT_UPSTREAM_TIMEOUT (--upstream-timeout)"),
            (self.unary_timeout, "STREAM_EXPORT_UNARY_TIMEOUT (--unary-timeout)"),
            (self.watch_heartbeat, "STREAM_EXPORT_WATCH_HEARTBEAT (--watch-heartbeat)"),
            (self.watch_poll_min, "STREAM_EXPORT_WATCH_POLL_MIN (--watch-poll-min)"),
            (self.watch_max_lifetime, "STREAM_EXPORT_WATCH_MAX_LIFETIME (--watch-max-lifetime)"),
            (self.idempotency_ttl, "STREAM_EXPORT_IDEMPOTENCY_TTL (--idempotency-ttl)"),
            (self.read_max_lifetime, "STREAM_EXPORT_READ_MAX_LIFETIME (--read-max-lifetime)"),
            (self.read_idle_timeout, "STREAM_EXPORT_READ_IDLE_TIMEOUT (--read-idle-timeout)"),
            (self.watch_fleet_lease, "STREAM_EXPORT_WATCH_FLEET_LEASE (--watch-fleet-lease)"),
            (
                self.watch_fleet_follow_interval,
                "STREAM_EXPORT_WATCH_FLEET_FOLLOW_INTERVAL (--watch-fleet-follow-interval)",
            ),
        ];
        if let Some((_, name)) = positive_durations.iter().find(|(value, _)| value.is_zero()) {
            return Err(ConfigError(format!("{name} must be greater than zero")));
        }
        let positive_counts = [
            (self.max_in_flight as u64, "STREAM_EXPORT_MAX_IN_FLIGHT (--max-in-flight)"),
            (self.max_request_bytes as u64, "STREAM_EXPORT_MAX_REQUEST_BYTES (--max-request-bytes)"),
            (u64::from(self.max_concurrent_streams), "STREAM_EXPORT_MAX_CONCURRENT_STREAMS (--max-concurrent-streams)"),
            (self.watch_max_streams as u64, "STREAM_EXPORT_WATCH_MAX_STREAMS (--watch-max-streams)"),
            (
                self.watch_max_streams_per_caller as u64,
                "STREAM_EXPORT_WATCH_MAX_STREAMS_PER_CALLER (--watch-max-streams-per-caller)",
            ),
            (self.idempotency_capacity, "STREAM_EXPORT_IDEMPOTENCY_CAPACITY (--idempotency-capacity)"),
            (
                self.task_registry_capacity.map_or(1, |capacity| capacity as u64),
                "STREAM_EXPORT_TASK_REGISTRY_CAPACITY (--task-registry-capacity)",
            ),
            (self.max_read_streams as u64, "STREAM_EXPORT_MAX_READ_STREAMS (--max-read-streams)"),
            (self.max_export_entity_bytes as u64, "STREAM_EXPORT_MAX_EXPORT_ENTITY_BYTES (--max-export-entity-bytes)"),
            (self.max_export_file_bytes, "STREAM_EXPORT_MAX_EXPORT_FILE_BYTES (--max-export-file-bytes)"),
        ];
        if let Some((_, name)) = positive_counts.iter().find(|(value, _)| *value == 0) {
            return Err(ConfigError(format!("{name} must be at least 1")));
        }
        if !self.memory_state && self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError(
                "STREAM_EXPORT_STATE_DIR (--state-dir) must name a directory (or pass --memory-state)".into(),
            ));
        }
        if self.watch_poll_max < self.watch_poll_min {
            return Err(ConfigError(
                "STREAM_EXPORT_WATCH_POLL_MAX (--watch-poll-max) must not be shorter than --watch-poll-min".into(),
            ));
        }
        if !(self.upstream_poll_budget.is_finite() && self.upstream_poll_budget > 0.0) {
            return Err(ConfigError(
                "STREAM_EXPORT_UPSTREAM_POLL_BUDGET (--upstream-poll-budget) must be a positive number".into(),
            ));
        }
        Ok(())
    }
}

fn required(value: Option<String>, name: &str) -> Result<String, ConfigError> {
    value.filter(|value| !value.trim().is_empty()).ok_or_else(|| missing(name))
}

fn missing(name: &str) -> ConfigError {
    ConfigError(format!("missing setting {name}; or pass --emulator to try the service without a Stream account"))
}

fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// `0s` turns an optional duration off.
fn nonzero(duration: Duration) -> Option<Duration> {
    (!duration.is_zero()).then_some(duration)
}

fn read_file(path: &Path, name: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|error| ConfigError(format!("cannot read {name} {}: {error}", path.display())))
}

/// Parses the upstream origin: http or https, no query; a trailing path is kept as a prefix.
pub fn parse_base_url(raw: &str) -> Result<Url, ConfigError> {
    let invalid =
        |why: &str| ConfigError(format!("invalid setting STREAM_BASE_URL (--stream-base-url) {raw:?}: {why}"));
    let mut url = Url::parse(raw).map_err(|error| invalid(&error.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("it must not have a query or fragment"));
    }
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `stream-export serve`'s flags alone.
    #[derive(Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    /// The defaults are written twice, as clap's default strings and as the `Default` impls
    /// that in-process tests and embedders use: the binary and the tests must run the same
    /// service. (Any `STREAM_EXPORT_*` variable set where the tests run shows up as a difference.)
    #[test]
    fn the_flags_defaults_are_the_default_settings() {
        let parsed = Serve::try_parse_from(["serve", "--emulator"]).unwrap().args.into_settings().unwrap();
        let defaults = Settings::new(parsed.listen, UpstreamSettings::Emulator);
        assert_eq!(format!("{parsed:#?}"), format!("{defaults:#?}"));
    }
}
