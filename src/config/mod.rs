//! Settings of `stream-export serve`, from flags with environment fallbacks.
//!
//! A leaf: the flags come in groups, each in the file of the settings it fills, and become plain
//! [`Settings`] (addresses, paths, durations, counts). Nothing here reads a file or builds a
//! live service: `startup` reads the files these settings name (tokens, policies, TLS) and
//! builds the service from them. Every default is written once, in the `Default` of the
//! settings it fills (or one constant), and the flag shows it from there.

mod access;
mod calls;
mod jobs;
mod schedules;
mod state;
mod telemetry;
mod transport;
mod upstream;
mod watch;

use std::{fmt, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

pub use self::{
    access::{AccessArgs, AccessSettings},
    calls::{CallArgs, ReadArgs},
    jobs::JobArgs,
    schedules::ScheduleArgs,
    state::{IdempotencySettings, StateArgs, StateSettings},
    telemetry::TelemetryArgs,
    transport::{DEFAULT_MAX_CONCURRENT_STREAMS, TlsArgs, TlsSettings, TransportArgs, TransportSettings},
    upstream::{
        DEFAULT_STREAM_BASE_URL, DEFAULT_UPSTREAM_CONNECT_TIMEOUT, DEFAULT_UPSTREAM_TIMEOUT, UpstreamArgs,
        UpstreamSettings, parse_base_url,
    },
    watch::WatchArgs,
};
use crate::{
    archive::{ArchiveSettings, StoreOptions},
    fleet::RedisSettings,
    jobs::{JobSettings, schedules::ScheduleSettings},
    service::CallLimits,
    store::embedded::DEFAULT_STATE_DIR,
    task_watch::WatchSettings,
    telemetry::LogFormat,
};

/// Flags of `stream-export serve`. Every flag has an environment variable of the same meaning.
/// `--help` lists them in the order of the groups here.
#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "STREAM_EXPORT_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// The Stream API, its credentials and timeouts.
    #[command(flatten)]
    pub upstream: UpstreamArgs,

    /// Logs and metrics.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// WatchTask.
    #[command(flatten)]
    pub watch: WatchArgs,

    /// Export jobs.
    #[command(flatten)]
    pub jobs: JobArgs,

    /// Export schedules.
    #[command(flatten)]
    pub schedules: ScheduleArgs,

    /// Limits of unary calls.
    #[command(flatten)]
    pub calls: CallArgs,

    /// Limits of ReadExport streams.
    #[command(flatten)]
    pub reads: ReadArgs,

    /// HTTP/2, connections and the drain.
    #[command(flatten)]
    pub transport: TransportArgs,

    /// Where and how long the stores keep their records.
    #[command(flatten)]
    pub state: StateArgs,

    /// Caller authentication and authorization.
    #[command(flatten)]
    pub access: AccessArgs,

    /// TLS serving.
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Validated settings of the service: plain values, and the paths of the files `startup` reads.
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
    /// Tuning of export jobs.
    pub jobs: JobSettings,
    /// Tuning of export schedules.
    pub schedules: ScheduleSettings,
    /// Where export jobs may archive.
    pub archive: ArchiveSettings,
    /// Limits on unary calls and ReadExport streams.
    pub limits: CallLimits,
    /// HTTP/2, TLS and shutdown settings of the gRPC server.
    pub transport: TransportSettings,
    /// Caller authentication and the authorization policies.
    pub access: AccessSettings,
    /// The idempotent-submit store.
    pub idempotency: IdempotencySettings,
    /// Fleet mode: the shared Redis, if any.
    pub redis: Option<RedisSettings>,
    /// Most tasks kept in the task registry (`None`: the default of the store in use).
    pub task_registry_capacity: Option<usize>,
    /// Where a single process keeps its state.
    pub state: StateSettings,
}

impl Settings {
    /// Settings with every default, listening on `listen` and talking to `upstream`.
    pub fn new(listen: SocketAddr, upstream: UpstreamSettings) -> Self {
        Self {
            listen,
            upstream,
            upstream_connect_timeout: DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            log_format: LogFormat::default(),
            metrics_listen: None,
            watch: WatchSettings::default(),
            jobs: JobSettings::default(),
            schedules: ScheduleSettings::default(),
            archive: ArchiveSettings { allow: Vec::new(), store_options: StoreOptions::from_env() },
            limits: CallLimits::default(),
            transport: TransportSettings::default(),
            access: AccessSettings::default(),
            idempotency: IdempotencySettings::default(),
            redis: None,
            task_registry_capacity: None,
            state: StateSettings::Dir(PathBuf::from(DEFAULT_STATE_DIR)),
        }
    }
}

