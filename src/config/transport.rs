//! The server's transport groups: HTTP/2 limits and keepalives, connection age, the drain, and
//! TLS, into [`TransportSettings`] (whose `Default` holds every default).

use std::{path::PathBuf, time::Duration};

use super::{ConfigError, FlagDuration, nonzero, positive_counts};

/// Concurrent HTTP/2 streams per client connection: enough for a client that multiplexes
/// many watches over one connection, small enough that one connection cannot tie up the
/// server's memory and tasks alone (h2's own default is unlimited).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 200;

/// Flags of HTTP/2, connections and the drain.
#[derive(clap::Args, Debug)]
pub struct TransportArgs {
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "STREAM_EXPORT_MAX_REQUEST_BYTES", default_value_t = TransportSettings::default().max_request_bytes)]
    pub max_request_bytes: usize,

    /// Most concurrent calls (HTTP/2 streams) on one client connection, advertised to clients
    /// in SETTINGS_MAX_CONCURRENT_STREAMS; past it, clients queue calls or open another connection.
    #[arg(long, env = "STREAM_EXPORT_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,

    /// HTTP/2 keepalive ping interval on client connections ("0s": off).
    #[arg(long, env = "STREAM_EXPORT_HTTP2_KEEPALIVE_INTERVAL", default_value_t = off_as_zero(TransportSettings::default().http2_keepalive_interval))]
    pub http2_keepalive_interval: FlagDuration,

    /// How long to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, env = "STREAM_EXPORT_HTTP2_KEEPALIVE_TIMEOUT", default_value_t = FlagDuration(TransportSettings::default().http2_keepalive_timeout))]
    pub http2_keepalive_timeout: FlagDuration,

    /// Close client connections after this age, so load spreads over new replicas ("0s": never).
    /// Long WatchTask streams are cut when it passes: leave it off unless clients resume.
    #[arg(long, env = "STREAM_EXPORT_MAX_CONNECTION_AGE", default_value_t = off_as_zero(TransportSettings::default().max_connection_age))]
    pub max_connection_age: FlagDuration,

    /// On SIGTERM/SIGINT, the longest the process waits for calls and connections to finish.
    #[arg(long, env = "STREAM_EXPORT_SHUTDOWN_GRACE", default_value_t = FlagDuration(TransportSettings::default().shutdown_grace))]
    pub shutdown_grace: FlagDuration,
}

/// Flags of TLS serving.
#[derive(clap::Args, Debug)]
pub struct TlsArgs {
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
            // gRPC's usual receive limit: an export job's list of 100,000 channels fits.
            max_request_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            http2_keepalive_interval: Some(Duration::from_secs(30)),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_connection_age: None,
            shutdown_grace: Duration::from_secs(20),
            tls: None,
        }
    }
}

/// The PEM files of TLS serving; `startup` reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// The certificate chain.
    pub cert_file: PathBuf,
    /// The private key.
    pub key_file: PathBuf,
    /// The CA that signs client certificates, for mutual TLS.
    pub client_ca_file: Option<PathBuf>,
}

impl TransportArgs {
    /// Rejects limits that would refuse every call.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_counts(&[
            (self.max_request_bytes as u64, "STREAM_EXPORT_MAX_REQUEST_BYTES (--max-request-bytes)"),
            (u64::from(self.max_concurrent_streams), "STREAM_EXPORT_MAX_CONCURRENT_STREAMS (--max-concurrent-streams)"),
        ])
    }

    /// The transport settings, serving `tls` if set.
    pub(super) fn into_settings(self, tls: Option<TlsSettings>) -> TransportSettings {
        TransportSettings {
            max_request_bytes: self.max_request_bytes,
            max_concurrent_streams: self.max_concurrent_streams,
            http2_keepalive_interval: nonzero(self.http2_keepalive_interval),
            http2_keepalive_timeout: self.http2_keepalive_timeout.0,
            max_connection_age: nonzero(self.max_connection_age),
            shutdown_grace: self.shutdown_grace.0,
            tls,
        }
    }
}

impl TlsArgs {
    /// TLS if both a certificate and its key are given (clap requires the one with the other).
    pub(super) fn into_settings(self) -> Option<TlsSettings> {
        match (self.tls_cert, self.tls_key) {
            (Some(cert_file), Some(key_file)) => {
                Some(TlsSettings { cert_file, key_file, client_ca_file: self.tls_client_ca })
            }
            _ => None,
        }
    }
}

/// An optional duration as its flag writes it: `0s` for off.
fn off_as_zero(duration: Option<Duration>) -> FlagDuration {
    FlagDuration(duration.unwrap_or(Duration::ZERO))
}
