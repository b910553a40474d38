//! The task registry: every task submitted through the service, with its owner, what was
//! submitted and the last state the service observed. It answers `ListTasks` without an
//! upstream call, and tells the authorization policies who owns a task.
//!
//! Records live as long as Stream keeps exports ([`RETENTION`]), at most a configured number of
//! them (the oldest go first): in memory by default ([`MemoryRegistry`]), in the fleet's Redis
//! in fleet mode (`fleet::registry`), so that any replica knows every task's owner.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{DateTime, Utc};

use super::StoreError;
use crate::{
    contract::task::timestamp,
    proto::{Task, TaskRecord},
};

/// How long Stream keeps an export, and so how long its record is kept.
pub const RETENTION: Duration = Duration::from_secs(60 * 24 * 3600);

/// Where a record sits in the registry's order (by create time, then task id): a page of
/// `ListTasks` starts after one.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The record's create time, in microseconds since the epoch.
    pub created_micros: i64,
    /// The task id, which breaks ties.
    pub task_id: String,
}

impl Cursor {
    /// The position of `record`.
    pub fn of(record: &TaskRecord) -> Self {
        let created_micros = record.create_time.map_or(0, |at| at.seconds * 1_000_000 + i64::from(at.nanos / 1_000));
        Self { created_micros, task_id: record.task_id.clone() }
    }
}

