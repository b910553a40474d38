//! Idempotent submits: a client-chosen `request_id` makes a repeated `ExportChannels` or
//! `ExportUsers` (a client retry, or a mesh sidecar replaying a call that returned
//! UNAVAILABLE) return the task of the first submit instead of starting a second export.
//!
//! This module is the home of the service's stores: traits that a multi-replica deployment
//! backs with a shared engine, each with an in-memory implementation as the single-process
//! default, and one error type ([`StoreError`]) that the handlers map to statuses once.
//! Today: the [`SubmitStore`] (idempotent submits), the [`TaskRegistry`] (who submitted
//! which task) and the [`jobs::JobStore`] (export jobs and their shards) with the [`schedules::ScheduleStore`] (export schedules, whose cursor moves with their jobs' creation), each in one process's state directory on disk ([`embedded`], the default), in
//! memory (by choice), or in the fleet's Redis (implemented by `fleet`, above this module).

pub mod embedded;
pub mod jobs;
mod memory;
pub mod memory_jobs;
pub mod pending;
pub mod registry;
pub mod schedules;
#[cfg(test)]
mod testing;

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};

use crate::upstream::UpstreamError;

pub use self::registry::{MemoryRegistry, TaskRegistry};
pub use memory::MemoryStore;

/// A digest of what a submit asked for: a repeat must ask for the same thing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of an RPC name and its upstream request body.
    pub fn of(rpc: &str, body: &impl serde::Serialize) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(rpc.as_bytes());
        hasher.update([0]);
        // Serialising our own wire types cannot fail; an empty body would only weaken the check.
        hasher.update(serde_json::to_vec(body).unwrap_or_default());
        Self(hasher.finalize().into())
    }

    /// The fingerprint of an RPC name and its request's bytes (a protobuf encoding, say).
    pub fn of_bytes(rpc: &str, bytes: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(rpc.as_bytes());
        hasher.update([0]);
        hasher.update(bytes);
        Self(hasher.finalize().into())
    }

    /// The digest in hex, as shared stores keep it.
    pub fn to_hex(self) -> String {
        hex::encode(self.0)
    }

    /// Reads [`Fingerprint::to_hex`]'s text back; `None` if it is not one.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text, &mut bytes).ok()?;
        Some(Self(bytes))
    }
}

/// A submit recorded under an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// What the first submit asked for.
    pub fingerprint: Fingerprint,
    /// The task it started.
    pub task_id: String,
}

/// What a store call can fail with.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The submit itself failed; nothing was recorded, so a retry may succeed.
    #[error(transparent)]
    Submit(#[from] UpstreamError),
    /// The submit's task ended without an outcome (it panicked or the runtime is stopping).
    #[error("the submit ended abnormally")]
    Aborted,
    /// The store cannot be read or written (a full disk, an unreachable Redis); nothing was
    /// sent upstream.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
}

/// A store could not be read or written; the words say which and why (never a secret).
#[derive(Clone, Debug, thiserror::Error)]
#[error("{0}")]
pub struct Unavailable(pub String);

/// Where submits are recorded.
#[tonic::async_trait]
pub trait SubmitStore: Send + Sync + std::fmt::Debug + 'static {
    /// Returns the submit recorded under `key`; when there is none, runs `submit` and records
    /// its task under `fingerprint`. Concurrent calls with one key run `submit` once: the others
    /// wait for it and get its result. A failed submit records nothing, so a retry can succeed.
    ///
    /// `submit` runs to its end even when every caller has left (dropping the returned future
    /// only stops waiting): once sent, Stream may have started the export, and only the
    /// recorded task id keeps a retry from starting a second one. So `submit` must bound its
    /// own duration (the upstream timeout), not take a caller's deadline.
    async fn get_or_submit(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
    ) -> Result<Submitted, StoreError>;

    /// [`SubmitStore::get_or_submit`], recording `record` (the task registry's record of the
    /// submit; its task id is filled in here) in the same durable step as the submit's own
    /// record, where this store keeps the task registry too (one process: one transaction, so
    /// one fsync fewer, and no moment when a caller holds a task id that the registry does not
    /// know). Returns whether it recorded it; otherwise recording is the caller's.
    async fn get_or_submit_recording(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
        record: crate::proto::TaskRecord,
    ) -> Result<(Submitted, bool), StoreError> {
        let _ = record;
        Ok((self.get_or_submit(key, fingerprint, submit).await?, false))
    }
}