impl ServeArgs {
    /// Checks the flags and turns them into settings. The limits of every group are checked
    /// before the upstream credentials are required.
    pub fn into_settings(self) -> Result<Settings, ConfigError> {
        self.upstream.check()?;
        self.calls.check()?;
        self.watch.check()?;
        self.jobs.check()?;
        self.schedules.check()?;
        self.state.check()?;
        self.reads.check()?;
        self.transport.check()?;
        Ok(Settings {
            listen: self.listen,
            upstream_connect_timeout: self.upstream.upstream_connect_timeout.0,
            upstream_timeout: self.upstream.upstream_timeout.0,
            upstream: self.upstream.into_settings()?,
            log_format: self.telemetry.log_format,
            metrics_listen: self.telemetry.metrics_listen,
            watch: self.watch.into_settings(),
            archive: self.jobs.archive_settings(),
            jobs: self.jobs.into_settings(),
            schedules: self.schedules.into_settings(),
            limits: self.calls.into_limits(self.reads.into_limits()),
            transport: self.transport.into_settings(self.tls.into_settings()),
            access: self.access.into_settings(),
            idempotency: self.state.idempotency(),
            redis: self.state.redis(),
            task_registry_capacity: self.state.task_registry_capacity,
            state: self.state.into_state(),
        })
    }
}

/// A setting that is missing or wrong, or a file it names that cannot be used; its message
/// names the setting. The binary exits with code 2 on it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    /// `setting` (as `STREAM_EXPORT_X (--x)`) has a value that cannot work, for `why`.
    pub fn invalid(setting: &str, why: impl fmt::Display) -> Self {
        Self(format!("invalid setting {setting}: {why}"))
    }

    /// The file `path` that `setting` names cannot be read.
    pub fn unreadable(setting: &str, path: &std::path::Path, error: &std::io::Error) -> Self {
        Self(format!("cannot read {setting} {}: {error}", path.display()))
    }
}

/// A duration flag: parsed as humantime reads it (`500ms`, `20s`, `1h`), and shown (as a
/// default in `--help`) in whole hours, else whole seconds, else milliseconds: `60s`, not `1m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlagDuration(pub Duration);

impl FromStr for FlagDuration {
    type Err = humantime::DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        humantime::parse_duration(text).map(Self)
    }
}

impl fmt::Display for FlagDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HOUR: u64 = 3600;
        let (secs, nanos) = (self.0.as_secs(), self.0.subsec_nanos());
        match (secs, nanos) {
            (secs, 0) if secs > 0 && secs % HOUR == 0 => write!(f, "{}h", secs / HOUR),
            (secs, 0) => write!(f, "{secs}s"),
            _ if nanos % 1_000_000 == 0 => write!(f, "{}ms", self.0.as_millis()),
            _ => write!(f, "{}", humantime::format_duration(self.0)),
        }
    }
}

/// Refuses the first zero duration of `durations`, each with the setting's name.
fn positive_durations(durations: &[(FlagDuration, &str)]) -> Result<(), ConfigError> {
    match durations.iter().find(|(value, _)| value.0.is_zero()) {
        Some((_, name)) => Err(ConfigError(format!("{name} must be greater than zero"))),
        None => Ok(()),
    }
}

/// Refuses the first zero count of `counts`, each with the setting's name.
fn positive_counts(counts: &[(u64, &str)]) -> Result<(), ConfigError> {
    match counts.iter().find(|(value, _)| *value == 0) {
        Some((_, name)) => Err(ConfigError(format!("{name} must be at least 1"))),
        None => Ok(()),
    }
}

/// A secret flag's value, kept out of `Debug`.
fn parse_secret(value: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(value))
}

/// `0s` turns an optional duration off.
fn nonzero(duration: FlagDuration) -> Option<Duration> {
    (!duration.0.is_zero()).then_some(duration.0)
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

    /// The binary and the in-process tests (and embedders, with [`Settings::new`]) run the same
    /// service: every flag lands in its setting, and with no flag, each is its default. (Any
    /// `STREAM_EXPORT_*` variable set where the tests run shows up as a difference.)
    #[test]
    fn the_flags_defaults_are_the_default_settings() {
        let parsed = Serve::try_parse_from(["serve", "--emulator"]).unwrap().args.into_settings().unwrap();
        let defaults = Settings::new(parsed.listen, UpstreamSettings::Emulator { synthetic_channels: 0 });
        assert_eq!(format!("{parsed:#?}"), format!("{defaults:#?}"));
    }

    /// A default shows in `--help` as users write it: docs/flags.md lists `60s` and `1h`.
    #[test]
    fn durations_show_in_the_unit_users_write() {
        let shown = |duration| FlagDuration(duration).to_string();
        assert_eq!(shown(Duration::from_secs(60)), "60s");
        assert_eq!(shown(Duration::from_secs(6 * 3600)), "6h");
        assert_eq!(shown(Duration::from_millis(250)), "250ms");
        assert_eq!(shown(Duration::ZERO), "0s");
        for duration in [Duration::from_secs(90), Duration::from_micros(1500), Duration::from_millis(500)] {
            assert_eq!(shown(duration).parse::<FlagDuration>().unwrap().0, duration, "{duration:?} roundtrips");
        }
    }
}
