//! The tower layer around every gRPC call: one span per call (method and trace id here, caller
//! and task id recorded by the handlers, the code the response starts with here), the call's
//! metrics (counted when the response body ends, with its final code: see [`CallBody`]), and
//! the caller's W3C trace context made current for the upstream requests of the call. When
//! spans are exported ([`otel`]), the call's span carries its OpenTelemetry server span, a
//! child of the caller's `traceparent` ([`server_span`]).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tower::{Layer, Service};
use tracing::Instrument;

use super::{
    call_body::{CallBody, PendingCall, status_of},
    method, metrics, otel, server_span,
    trace_context::TraceContext,
};

/// Adds [`GrpcTelemetry`] to a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrpcTelemetryLayer;

impl<S> Layer<S> for GrpcTelemetryLayer {
    type Service = GrpcTelemetry<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcTelemetry { inner }
    }
}

/// See [`GrpcTelemetryLayer`].
#[derive(Clone, Debug)]
pub struct GrpcTelemetry<S> {
    inner: S,
}

impl<S, B, R> Service<http::Request<B>> for GrpcTelemetry<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = http::Response<CallBody<R>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = method::label(request.uri().path());
        let trace = TraceContext::from_headers(request.headers());
        let span = tracing::info_span!(
            server_span::CALL_SPAN_NAME,
            method,
            path = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            caller = tracing::field::Empty,
            task_id = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        if let Some(tracer) = otel::tracer() {
            server_span::start(tracer, &span, method, trace.as_ref());
        }
        // Only a call that came with a trace names one: no `trace_id=""` on the others' lines.
        if let Some(trace) = &trace {
            span.record("trace_id", trace.trace_id());
        }
        if method == method::UNKNOWN_METHOD {
            // For the logs only: a path is never a metric label.
            span.record("path", request.uri().path());
        }
        let started = Instant::now();
        let call = self.inner.call(request);
        let call = async move {
            // Counted as cancelled if the caller leaves before the answer (this future is
            // dropped then).
            let mut pending = PendingCall::new(method, tracing::Span::current());
            let response = match trace {
                Some(trace) => trace.scope(call).await,
                None => call.await,
            };
            metrics::rpc_started(method, started.elapsed());
            let (code, response) = match response {
                // Errors come as trailers-only responses, with the status in the headers: the
                // call is over. A response without one has started, and is counted when its
                // body ends.
                Ok(response) => {
                    let code = status_of(response.headers());
                    if let Some(code) = code {
                        pending.finish(code);
                    }
                    (code.unwrap_or(tonic::Code::Ok), Ok(response.map(|body| CallBody::new(body, pending))))
                }
                Err(error) => {
                    pending.finish(tonic::Code::Unknown);
                    (tonic::Code::Unknown, Err(error))
                }
            };
            tracing::Span::current().record("code", super::code_name(code));
            tracing::debug!(elapsed = ?started.elapsed(), "call answered");
            response
        };
        Box::pin(call.instrument(span))
    }
}
