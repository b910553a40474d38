//! The in-memory submit store of one replica.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use moka::future::Cache;
use tokio::sync::Mutex;
use tracing::Instrument;

use super::{Fingerprint, StoreError, SubmitStore, Submitted};
use crate::upstream::UpstreamError;

/// The outcome of a submit, shared by every caller waiting for it.
type SharedOutcome = Shared<BoxFuture<'static, Result<String, StoreError>>>;

/// A submit that is still running, and what it asked for.
#[derive(Clone)]
struct Running {
    fingerprint: Fingerprint,
    outcome: SharedOutcome,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

/// Records submits in memory for `ttl`, keeping at most `capacity` of them (least recently
/// used go first).
///
/// A submit runs on a task of its own, so that it neither dies with the caller that started
/// it (Stream may already have the request: a second POST would start a second export) nor
/// holds its waiters to that caller's deadline. While it runs it sits in `running`, where
/// repeats join it; it is recorded in `completed` before it leaves `running`, so a repeat
/// always finds it in one of the two.
#[derive(Debug)]
pub struct MemoryStore {
    completed: Cache<String, Submitted>,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

impl MemoryStore {
    /// A store that remembers a submit for `ttl`, and at most `capacity` submits.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self { completed: Cache::builder().time_to_live(ttl).max_capacity(capacity).build(), running: Arc::default() }
    }

    /// Starts `submit` on its own task; when it ends, records a success and leaves `running`.
    fn start(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
    ) -> Running {
        let (completed, running) = (self.completed.clone(), Arc::clone(&self.running));
        let task = tokio::spawn(
            async move {
                let outcome = submit.await.map_err(StoreError::from);
                if let Ok(task_id) = &outcome {
                    completed.insert(key.clone(), Submitted { fingerprint, task_id: task_id.clone() }).await;
                }
                running.lock().await.remove(&key);
                outcome
            }
            .in_current_span(),
        );
        let outcome = task.map(|joined| joined.unwrap_or(Err(StoreError::Aborted))).boxed().shared();
        Running { fingerprint, outcome }
    }
}

#[tonic::async_trait]
impl SubmitStore for MemoryStore {
    async fn get_or_submit(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
    ) -> Result<Submitted, StoreError> {
        let running = {
            let mut running = self.running.lock().await;
            if let Some(submitted) = self.completed.get(&key).await {
                return Ok(submitted);
            }
            match running.get(&key) {
                Some(first) => first.clone(),
                None => {
                    let started = self.start(key.clone(), fingerprint, submit);
                    running.insert(key, started.clone());
                    started
                }
            }
        };
        let task_id = running.outcome.await?;
        Ok(Submitted { fingerprint: running.fingerprint, task_id })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use super::*;
    use crate::store::testing::{counting_submit, timeout};

    #[tokio::test]
    async fn concurrent_repeats_submit_once() {
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        let fingerprint = Fingerprint::of("rpc", &"body");
        let results = futures::future::join_all(
            (0..10).map(|_| store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("task-1")))),
        )
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|r| r.as_ref().is_ok_and(|s| s.task_id == "task-1")));
    }

    #[tokio::test]
    async fn failures_are_not_recorded() {
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        let fingerprint = Fingerprint::of("rpc", &"body");
        let failed = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Err(timeout())));
        assert!(matches!(failed.await, Err(StoreError::Submit(UpstreamError::Timeout { .. }))));
        let retried = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("task-2"))).await;
        assert_eq!(retried.unwrap().task_id, "task-2");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let store = MemoryStore::new(Duration::from_millis(50), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        let fingerprint = Fingerprint::of("rpc", &"body");
        store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("a"))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await;
        let again = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("b"))).await.unwrap();
        assert_eq!((again.task_id.as_str(), calls.load(Ordering::SeqCst)), ("b", 2));
    }

    #[tokio::test]
    async fn a_submit_outlives_callers_that_leave() {
        let store = MemoryStore::new(Duration::from_secs(60), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        let fingerprint = Fingerprint::of("rpc", &"body");
        let abandoned = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("first")));
        assert!(tokio::time::timeout(Duration::from_millis(5), abandoned).await.is_err());
        // The waiter that stayed joins the running submit; after it, the task is recorded.
        let joined = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("second"))).await;
        let later = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("third"))).await;
        assert_eq!((joined.unwrap().task_id, later.unwrap().task_id), ("first".into(), "first".into()));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn fingerprints_differ_by_rpc_and_body() {
        assert_eq!(Fingerprint::of("a", &"x"), Fingerprint::of("a", &"x"));
        assert_ne!(Fingerprint::of("a", &"x"), Fingerprint::of("a", &"y"));
        assert_ne!(Fingerprint::of("a", &"x"), Fingerprint::of("b", &"x"));
    }
}
