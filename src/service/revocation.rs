//! Streams opened under policies that may change: a WatchTask, ReadExport or WatchExportJob stream ends with
//! PERMISSION_DENIED as soon as a policy reload takes away the permission it was opened with,
//! instead of going on for as long as its caller keeps it open.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tokio_stream::Stream;
use tonic::Status;

use super::{
    authorization::{Policies, Resource},
    caller::Caller,
    rpc::Rpc,
};
use crate::proto::TaskRecord;

/// What a stream was opened with: checked again at each policy reload.
pub struct Grant {
    /// Who opened the stream.
    pub caller: Caller,
    /// The action it was permitted.
    pub action: Rpc,
    /// On what.
    pub on: Granted,
}

/// What a stream reads.
pub enum Granted {
    /// A task.
    Task {
        /// The task, in its canonical spelling.
        task_id: String,
        /// What the registry knew of the task (its owner and RPC) when the stream opened.
        record: Option<Box<TaskRecord>>,
    },
    /// An export job.
    Job {
        /// The job id.
        job_id: String,
        /// Its owner.
        owner: String,
        /// Its archive, normalised ("" when none).
        archive: String,
    },
}

impl Granted {
    /// The policy resource.
    fn resource(&self) -> Resource<'_> {
        match self {
            Self::Task { task_id, record } => Resource::Task {
                id: task_id,
                owner: record.as_ref().map(|record| record.owner.as_str()),
                rpc: record.as_ref().map(|record| record.rpc.as_str()),
            },
            Self::Job { job_id, owner, archive } => Resource::Job {
                id: job_id,
                owner: Some(owner),
                archive: Some(archive.as_str()).filter(|archive| !archive.is_empty()),
            },
        }
    }
}

/// A boxed stream of a streaming RPC.
pub type BoxedStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `stream`, ended with PERMISSION_DENIED (and audited) when a reload of `policies` refuses
/// `grant`. Without a policy file there is nothing to reload, and `stream` is returned as it is.
pub fn end_when_revoked<T: Send + 'static>(
    stream: BoxedStream<T>,
    policies: &Policies,
    grant: Grant,
) -> BoxedStream<T> {
    let Some(mut reloads) = policies.reloads() else { return stream };
    let policies = policies.clone();
    let revoked = async move {
        loop {
            if reloads.changed().await.is_err() {
                // The policies are gone with the service; the stream ends with it.
                return std::future::pending().await;
            }
            if let Err(refused) = policies.check(&grant.caller, grant.action, &grant.on.resource()) {
                return refused;
            }
        }
    };
    Box::pin(UntilRevoked { inner: Some(stream), revoked: Box::pin(revoked) })
}

struct UntilRevoked<T> {
    /// The stream; dropped (freeing what it holds, a read slot say) once revoked.
    inner: Option<BoxedStream<T>>,
    revoked: Pin<Box<dyn Future<Output = Status> + Send>>,
}

impl<T> Stream for UntilRevoked<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        if let Poll::Ready(item) = inner.as_mut().poll_next(context) {
            return Poll::Ready(item);
        }
        match self.revoked.as_mut().poll(context) {
            Poll::Ready(refused) => {
                self.inner = None;
                Poll::Ready(Some(Err(refused)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
