//! OpenTelemetry: the service's spans exported over OTLP, for Jaeger, Tempo or a Collector.
//!
//! Configured only by the standard variables, read when the service starts:
//!
//! - `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`: where to send spans.
//!   **Tracing is off unless one of them is set** (and off with `OTEL_SDK_DISABLED=true` or
//!   `OTEL_TRACES_EXPORTER=none`).
//! - `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`: `grpc` (the default
//!   here) or `http/protobuf`.
//! - `OTEL_SERVICE_NAME` (default `stream-export`), `OTEL_RESOURCE_ATTRIBUTES`.
//! - `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default `parentbased_always_on`).
//! - `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`,
//!   `OTEL_BSP_EXPORT_TIMEOUT`; and the exporter's `OTEL_EXPORTER_OTLP_{TIMEOUT,HEADERS,COMPRESSION}`.
//!
//! Spans leave through the SDK's batch processor: ended spans go into a bounded queue that a
//! thread of its own exports, so a collector that is slow or down never delays a call (when the
//! queue is full, spans are dropped). Only spans are exported, never log events, and only the
//! spans made for export (the per-call server span, built directly with the SDK by
//! [`super::server_span`], and the client and poll spans of [`SPAN_TARGET`]): their attributes
//! are chosen to carry no secret.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use opentelemetry::{
    KeyValue,
    trace::{SpanContext, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _},
};
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracer, SdkTracerProvider, SpanData, SpanProcessor},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{Layer, Registry, filter::filter_fn};

use super::server_span::{self, CallSpanLayer};

/// The target of the spans made for export only (not shown in the logs): the upstream client
/// spans, the poll spans.
pub const SPAN_TARGET: &str = "stream_export::otel";

/// The service name when neither `OTEL_SERVICE_NAME` nor a `service.name` resource attribute
/// gives one.
pub const DEFAULT_SERVICE_NAME: &str = "stream-export";

/// The longest the final flush waits for the collector at shutdown (after the drain, so the
/// default 20 s grace and this fit Kubernetes' default 30 s termination grace).
pub const FLUSH_LIMIT: Duration = Duration::from_secs(5);

/// The tracer of the exported spans, once export is on (set once, at start-up).
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are exported in this process: the calls get server spans, and the client
/// spans exist, only then.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// The tracer of the exported spans, when spans are exported.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318).
    HttpProtobuf,
}

