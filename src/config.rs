//! Settings of `stream-export serve`, from flags with environment fallbacks.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use url::Url;

use crate::{telemetry::LogFormat, watch::WatchSettings};

/// The real Stream API: paths hang directly off this origin.
pub const DEFAULT_STREAM_BASE_URL: &str = "https://chat.stream-io-api.com";

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
    #[arg(long, env = "STREAM_API_SECRET", hide_env_values = true)]
    pub stream_api_secret: Option<String>,

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

    /// WatchTask: how long a finished task's final state is kept for late watchers.
    #[arg(long, env = "STREAM_EXPORT_WATCH_RETENTION", default_value = "60s", value_parser = humantime::parse_duration)]
    pub watch_retention: Duration,

    /// Upstream task-status requests per second, all watched tasks together.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_POLL_BUDGET", default_value_t = 10.0)]
    pub upstream_poll_budget: f64,
}

/// Validated settings of the service.
#[derive(Debug)]
pub struct Settings {
    /// Address the gRPC server listens on.
    pub listen: SocketAddr,
    /// Where upstream requests go.
    pub upstream: Upstream,
    /// Time allowed to open an upstream connection.
    pub upstream_connect_timeout: Duration,
    /// Time allowed for one upstream request.
    pub upstream_timeout: Duration,
    /// Log output format.
    pub log_format: LogFormat,
    /// Tuning of WatchTask.
    pub watch: WatchSettings,
}

/// The Stream API the service talks to.
#[derive(Debug)]
pub enum Upstream {
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
        let upstream = if self.emulator {
            Upstream::Emulator
        } else {
            Upstream::Remote {
                base_url: parse_base_url(&self.stream_base_url)?,
                api_key: required(self.stream_api_key, "STREAM_API_KEY (--stream-api-key)")?,
                api_secret: required(self.stream_api_secret, "STREAM_API_SECRET (--stream-api-secret)")?.into(),
            }
        };
        for (value, name) in [
            (self.upstream_connect_timeout, "STREAM_EXPORT_UPSTREAM_CONNECT_TIMEOUT (--upstream-connect-timeout)"),
            (self.upstream_timeout, "STREAM_EXPORT_UPSTREAM_TIMEOUT (--upstream-timeout)"),
        ] {
            if value.is_zero() {
                return Err(ConfigError(format!("{name} must be greater than zero")));
            }
        }
        Ok(Settings {
            listen: self.listen,
            upstream,
            upstream_connect_timeout: self.upstream_connect_timeout,
            upstream_timeout: self.upstream_timeout,
            log_format: self.log_format,
            watch: WatchSettings {
                heartbeat_interval: self.watch_heartbeat,
                poll_interval_min: self.watch_poll_min,
                poll_interval_max: self.watch_poll_max,
                failure_budget: self.watch_failure_budget,
                max_stream_lifetime: self.watch_max_lifetime,
                max_streams: self.watch_max_streams,
                upstream_budget_per_second: self.upstream_poll_budget,
                terminal_retention: self.watch_retention,
            },
        })
    }
}

fn required(value: Option<String>, name: &str) -> Result<String, ConfigError> {
    match value {
        Some(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(ConfigError(format!(
            "missing setting {name}; or pass --emulator to try the service without a Stream account"
        ))),
    }
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
