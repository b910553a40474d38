//! Logging and tracing set-up.

use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt, filter_fn},
    fmt,
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Installs the global subscriber: log lines on stderr, filtered by `RUST_LOG` (default
/// `info`), and, with `tracing`, the OpenTelemetry layer that exports the service's spans
/// (filtered on its own: `RUST_LOG` quiets the logs, not the traces). Calling it again is
/// harmless.
pub fn init(format: LogFormat, tracing: Option<&otel::Tracing>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The spans made for export only stay out of the log lines.
    let filter = filter.and(filter_fn(|metadata| metadata.target() != otel::SPAN_TARGET));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt::layer().with_writer(std::io::stderr).with_filter(filter).boxed(),
        LogFormat::Json => fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed(),
    };
    let mut layers = vec![logs];
    if let Some(tracing) = tracing {
        layers.push(tracing.layer());
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

pub mod call_body;
pub mod layer;
pub mod method;
pub mod metrics;
pub mod otel;
pub mod trace_context;
