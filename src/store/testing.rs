//! What the stores' unit tests share.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::{FutureExt, future::BoxFuture};

use crate::upstream::{Operation, UpstreamError};

/// A submit that counts its calls and ends with `result` after a short while.
pub(crate) fn counting_submit(
    calls: &Arc<AtomicUsize>,
    result: Result<&str, UpstreamError>,
) -> BoxFuture<'static, Result<String, UpstreamError>> {
    let calls = Arc::clone(calls);
    let result = result.map(str::to_owned);
    async move {
        calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        result
    }
    .boxed()
}

/// A failed submit: Stream did not answer in time.
pub(crate) fn timeout() -> UpstreamError {
    UpstreamError::Timeout { operation: Operation::ExportChannels }
}
