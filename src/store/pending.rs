//! Records kept until the registry takes them: a submit has started its export upstream by the
//! time its task is recorded, so a registry that fails then (a full disk, a stalled Redis) must
//! not lose the record, or owner-based policies lock the owner out of its own task for good.
//! The record is kept in memory (bounded), answers `get` meanwhile, and is written again with
//! backoff until the store takes it. Only when that buffer is full does recording fail.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};

use super::{
    StoreError,
    registry::{Cursor, TaskRegistry, note_observed},
};
use crate::proto::{Task, TaskRecord};

/// Most records kept waiting for the registry.
pub const PENDING_CAPACITY: usize = 10_000;

/// A [`TaskRegistry`] that keeps the records its store refused until the store takes them.
#[derive(Debug)]
pub struct KeptUntilStored {
    inner: Arc<dyn TaskRegistry>,
    pending: Arc<Mutex<HashMap<String, TaskRecord>>>,
    capacity: usize,
}

impl KeptUntilStored {
    /// `inner`, keeping at most `capacity` refused records.
    pub fn new(inner: Arc<dyn TaskRegistry>, capacity: usize) -> Self {
        Self { inner, pending: Arc::default(), capacity }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, TaskRecord>> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the waiting records until the store has taken them all (one writer at a time:
    /// started by the record that found the buffer empty).
    fn start_flushing(&self) {
        let (inner, pending) = (Arc::clone(&self.inner), Arc::clone(&self.pending));
        let flush = move || {
            let (inner, pending) = (Arc::clone(&inner), Arc::clone(&pending));
            async move {
                let waiting: Vec<TaskRecord> =
                    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).values().cloned().collect();
                for record in waiting {
                    let task_id = record.task_id.clone();
                    inner.record(record).await?;
                    pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&task_id);
                }
                Ok::<(), StoreError>(())
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(10))
            .without_max_times();
        tokio::spawn(async move {
            let _ = flush.retry(backoff).await;
            tracing::info!("the task registry took the records it had refused");
        });
    }
}

#[tonic::async_trait]
impl TaskRegistry for KeptUntilStored {
    async fn record(&self, record: TaskRecord) -> Result<(), StoreError> {
        let error = match self.inner.record(record.clone()).await {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let first = {
            let mut pending = self.lock();
            if pending.len() >= self.capacity {
                return Err(error);
            }
            pending.insert(record.task_id.clone(), record);
            pending.len() == 1
        };
        tracing::warn!(%error, "the task registry refused a record; kept in memory and written again until it takes it");
        if first {
            self.start_flushing();
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let waiting = self.lock().get(task_id).cloned();
        match waiting {
            Some(record) => Ok(Some(record)),
            None => self.inner.get(task_id).await,
        }
    }

    async fn observed(&self, task: &Task, at: DateTime<Utc>) -> Result<(), StoreError> {
        if let Some(record) = self.lock().get_mut(&task.task_id) {
            note_observed(record, task, at);
        }
        self.inner.observed(task, at).await
    }

    async fn page(&self, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.page(after, limit).await
    }

    async fn page_of_owner(
        &self,
        owner: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.inner.page_of_owner(owner, after, limit).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::store::{MemoryRegistry, Unavailable};

    /// A registry that refuses writes while `down` is set.
    #[derive(Debug)]
    struct Flaky {
        down: Arc<AtomicBool>,
        inner: MemoryRegistry,
    }

    #[tonic::async_trait]
    impl TaskRegistry for Flaky {
        async fn record(&self, record: TaskRecord) -> Result<(), StoreError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(StoreError::Unavailable(Unavailable("down".into())));
            }
            self.inner.record(record).await
        }
        async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
            self.inner.get(task_id).await
        }
        async fn observed(&self, task: &Task, at: DateTime<Utc>) -> Result<(), StoreError> {
            self.inner.observed(task, at).await
        }
        async fn page(&self, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
            self.inner.page(after, limit).await
        }
        async fn page_of_owner(
            &self,
            owner: &str,
            after: Option<&Cursor>,
            limit: usize,
        ) -> Result<Vec<TaskRecord>, StoreError> {
            self.inner.page_of_owner(owner, after, limit).await
        }
    }

    fn record(task_id: &str) -> TaskRecord {
        TaskRecord { task_id: task_id.into(), owner: "analytics".into(), ..TaskRecord::default() }
    }

    #[tokio::test]
    async fn a_refused_record_names_its_owner_meanwhile_and_reaches_the_store_when_it_is_back() {
        let down = Arc::new(AtomicBool::new(true));
        let flaky = Arc::new(Flaky { down: Arc::clone(&down), inner: MemoryRegistry::new(10) });
        let registry = KeptUntilStored::new(Arc::clone(&flaky) as Arc<dyn TaskRegistry>, 1);
        registry.record(record("a")).await.expect("kept");
        assert_eq!(registry.get("a").await.unwrap().unwrap().owner, "analytics", "the owner is known meanwhile");
        assert!(registry.record(record("b")).await.is_err(), "past the buffer, recording fails");
        down.store(false, Ordering::SeqCst);
        let started = std::time::Instant::now();
        while flaky.inner.get("a").await.unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(5), "never written");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        registry.record(record("b")).await.expect("room again");
    }
}