/// Where the service records the tasks submitted through it.
#[tonic::async_trait]
pub trait TaskRegistry: Send + Sync + std::fmt::Debug + 'static {
    /// Records a submitted task; a task already recorded (a repeated submit) keeps its record.
    async fn record(&self, record: TaskRecord) -> Result<(), StoreError>;

    /// The record of a task, if it was submitted through the service and is still kept.
    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError>;

    /// Notes the state the service just observed of a task (nothing for an unknown task).
    async fn observed(&self, task: &Task, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Up to `limit` records, newest first, starting after `after` (from the newest when `None`).
    async fn page(&self, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError>;

    /// [`TaskRegistry::page`] of `owner`'s records only (an index: most policies are
    /// owner-based, and a caller's listing should not scan everyone's tasks).
    async fn page_of_owner(
        &self,
        owner: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError>;
}

/// Sets a record's last observed state.
pub fn note_observed(record: &mut TaskRecord, task: &Task, at: DateTime<Utc>) {
    record.last_observed = Some(task.clone());
    record.observe_time = Some(timestamp(at));
}

/// The registry of one replica, in memory. Records are shared (`Arc`), so that a page or a
/// read copies them after the lock is released, never under it.
#[derive(Debug)]
pub struct MemoryRegistry {
    capacity: usize,
    records: Mutex<Records>,
}

#[derive(Debug, Default)]
struct Records {
    order: BTreeSet<Cursor>,
    by_owner: HashMap<String, BTreeSet<Cursor>>,
    by_id: HashMap<String, Arc<TaskRecord>>,
}

impl Records {
    fn remove(&mut self, at: &Cursor) {
        self.order.remove(at);
        if let Some(record) = self.by_id.remove(&at.task_id)
            && let Some(owned) = self.by_owner.get_mut(&record.owner)
        {
            owned.remove(at);
            if owned.is_empty() {
                self.by_owner.remove(&record.owner);
            }
        }
    }
}

/// Deep copies of shared records, made once the lock is released.
fn copies(shared: Vec<Arc<TaskRecord>>) -> Vec<TaskRecord> {
    shared.into_iter().map(Arc::unwrap_or_clone).collect()
}

impl MemoryRegistry {
    /// A registry of at most `capacity` records.
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), records: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[tonic::async_trait]
impl TaskRegistry for MemoryRegistry {
    async fn record(&self, record: TaskRecord) -> Result<(), StoreError> {
        let mut records = self.lock();
        if records.by_id.contains_key(&record.task_id) {
            return Ok(());
        }
        let cutoff = (Utc::now() - RETENTION).timestamp_micros();
        while let Some(oldest) = records.order.first().cloned() {
            if oldest.created_micros >= cutoff && records.order.len() < self.capacity {
                break;
            }
            records.remove(&oldest);
        }
        let at = Cursor::of(&record);
        records.order.insert(at.clone());
        records.by_owner.entry(record.owner.clone()).or_default().insert(at);
        records.by_id.insert(record.task_id.clone(), Arc::new(record));
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let shared = self.lock().by_id.get(task_id).cloned();
        Ok(shared.map(Arc::unwrap_or_clone))
    }

    async fn observed(&self, task: &Task, at: DateTime<Utc>) -> Result<(), StoreError> {
        let Some(shared) = self.lock().by_id.get(&task.task_id).cloned() else { return Ok(()) };
        // Changed outside the lock, then put back unless the record left meanwhile.
        let mut record = Arc::unwrap_or_clone(shared);
        note_observed(&mut record, task, at);
        if let Some(kept) = self.lock().by_id.get_mut(&task.task_id) {
            *kept = Arc::new(record);
        }
        Ok(())
    }

    async fn page(&self, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let shared: Vec<Arc<TaskRecord>> = {
            let records = self.lock();
            let older = match after {
                Some(after) => records.order.range(..after),
                None => records.order.range(..),
            };
            older.rev().take(limit).filter_map(|at| records.by_id.get(&at.task_id).cloned()).collect()
        };
        Ok(copies(shared))
    }

    async fn page_of_owner(
        &self,
        owner: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let shared: Vec<Arc<TaskRecord>> = {
            let records = self.lock();
            let Some(owned) = records.by_owner.get(owner) else { return Ok(Vec::new()) };
            let older = match after {
                Some(after) => owned.range(..after),
                None => owned.range(..),
            };
            older.rev().take(limit).filter_map(|at| records.by_id.get(&at.task_id).cloned()).collect()
        };
        Ok(copies(shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(task_id: &str, seconds: i64) -> TaskRecord {
        let at = DateTime::<Utc>::from_timestamp(Utc::now().timestamp() - 1000 + seconds, 0).unwrap_or_default();
        TaskRecord { task_id: task_id.into(), create_time: Some(timestamp(at)), ..TaskRecord::default() }
    }

    fn ids(records: &[TaskRecord]) -> Vec<&str> {
        records.iter().map(|record| record.task_id.as_str()).collect()
    }

    #[tokio::test]
    async fn pages_go_newest_first_and_the_oldest_records_go_past_the_capacity() {
        let registry = MemoryRegistry::new(3);
        for (number, id) in ["a", "b", "c", "d"].iter().enumerate() {
            registry.record(record(id, number as i64)).await.unwrap();
        }
        registry.record(record("b", 99)).await.unwrap();
        let first = registry.page(None, 2).await.unwrap();
        assert_eq!(ids(&first), ["d", "c"]);
        let next = registry.page(Some(&Cursor::of(&first[1])), 2).await.unwrap();
        assert_eq!(ids(&next), ["b"], "a went past the capacity; b kept its first record");
        assert!(registry.get("a").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_owner_pages_through_its_own_records_only() {
        let registry = MemoryRegistry::new(3);
        for (number, (id, owner)) in [("a", "x"), ("b", "y"), ("c", "x"), ("d", "x")].iter().enumerate() {
            let mut record = record(id, number as i64);
            record.owner = (*owner).into();
            registry.record(record).await.unwrap();
        }
        let mine = registry.page_of_owner("x", None, 10).await.unwrap();
        assert_eq!(ids(&mine), ["d", "c"], "a went past the capacity, from the owner's index too");
        let next = registry.page_of_owner("x", Some(&Cursor::of(&mine[0])), 10).await.unwrap();
        assert_eq!(ids(&next), ["c"]);
        assert_eq!(ids(&registry.page_of_owner("y", None, 10).await.unwrap()), ["b"]);
        assert!(registry.page_of_owner("z", None, 10).await.unwrap().is_empty());
    }
}
