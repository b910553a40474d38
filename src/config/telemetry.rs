//! The telemetry group: the log format and the metrics endpoint. (Spans are configured by the
//! standard `OTEL_*` variables, read in `telemetry::otel`.)

use std::net::SocketAddr;

use crate::telemetry::LogFormat;

/// Flags of logs and metrics.
#[derive(clap::Args, Debug)]
pub struct TelemetryArgs {
    /// Log output format.
    #[arg(long, env = "STREAM_EXPORT_LOG_FORMAT", value_enum, default_value_t = LogFormat::default())]
    pub log_format: LogFormat,

    /// Serve Prometheus metrics at `GET /metrics` on this admin address (off unless set).
    #[arg(long, env = "STREAM_EXPORT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}
