//! The tower layer around every gRPC call: one span per call (method and trace id here, caller
//! and task id recorded by the handlers, the result code here when the call is answered), the call's metrics, and the caller's W3C trace
//! context made current for the upstream requests of the call.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use tower::{Layer, Service};
use tracing::Instrument;

use super::{metrics, trace_context::TraceContext};

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
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let trace = TraceContext::from_headers(request.headers());
        let span = tracing::info_span!(
            "grpc",
            method = %method,
            trace_id = trace.as_ref().map(TraceContext::trace_id).unwrap_or_default(),
            caller = tracing::field::Empty,
            task_id = tracing::field::Empty,
            code = tracing::field::Empty,
        );
        let started = Instant::now();
        let call = self.inner.call(request);
        let call = async move {
            let response = match trace {
                Some(trace) => trace.scope(call).await,
                None => call.await,
            };
            let code = match &response {
                // Errors come as trailers-only responses, with the status in the headers; a
                // response without one started normally.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Unknown,
            };
            let code = format!("{code:?}");
            tracing::Span::current().record("code", code.as_str());
            metrics::rpc(&method, &code, started.elapsed());
            tracing::debug!(elapsed = ?started.elapsed(), "call answered");
            response
        };
        Box::pin(call.instrument(span))
    }
}
