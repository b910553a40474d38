//! The response body of a gRPC call, watched for the call's final status. A streaming call's
//! response starts with OK headers long before it ends; its real outcome is the `grpc-status`
//! of the trailers at the end (or the client leaving first), so that is when it is counted.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use tonic::Code;

use super::{metrics, otel, server_span};

/// A call not counted yet. It is counted exactly once: with the code given to
/// [`PendingCall::finish`], or as CANCELLED if it is dropped first (the client reset the
/// stream or went away before the end, or a drain cut the connection).
/// While it is pending, it holds the call's span open (when spans are exported), so that a
/// stream's server span lasts as long as the stream and ends with its final code.
pub struct PendingCall {
    /// The call's `method` label until it is counted.
    method: Option<&'static str>,
    /// The call's span, while spans are exported.
    span: Option<tracing::Span>,
}

impl PendingCall {
    /// A call that has started, in `span`.
    pub fn new(method: &'static str, span: tracing::Span) -> Self {
        Self { method: Some(method), span: otel::enabled().then_some(span) }
    }

    /// Counts the call with `code`, if it was not counted yet.
    pub fn finish(&mut self, code: Code) {
        if let Some(method) = self.method.take() {
            if let Some(span) = self.span.take() {
                server_span::ended(&span, code);
            }
            metrics::rpc_finished(method, code);
            tracing::debug!(method, code = super::code_name(code), "call finished");
        }
    }
}

impl Drop for PendingCall {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// Passes a response body through and finishes its call with the code the body ends with.
pub struct CallBody<B> {
    inner: B,
    call: PendingCall,
}

impl<B> CallBody<B> {
    /// The body of `call` (already finished for a trailers-only answer, whose status is in
    /// the headers).
    pub fn new(inner: B, call: PendingCall) -> Self {
        Self { inner, call }
    }
}

impl<B: Body + Unpin> Body for CallBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    self.call.finish(status_of(trailers).unwrap_or(Code::Unknown));
                }
            }
            // A body that fails, or ends without trailers, ends without a status: clients see
            // UNKNOWN (or a broken stream).
            Poll::Ready(Some(Err(_)) | None) => self.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` of a header or trailer map.
pub fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(value))
}
