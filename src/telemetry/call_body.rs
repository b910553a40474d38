//! The response body of a gRPC call, watched for the call's final status. A streaming call's
//! response starts with OK headers long before it ends; its real outcome is the `grpc-status`
//! of the trailers at the end (or the client leaving first), so that is when it is counted.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use http_body::{Body, Frame, SizeHint};
use tonic::Code;

use super::metrics;

/// Passes a response body through and counts its call once, with the code it ends with.
pub struct CallBody<B> {
    inner: B,
    /// The call's `method` label while its outcome is not counted yet.
    pending: Option<&'static str>,
}

impl<B> CallBody<B> {
    /// A body whose call is still to be counted when it ends.
    pub fn counted_at_end(inner: B, method: &'static str) -> Self {
        Self { inner, pending: Some(method) }
    }

    /// A body whose call is already counted (a trailers-only answer carries its status in the
    /// headers).
    pub fn already_counted(inner: B) -> Self {
        Self { inner, pending: None }
    }

    fn finish(&mut self, code: Code) {
        if let Some(method) = self.pending.take() {
            metrics::rpc_finished(method, code);
            tracing::debug!(method, code = metrics::code_label(code), "call finished");
        }
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
                    self.finish(status_of(trailers).unwrap_or(Code::Unknown));
                }
            }
            // A body that fails, or ends without trailers, ends without a status: clients see
            // UNKNOWN (or a broken stream).
            Poll::Ready(Some(Err(_)) | None) => self.finish(Code::Unknown),
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

impl<B> Drop for CallBody<B> {
    /// Dropped before its end: the client reset the stream or went away (or the server cut
    /// the connection at the end of a drain).
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The `grpc-status` of a header or trailer map.
pub fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    Some(Code::from_i32(value))
}
