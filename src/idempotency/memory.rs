//! The in-memory submit store of one replica.

use std::time::Duration;

use futures::future::BoxFuture;
use moka::future::Cache;
use tonic::Status;

use super::{Fingerprint, SubmitStore, Submitted};

/// Records submits in memory for `ttl`, keeping at most `capacity` of them (least recently
/// used go first). moka coalesces concurrent initialisations of one key, which is exactly
/// "concurrent repeats make one upstream call".
#[derive(Debug)]
pub struct MemoryStore {
    cache: Cache<String, Submitted>,
}

impl MemoryStore {
    /// A store that remembers a submit for `ttl`, and at most `capacity` submits.
    pub fn new(ttl: Duration, capacity: u64) -> Self {
        Self { cache: Cache::builder().time_to_live(ttl).max_capacity(capacity).build() }
    }
}

#[tonic::async_trait]
impl SubmitStore for MemoryStore {
    async fn get_or_submit(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'_, Result<String, Status>>,
    ) -> Result<Submitted, Status> {
        self.cache
            .try_get_with(key, async move { submit.await.map(|task_id| Submitted { fingerprint, task_id }) })
            .await
            .map_err(|status| (*status).clone())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures::FutureExt;

    use super::*;

    fn counting_submit(
        calls: &Arc<AtomicUsize>,
        result: Result<&str, Status>,
    ) -> BoxFuture<'static, Result<String, Status>> {
        let calls = Arc::clone(calls);
        let result = result.map(str::to_owned);
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            result
        }
        .boxed()
    }

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
        let failed =
            store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Err(Status::unavailable("x"))));
        assert_eq!(failed.await.unwrap_err().code(), tonic::Code::Unavailable);
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

    #[test]
    fn fingerprints_differ_by_rpc_and_body() {
        assert_eq!(Fingerprint::of("a", &"x"), Fingerprint::of("a", &"x"));
        assert_ne!(Fingerprint::of("a", &"x"), Fingerprint::of("a", &"y"));
        assert_ne!(Fingerprint::of("a", &"x"), Fingerprint::of("b", &"x"));
    }
}
