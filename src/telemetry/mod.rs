//! Logging and tracing set-up.

use std::io::IsTerminal;

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
    let colour = colour_wanted(std::io::stderr().is_terminal(), |name| std::env::var_os(name));
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Text => fmt::layer()
            .with_ansi(colour)
            .fmt_fields(log_line::SpanFields)
            .event_format(log_line::TextLine)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .with_ansi(false)
            .event_format(log_line::JsonLine)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![logs];
    if let Some(tracing) = tracing {
        layers.extend(tracing.layers());
    }
    let _ = tracing_subscriber::registry().with(layers).try_init();
}

/// Whether text log lines get ANSI colours: only on a terminal, so that a file, a pipe or a
/// log collector gets plain text. `NO_COLOR` (any value) turns them off anywhere, and
/// `CLICOLOR_FORCE` (any value but `0`) on anywhere (the conventions of no-color.org and
/// bixense.com/clicolors).
fn colour_wanted(terminal: bool, env: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let set = |name| env(name).is_some_and(|value| !value.is_empty());
    if set("NO_COLOR") {
        return false;
    }
    if set("CLICOLOR_FORCE") && env("CLICOLOR_FORCE").is_some_and(|value| value != "0") {
        return true;
    }
    terminal
}

pub use crate::contract::status::code_name;

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| OsString::from(value))
    }

    #[test]
    fn colour_only_on_a_terminal_unless_the_environment_says_otherwise() {
        assert!(colour_wanted(true, env(&[])));
        assert!(!colour_wanted(false, env(&[])));
        assert!(!colour_wanted(true, env(&[("NO_COLOR", "1")])));
        assert!(colour_wanted(false, env(&[("CLICOLOR_FORCE", "1")])));
        assert!(!colour_wanted(false, env(&[("CLICOLOR_FORCE", "0")])));
        assert!(colour_wanted(true, env(&[("NO_COLOR", "")])));
    }

    #[test]
    fn code_names_are_grpcs() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::NotFound), "NOT_FOUND");
        assert_eq!(code_name(tonic::Code::Cancelled), "CANCELLED");
    }
}

pub mod call_body;
pub mod layer;
pub mod log_line;
pub mod method;
pub mod metrics;
pub mod otel;
pub mod server_span;
pub mod trace_context;
