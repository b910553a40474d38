//! The OpenTelemetry server span of a call, built with the SDK directly from what the call
//! already has (its method, the caller's trace context), not through the OTel tracing layer:
//! that layer's per-span builder, field visitor and string attributes, and its lookups on
//! every enter and exit, cost more than the span's export.
//!
//! The call's `grpc` tracing span (the one of the log lines) carries it, in its extensions, so
//! that whatever holds that span reaches it: [`CallSpanLayer`] makes it the current OTel
//! context while the span is entered (the upstream client spans become its children), copies
//! the `caller` and `task_id` the handlers record onto it, and ends it when the tracing span
//! closes (after a stream's last event, as before).

use std::cell::RefCell;

use opentelemetry::{
    Context, ContextGuard, KeyValue,
    trace::{SpanContext, SpanKind, Status, TraceContextExt, Tracer as _},
};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::{
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{Layer, Registry, layer::Context as LayerContext, registry::LookupSpan};

use super::trace_context::TraceContext;

/// The name of the call's tracing span, which [`CallSpanLayer`] watches.
pub const CALL_SPAN_NAME: &str = "grpc";

/// Where the call's tracing span is made (`telemetry::layer`).
const CALL_SPAN_TARGET: &str = "stream_export::telemetry::layer";

/// The server span, kept in the extensions of the call's tracing span.
struct ServerSpan(Context);

/// Starts the server span of a call and attaches it to `call` (the call's tracing span): a
/// child of the caller's context when it sent one, with the `rpc.*` attributes of the
/// conventions. Nothing when `call` is disabled.
pub fn start(tracer: &SdkTracer, call: &tracing::Span, method: &'static str, caller: Option<&TraceContext>) {
    let parent = caller.map_or_else(Context::new, TraceContext::otel_context);
    let mut attributes = Vec::with_capacity(6);
    attributes.push(KeyValue::new("rpc.system", "grpc"));
    if let Some((service, name)) = method.split_once('/') {
        attributes.push(KeyValue::new("rpc.service", service));
        attributes.push(KeyValue::new("rpc.method", name));
    }
    let builder = tracer.span_builder(method).with_kind(SpanKind::Server).with_attributes(attributes);
    let context = parent.with_span(tracer.build_with_context(builder, &parent));
    call.with_subscriber(|(id, dispatch)| {
        if let Some(span) = dispatch.downcast_ref::<Registry>().and_then(|registry| registry.span(id)) {
            span.extensions_mut().insert(ServerSpan(context));
        }
    });
}

/// Runs `f` on the server span that `call` carries, if it carries one.
fn with_server_span<R>(call: &tracing::Span, f: impl FnOnce(&Context) -> R) -> Option<R> {
    call.with_subscriber(|(id, dispatch)| {
        let span = dispatch.downcast_ref::<Registry>()?.span(id)?;
        let extensions = span.extensions();
        extensions.get::<ServerSpan>().map(|server| f(&server.0))
    })
    .flatten()
}

/// Records the code a call ended with on its server span; the codes that mean the server
/// failed (not the caller) mark the span as an error, as the gRPC conventions say.
pub fn ended(call: &tracing::Span, code: tonic::Code) {
    use tonic::Code;
    with_server_span(call, |context| {
        let span = context.span();
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
        if matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ) {
            span.set_status(Status::error(super::metrics::code_label(code)));
        }
    });
}

/// Sets attributes on the server span that `call` carries.
pub fn set_attributes(call: &tracing::Span, attributes: impl IntoIterator<Item = KeyValue>) {
    with_server_span(call, |context| context.span().set_attributes(attributes));
}

/// The span context of the server span that `call` carries (for links to it).
pub fn span_context(call: &tracing::Span) -> Option<SpanContext> {
    with_server_span(call, |context| context.span().span_context().clone()).filter(SpanContext::is_valid)
}

thread_local! {
    /// The server spans made current by entering their calls' tracing spans, innermost last.
    static ENTERED: RefCell<Vec<(span::Id, ContextGuard)>> = const { RefCell::new(Vec::new()) };
}

/// See the module's documentation. Sees the calls' tracing spans only.
pub struct CallSpanLayer;

impl CallSpanLayer {
    /// Whether `metadata` is that of the call's tracing span.
    pub fn watches(metadata: &tracing::Metadata<'_>) -> bool {
        metadata.is_span() && metadata.name() == CALL_SPAN_NAME && metadata.target() == CALL_SPAN_TARGET
    }
}

impl Layer<Registry> for CallSpanLayer {
    fn on_enter(&self, id: &span::Id, ctx: LayerContext<'_, Registry>) {
        let Some(span) = ctx.span(id) else { return };
        let context = span.extensions().get::<ServerSpan>().map(|server| server.0.clone());
        if let Some(context) = context {
            let guard = context.attach();
            ENTERED.with(|entered| entered.borrow_mut().push((id.clone(), guard)));
        }
    }

    fn on_exit(&self, id: &span::Id, _ctx: LayerContext<'_, Registry>) {
        let guard = ENTERED.with(|entered| {
            let mut entered = entered.borrow_mut();
            let at = entered.iter().rposition(|(entered_id, _)| entered_id == id)?;
            Some(entered.remove(at))
        });
        // Detached outside the borrow.
        drop(guard);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: LayerContext<'_, Registry>) {
        let Some(span) = ctx.span(id) else { return };
        let extensions = span.extensions();
        let Some(server) = extensions.get::<ServerSpan>() else { return };
        values.record(&mut ChosenFields(&server.0));
    }

    fn on_close(&self, id: span::Id, ctx: LayerContext<'_, Registry>) {
        let Some(span) = ctx.span(&id) else { return };
        let server = span.extensions_mut().remove::<ServerSpan>();
        if let Some(server) = server {
            server.0.span().end();
        }
    }
}

/// The fields the handlers record on the call's span that its server span carries too.
struct ChosenFields<'a>(&'a Context);

impl Visit for ChosenFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        let name = field.name();
        if matches!(name, "caller" | "task_id") {
            self.0.span().set_attribute(KeyValue::new(name, value.to_owned()));
        }
    }

    fn record_debug(&mut self, _field: &Field, _value: &dyn std::fmt::Debug) {}
}
