//! The upstream group: which Stream API the service talks to (or the embedded emulator), with
//! which credentials, and how long it waits for it.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{ConfigError, FlagDuration, parse_secret, positive_durations};

/// The real Stream API: paths hang directly off this origin.
pub const DEFAULT_STREAM_BASE_URL: &str = "https://chat.stream-io-api.com";

/// Time allowed to open a connection to Stream.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Time allowed for one whole upstream request.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// Flags of the Stream API and its timeouts.
#[derive(clap::Args, Debug)]
pub struct UpstreamArgs {
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

    /// With --emulator: add this many synthetic channels `messaging:bulk-NNNNNN` to its data set
    /// (spread over a year, bulk imports of 45 in one microsecond), to try export jobs at scale.
    #[arg(long, env = "STREAM_EXPORT_EMULATOR_SYNTHETIC_CHANNELS", default_value_t = 0, requires = "emulator")]
    pub emulator_synthetic_channels: usize,

    /// Time allowed to open a connection to Stream.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_CONNECT_TIMEOUT", default_value_t = FlagDuration(DEFAULT_UPSTREAM_CONNECT_TIMEOUT))]
    pub upstream_connect_timeout: FlagDuration,

    /// Time allowed for one whole upstream request.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_TIMEOUT", default_value_t = FlagDuration(DEFAULT_UPSTREAM_TIMEOUT))]
    pub upstream_timeout: FlagDuration,
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
    Emulator {
        /// Synthetic channels added to its data set.
        synthetic_channels: usize,
    },
}

impl UpstreamArgs {
    /// Rejects timeouts that cannot work.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_durations(&[
            (self.upstream_connect_timeout, "STREAM_EXPORT_UPSTREAM_CONNECT_TIMEOUT (--upstream-connect-timeout)"),
            (self.upstream_timeout, "STREAM_EXPORT_UPSTREAM_TIMEOUT (--upstream-timeout)"),
        ])
    }

    /// The emulator, or the Stream API with its (required) credentials.
    pub(super) fn into_settings(self) -> Result<UpstreamSettings, ConfigError> {
        if self.emulator {
            return Ok(UpstreamSettings::Emulator { synthetic_channels: self.emulator_synthetic_channels });
        }
        Ok(UpstreamSettings::Remote {
            base_url: parse_base_url(&self.stream_base_url)?,
            api_key: self
                .stream_api_key
                .filter(|key| !key.trim().is_empty())
                .ok_or_else(|| missing("STREAM_API_KEY (--stream-api-key)"))?,
            api_secret: self
                .stream_api_secret
                .filter(|secret| !secret.expose_secret().trim().is_empty())
                .ok_or_else(|| missing("STREAM_API_SECRET (--stream-api-secret)"))?,
        })
    }
}

fn missing(name: &str) -> ConfigError {
    ConfigError(format!("missing setting {name}; or pass --emulator to try the service without a Stream account"))
}

/// Parses the upstream origin: http or https, no query; a trailing path is kept as a prefix.
pub fn parse_base_url(raw: &str) -> Result<Url, ConfigError> {
    let invalid = |why: &str| ConfigError::invalid(&format!("STREAM_BASE_URL (--stream-base-url) {raw:?}"), why);
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
