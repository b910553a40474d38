//! W3C trace context: the `traceparent` (and `tracestate`) a caller sent, carried through the
//! call and passed on to the upstream requests made for it, so a distributed trace spans the
//! service and Stream.

use std::future::Future;

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::{SpanContext, TraceFlags},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// The incoming trace context headers, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// `traceparent`: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
    pub traceparent: String,
    /// `tracestate`, passed on untouched when present.
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Reads the headers of a request; `None` without a well-formed `traceparent`.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Self> {
        let traceparent = headers.get("traceparent")?.to_str().ok()?.trim();
        if !is_valid_traceparent(traceparent) {
            return None;
        }
        let tracestate = headers.get("tracestate").and_then(|v| v.to_str().ok()).map(str::to_owned);
        Some(Self { traceparent: traceparent.to_owned(), tracestate })
    }

    /// The trace id, for log correlation.
    pub fn trace_id(&self) -> &str {
        self.traceparent.get(3..35).unwrap_or_default()
    }

    /// The context of the call being served on this task, if its caller sent one.
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// The caller's span as the OpenTelemetry parent of the call's server span (its sampled
    /// flag and `tracestate` included).
    pub fn otel_context(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(self)
    }

    /// The `traceparent` and `tracestate` to send upstream for a request: those of its client
    /// span (`span`, so the upstream request is a child of it) when spans are exported, else
    /// the caller's, passed on untouched, if the call being served came with one.
    pub fn outgoing(span: Option<SpanContext>) -> Option<Self> {
        if let Some(context) = span {
            // As `TraceContextPropagator` writes it (version 00, only the sampled flag).
            let flags = context.trace_flags() & TraceFlags::SAMPLED;
            let traceparent = format!("00-{}-{}-{:02x}", context.trace_id(), context.span_id(), flags.to_u8());
            let tracestate = Some(context.trace_state().header()).filter(|state| !state.is_empty());
            return Some(Self { traceparent, tracestate });
        }
        Self::current()
    }

    /// Runs `future` with this context as the current one.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(&self.traceparent),
            "tracestate" => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// Version 00 format; all-zero ids are invalid by the spec.
fn is_valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    matches!(parts.as_slice(), [version, trace, parent, flags]
        if hex(version, 2) && *version != "ff" && hex(trace, 32) && hex(parent, 16) && hex(flags, 2)
            && trace.bytes().any(|b| b != b'0') && parent.bytes().any(|b| b != b'0'))
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TraceContextExt;

    use super::*;

    #[test]
    fn only_well_formed_traceparents_are_taken() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_valid_traceparent(valid));
        for invalid in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(!is_valid_traceparent(invalid), "{invalid:?}");
        }
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", valid.parse().unwrap());
        let context = TraceContext::from_headers(&headers).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");

        let parent = TraceContext { tracestate: Some("vendor=opaque".into()), ..context }.otel_context();
        let parent = parent.span().span_context().clone();
        assert!(parent.is_remote() && parent.is_sampled());
        assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(parent.trace_state().header(), "vendor=opaque");
    }
}