/// What the `OTEL_*` variables ask for, read through `var` (the process environment in
/// production, a map in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtelEnv {
    /// The transport.
    pub protocol: Protocol,
    /// Whether to set `service.name` to [`DEFAULT_SERVICE_NAME`] (no name was given).
    pub default_service_name: bool,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`: the most spans waiting for export.
    pub max_queue_size: usize,
}

impl OtelEnv {
    /// `Ok(None)` when tracing is off; an error for a protocol this build cannot speak.
    pub fn read(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let set = |name: &str| var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        let disabled = set("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            || set("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"));
        let endpoint = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"));
        if disabled || endpoint.is_none() {
            return Ok(None);
        }
        let protocol =
            match set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL").or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL")).as_deref() {
                None | Some("grpc") => Protocol::Grpc,
                Some("http/protobuf") => Protocol::HttpProtobuf,
                Some(other) => anyhow::bail!(
                    "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported: use \"grpc\" or \"http/protobuf\""
                ),
            };
        let named = set("OTEL_SERVICE_NAME").is_some()
            || set("OTEL_RESOURCE_ATTRIBUTES")
                .is_some_and(|attributes| attributes.split(',').any(|kv| kv.trim_start().starts_with("service.name=")));
        let max_queue_size = set("OTEL_BSP_MAX_QUEUE_SIZE")
            .and_then(|size| size.parse().ok())
            .unwrap_or(opentelemetry_sdk::trace::OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT);
        Ok(Some(Self { protocol, default_service_name: !named, max_queue_size }))
    }
}

/// The running export pipeline; [`Tracing::shutdown`] flushes it.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Builds the exporter and the batch processor (inside the runtime: the gRPC exporter's
    /// channel lives on it). Nothing is connected yet: a collector that is down is not an error.
    pub fn start(env: &OtelEnv) -> anyhow::Result<Self> {
        // The HTTP exporter's reqwest client uses the process's default rustls provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = match env.protocol {
            Protocol::Grpc => {
                SpanExporter::builder().with_tonic().with_protocol(opentelemetry_otlp::Protocol::Grpc).build()
            }
            Protocol::HttpProtobuf => {
                SpanExporter::builder().with_http().with_protocol(opentelemetry_otlp::Protocol::HttpBinary).build()
            }
        }
        .context("building the OTLP span exporter")?;
        let mut resource =
            Resource::builder().with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
        if env.default_service_name {
            resource = resource.with_service_name(DEFAULT_SERVICE_NAME);
        }
        // The sampler (`OTEL_TRACES_SAMPLER`, parent-based by default) and the batch settings
        // (`OTEL_BSP_*`) are read by the SDK's defaults.
        let pending = Arc::new(AtomicUsize::new(0));
        let exporter = CountingExporter { inner: exporter, pending: Arc::clone(&pending) };
        let batch =
            BatchSpanProcessor::builder(exporter).with_batch_config(BatchConfigBuilder::default().build()).build();
        let processor = CountingProcessor { inner: batch, pending, limit: env.max_queue_size };
        let provider =
            SdkTracerProvider::builder().with_span_processor(processor).with_resource(resource.build()).build();
        // Started once per process (tests start the pipeline once too).
        let _ = TRACER.set(provider.tracer("stream-export"));
        Ok(Self { provider })
    }

    /// The tracing layers of the exported spans: the calls' server spans
    /// ([`CallSpanLayer`]), and the layer that turns the spans of [`SPAN_TARGET`] into OTel
    /// spans (spans only: log events stay in the logs; never the emulator's).
    pub fn layers(&self) -> [Box<dyn Layer<Registry> + Send + Sync>; 2] {
        let tracer = self.provider.tracer("stream-export");
        let calls = CallSpanLayer.with_filter(filter_fn(CallSpanLayer::watches)).boxed();
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_filter(filter_fn(|metadata| metadata.is_span() && is_exported(metadata.target())))
            .boxed();
        [calls, spans]
    }

    /// Exports what is queued and stops, waiting at most `limit` (off the runtime's threads:
    /// the SDK's shutdown blocks).
    pub async fn shutdown(self, limit: Duration) {
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(limit));
        match tokio::time::timeout(limit + Duration::from_millis(100), flush).await {
            Ok(Ok(Ok(()))) => tracing::debug!("spans flushed"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "flushing spans at shutdown failed"),
            Ok(Err(_)) | Err(_) => tracing::warn!(?limit, "flushing spans at shutdown did not finish in time"),
        }
    }
}

/// A client span for one upstream HTTP request, or nothing when spans are not exported: built
/// with the SDK directly (like the server spans), a child of the current OTel context (the
/// call's server span, or a poll span). It names the request by method and path only: never
/// the query (it holds the api key) nor a signed URL's query. `resend` counts the attempts
/// before this one (`http.request.resend_count`, set on resends only). It ends with
/// [`client_span_ended`], or when dropped.
pub fn client_span(method: &str, host: &str, port: Option<u16>, path: &str, resend: usize) -> ClientSpan {
    let Some(tracer) = tracer() else {
        return ClientSpan(None);
    };
    let mut attributes = Vec::with_capacity(5);
    attributes.push(KeyValue::new("http.request.method", method.to_owned()));
    attributes.push(KeyValue::new("url.path", path.to_owned()));
    attributes.push(KeyValue::new("server.address", host.to_owned()));
    if let Some(port) = port {
        attributes.push(KeyValue::new("server.port", i64::from(port)));
    }
    if resend > 0 {
        attributes.push(KeyValue::new("http.request.resend_count", resend as i64));
    }
    let builder = tracer.span_builder(method.to_owned()).with_kind(SpanKind::Client).with_attributes(attributes);
    let parent = opentelemetry::Context::current();
    let span = tracer.build_with_context(builder, &parent);
    ClientSpan(Some(parent.with_span(span)))
}

/// An upstream request's client span (see [`client_span`]).
#[derive(Debug)]
pub struct ClientSpan(Option<opentelemetry::Context>);

impl ClientSpan {
    /// The span's context, when spans are exported and this one is valid (for the
    /// `traceparent` sent upstream).
    pub fn span_context(&self) -> Option<SpanContext> {
        let context = self.0.as_ref()?.span().span_context().clone();
        context.is_valid().then_some(context)
    }
}

/// A client span for one Redis call in fleet mode (a child of the current span): the command
/// and what it is for (`operation`, e.g. `EVALSHA submit.claim`), never its keys or arguments
/// (request ids, task ids) nor the URL (it may hold a password). A disabled span when spans
/// are not exported.
pub fn redis_span(operation: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let command = operation.split(' ').next().unwrap_or(operation);
    tracing::info_span!(
        target: SPAN_TARGET,
        "redis",
        otel.name = operation,
        otel.kind = "client",
        db.system = "redis",
        db.operation.name = command,
        "error.type" = tracing::field::Empty,
    )
}

/// Marks a Redis client span from [`redis_span`] as failed, with the error's class.
pub fn redis_span_failed(span: &tracing::Span, class: &str) {
    if span.is_disabled() {
        return;
    }
    span.record("error.type", class);
    span.set_status(opentelemetry::trace::Status::error(""));
}

/// How an upstream request ended, for its client span.
#[derive(Clone, Copy, Debug)]
pub enum ClientOutcome<'a> {
    /// An HTTP answer, with Stream's error code when it sent an error document.
    Answered {
        /// The HTTP status.
        status: u16,
        /// Stream's `code`.
        stream_code: Option<i64>,
    },
    /// No answer (or an unusable one): the error's class, as in the metrics.
    Failed(&'a str),
}

/// Records `outcome` on a client span from [`client_span`] and ends it; 4xx, 5xx and failures
/// without an answer mark it as an error.
pub fn client_span_ended(span: &ClientSpan, outcome: ClientOutcome<'_>) {
    let Some(context) = &span.0 else {
        return;
    };
    let span = context.span();
    match outcome {
        ClientOutcome::Answered { status, stream_code } => {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(status)));
            if let Some(code) = stream_code {
                span.set_attribute(KeyValue::new("stream.error_code", code));
            }
            if status >= 400 {
                span.set_attribute(KeyValue::new("error.type", i64::from(status)));
                span.set_status(opentelemetry::trace::Status::error(""));
            }
        }
        ClientOutcome::Failed(class) => {
            span.set_attribute(KeyValue::new("error.type", class.to_owned()));
            span.set_status(opentelemetry::trace::Status::error(""));
        }
    }
    span.end();
}

/// The most watchers a poll span links to (the latest ones).
pub const MAX_LINKS: usize = 32;

/// The span contexts of a task's watchers' calls, for the poll spans to link to: a poller
/// outlives any one watcher, so each poll is a trace of its own, linked to the calls that
/// wait for it rather than a child of the first one.
#[derive(Debug, Default)]
pub struct WatcherLinks(Mutex<VecDeque<SpanContext>>);

impl WatcherLinks {
    /// Adds the call of `span` (a watcher's call span); nothing when spans are not exported.
    pub fn add(&self, span: &tracing::Span) {
        if !enabled() {
            return;
        }
        if let Some(context) = server_span::span_context(span) {
            let mut links = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if links.len() == MAX_LINKS {
                links.pop_front();
            }
            links.push_back(context);
        }
    }

    fn snapshot(&self) -> Vec<SpanContext> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter().cloned().collect()
    }
}

/// The span of one poll of `task_id`: the root of its own trace, linked to the watchers'
/// calls; a disabled span when spans are not exported.
pub fn poll_span(task_id: &str, watchers: &WatcherLinks) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(target: SPAN_TARGET, parent: None, "poll", otel.name = "task_watch.poll", task_id);
    for watcher in watchers.snapshot() {
        span.add_link(watcher);
    }
    span
}

/// Records on a WatchTask call's span how many events its stream sent and how it ended
/// (`terminal`, `upstream`, `shutdown`, `deadline`, `lifetime`, `poller_stopped`, or
/// `cancelled` when the watcher left first).
pub fn watch_ended(span: &tracing::Span, events_sent: u64, end: &'static str) {
    if enabled() && !span.is_disabled() {
        server_span::set_attributes(
            span,
            [
                KeyValue::new("stream_export.watch.events_sent", events_sent as i64),
                KeyValue::new("stream_export.watch.end", end),
            ],
        );
    }
}

/// The batch processor, in front of which spans are counted: a span that would find the
/// processor holding `limit` spans (queued or being exported) is dropped here and counted in
/// [`super::metrics::SPANS_DROPPED`], so that the SDK's own queue (of the same size) never drops
/// one uncounted.
#[derive(Debug)]
struct CountingProcessor {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    limit: usize,
}

impl SpanProcessor for CountingProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            super::metrics::spans_dropped("queue_full", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting the spans that leave the processor (sent, or lost with a failed
/// export: counted in [`super::metrics::SPANS_DROPPED`]).
#[derive(Debug)]
struct CountingExporter {
    inner: SpanExporter,
    pending: Arc<AtomicUsize>,
}

impl opentelemetry_sdk::trace::SpanExporter for CountingExporter {
    fn export(&self, batch: Vec<SpanData>) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let spans = batch.len();
        let pending = Arc::clone(&self.pending);
        let export = self.inner.export(batch);
        async move {
            let result = export.await;
            pending.fetch_sub(spans, Ordering::AcqRel);
            if result.is_err() {
                super::metrics::spans_dropped("export_failed", spans);
            }
            result
        }
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The tracing spans exported through the OTel layer: those made for export only (the server
/// spans are not tracing spans; the emulator's, embedded with `serve --emulator`, are not the
/// service's).
fn is_exported(target: &str) -> bool {
    target == SPAN_TARGET
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&str, &str)]) -> anyhow::Result<Option<OtelEnv>> {
        OtelEnv::read(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn tracing_is_off_without_an_endpoint() {
        assert_eq!(read(&[]).unwrap(), None);
        assert_eq!(read(&[("OTEL_SERVICE_NAME", "x"), ("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]).unwrap(), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        assert_eq!(read(&[endpoint, ("OTEL_SDK_DISABLED", "true")]).unwrap(), None);
        assert_eq!(read(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(), None);
        let on = read(&[endpoint]).unwrap().unwrap();
        assert_eq!(on, OtelEnv { protocol: Protocol::Grpc, default_service_name: true, max_queue_size: 2048 });
        assert_eq!(read(&[endpoint, ("OTEL_BSP_MAX_QUEUE_SIZE", "8")]).unwrap().unwrap().max_queue_size, 8);
        assert!(read(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4318/v1/traces")]).unwrap().is_some());
    }

    #[test]
    fn protocol_and_service_name_follow_the_standard_variables() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let http = read(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap().unwrap();
        assert_eq!(http.protocol, Protocol::HttpProtobuf);
        let traces_wins = read(&[
            endpoint,
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ]);
        assert_eq!(traces_wins.unwrap().unwrap().protocol, Protocol::Grpc);
        assert!(read(&[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).is_err());
        let named = read(&[endpoint, ("OTEL_SERVICE_NAME", "exports")]).unwrap().unwrap();
        assert!(!named.default_service_name);
        let attributed = read(&[endpoint, ("OTEL_RESOURCE_ATTRIBUTES", "team=data, service.name=exports")]);
        assert!(!attributed.unwrap().unwrap().default_service_name);
    }

    #[test]
    fn only_the_spans_made_for_export_are_exported() {
        assert!(!is_exported("stream_export::telemetry::layer"), "the call's span: its server span is built apart");
        assert!(is_exported(SPAN_TARGET));
        assert!(!is_exported("stream_export::emulator::routes"));
        assert!(!is_exported("h2::proto"));
        assert!(!is_exported("stream_exporter"));
    }
}
