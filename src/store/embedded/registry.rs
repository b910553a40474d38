//! The task registry of one process, on disk.
//!
//! Three tables: `tasks` (task id → the record, protobuf), and two indexes without values,
//! `tasks_by_time` (create time in µs, task id) for pages and for trimming the oldest, and
//! `tasks_by_owner` (owner, create time, task id) for a caller's own tasks. Recording trims
//! records past the retention and the capacity, oldest first, in the same transaction, so the
//! file stops growing under steady load (redb reuses the freed pages).

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use prost::Message;
use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::{StateDb, now_millis, write_blocking};
use crate::{
    proto::{Task, TaskRecord},
    store::{
        StoreError,
        registry::{Cursor, RETENTION, TaskRegistry, note_observed},
    },
};

const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const TASKS_BY_TIME: TableDefinition<(i64, &str), ()> = TableDefinition::new("tasks_by_time");
const TASKS_BY_OWNER: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("tasks_by_owner");

/// Most records one recording trims: a lowered capacity is reached over several submits
/// instead of in one long transaction.
const TRIM_BATCH: usize = 1_000;

/// How often an observation is written durably: the others ride on the next durable commit
/// (an observation lost to a crash is read again at the next poll).
const DURABLE_OBSERVATION_EVERY: Duration = Duration::from_secs(1);

/// How old a recorded observation may grow before one that says the same is written over it.
/// Every `GetTask` notes what it read; a client polling a task reads the same state again and
/// again, and a write transaction per read would cost each `GetTask` more than the rest of the
/// call. A change of state is written at once; the same state only refreshes `observe_time`
/// (and the re-signed result URL) when the recorded one is this old.
const OBSERVATION_REFRESH: Duration = Duration::from_secs(10);

/// Most tasks whose last written observation is remembered, so that a repeated one is known
/// for such without a read of the record; past it, the memory starts over.
const NOTED_CAPACITY: usize = 10_000;

/// The [`TaskRegistry`] of one process, in the state directory.
#[derive(Debug)]
pub struct EmbeddedRegistry {
    db: Arc<StateDb>,
    capacity: u64,
    evicted: AtomicU64,
    last_durable_observation: AtomicU64,
    /// The observation each task's record holds, as this process last wrote or read it.
    noted: Mutex<HashMap<String, Noted>>,
}

/// An observation in a record: the task without its result URL's signature, and when.
#[derive(Debug)]
struct Noted {
    task: Task,
    at: DateTime<Utc>,
}

impl EmbeddedRegistry {
    /// A registry of at most `capacity` records in `db`.
    pub fn new(db: Arc<StateDb>, capacity: usize) -> Self {
        Self {
            db,
            capacity: u64::try_from(capacity.max(1)).unwrap_or(u64::MAX),
            evicted: AtomicU64::new(0),
            last_durable_observation: AtomicU64::new(0),
            noted: Mutex::default(),
        }
    }

    fn noted(&self) -> std::sync::MutexGuard<'_, HashMap<String, Noted>> {
        self.noted.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers the observation `task_id`'s record holds.
    fn remember(&self, task_id: &str, noted: Noted) {
        let mut memory = self.noted();
        if memory.len() >= NOTED_CAPACITY && !memory.contains_key(task_id) {
            memory.clear();
        }
        memory.insert(task_id.to_owned(), noted);
    }

    /// How many records the registry holds.
    pub fn len(&self) -> Result<u64, StoreError> {
        self.db.read(|tx| Ok(tx.open_table(TASKS).map_or(Ok(0), |table| table.len())?))
    }

    /// Whether the registry holds no record.
    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }

    /// The owner's records, newest first, after `after` (from the newest when `None`).
    fn owner_page(&self, owner: &str, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.db.read(|tx| {
            let Ok(index) = tx.open_table(TASKS_BY_OWNER) else { return Ok(Vec::new()) };
            let tasks = tx.open_table(TASKS)?;
            let upper = match after {
                Some(after) => std::ops::Bound::Excluded((owner, after.created_micros, after.task_id.as_str())),
                None => std::ops::Bound::Included((owner, i64::MAX, "\u{10FFFF}")),
            };
            let lower = std::ops::Bound::Included((owner, i64::MIN, ""));
            let mut records = Vec::with_capacity(limit.min(1024));
            for entry in index.range((lower, upper))?.rev() {
                if records.len() >= limit {
                    break;
                }
                let (key, _) = entry?;
                let (_, _, task_id) = key.value();
                if let Some(bytes) = tasks.get(task_id)?
                    && let Ok(record) = TaskRecord::decode(bytes.value())
                {
                    records.push(record);
                }
            }
            Ok(records)
        })
    }
}

/// Removes a record and its index entries.
fn remove(tx: &WriteTransaction, micros: i64, task_id: &str) -> Result<(), redb::Error> {
    let mut tasks = tx.open_table(TASKS)?;
    let owner = tasks.remove(task_id)?.and_then(|bytes| TaskRecord::decode(bytes.value()).ok()).map(|r| r.owner);
    tx.open_table(TASKS_BY_TIME)?.remove((micros, task_id))?;
    if let Some(owner) = owner {
        tx.open_table(TASKS_BY_OWNER)?.remove((owner.as_str(), micros, task_id))?;
    }
    Ok(())
}

/// A record's key in `tasks_by_time`, owned.
type Position = (i64, String);

/// Trims records past the retention, then past `capacity` (leaving room for one more); returns
/// how many went past the capacity.
fn trim(tx: &WriteTransaction, capacity: u64) -> Result<u64, redb::Error> {
    let cutoff = (Utc::now() - RETENTION).timestamp_micros();
    let (expired, excess): (Vec<Position>, Vec<Position>) = {
        let by_time = tx.open_table(TASKS_BY_TIME)?;
        let count = by_time.len()?;
        let mut expired = Vec::new();
        for entry in by_time.range(..(cutoff, ""))?.take(TRIM_BATCH) {
            let (key, _) = entry?;
            let (micros, task_id) = key.value();
            expired.push((micros, task_id.to_owned()));
        }
        let over = (count - expired.len() as u64 + 1).saturating_sub(capacity);
        let over = usize::try_from(over).unwrap_or(usize::MAX).min(TRIM_BATCH);
        let mut excess = Vec::new();
        for entry in by_time.range(..)?.skip(expired.len()).take(over) {
            let (key, _) = entry?;
            let (micros, task_id) = key.value();
            excess.push((micros, task_id.to_owned()));
        }
        (expired, excess)
    };
    for (micros, task_id) in expired.iter().chain(&excess) {
        remove(tx, *micros, task_id)?;
    }
    Ok(excess.len() as u64)
}

/// Adds `record` unless its task has one, trimming past the retention and `capacity` first, in
/// `tx`; returns how many records went past the capacity. Also used by the submit store, which
/// records a submit's task in the transaction of its `done`.
pub(super) fn insert(tx: &WriteTransaction, record: &TaskRecord, capacity: u64) -> Result<u64, redb::Error> {
    if tx.open_table(TASKS)?.get(record.task_id.as_str())?.is_some() {
        return Ok(0);
    }
    let evicted = trim(tx, capacity)?;
    let at = Cursor::of(record);
    tx.open_table(TASKS)?.insert(record.task_id.as_str(), record.encode_to_vec().as_slice())?;
    tx.open_table(TASKS_BY_TIME)?.insert((at.created_micros, record.task_id.as_str()), ())?;
    tx.open_table(TASKS_BY_OWNER)?.insert((record.owner.as_str(), at.created_micros, record.task_id.as_str()), ())?;
    Ok(evicted)
}

/// Whether an observation `seen` at `at` says what `noted` says, and `noted` is less than
/// [`OBSERVATION_REFRESH`] old: then it is not written.
fn says_the_same(noted: &Noted, seen: &Task, at: DateTime<Utc>) -> bool {
    let fresh = noted.at <= at && (at - noted.at).to_std().is_ok_and(|age| age < OBSERVATION_REFRESH);
    fresh && noted.task == *seen
}

/// A task without its result URL, which Stream signs anew (with a new expiry) on every read.
fn unsigned(task: &Task) -> Task {
    let mut task = task.clone();
    if let Some(result) = task.result.as_mut() {
        result.url.clear();
        result.url_expire_time = None;
    }
    task
}

#[tonic::async_trait]
impl TaskRegistry for EmbeddedRegistry {
    async fn record(&self, record: TaskRecord) -> Result<(), StoreError> {
        let capacity = self.capacity;
        let evicted = write_blocking(&self.db, Durability::Immediate, move |tx| insert(tx, &record, capacity)).await?;
        if evicted > 0 {
            let before = self.evicted.fetch_add(evicted, Ordering::Relaxed);
            // The first eviction, then one line per thousand: steady eviction is one condition.
            if before == 0 || before / 1000 != (before + evicted) / 1000 {
                tracing::warn!(
                    capacity,
                    evicted_since_start = before + evicted,
                    "the task registry is full: the oldest records were removed before their 60 days, and \
                     owner-based policies no longer let their owners read those tasks; raise \
                     --task-registry-capacity"
                );
            }
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.db.read(|tx| {
            let Ok(tasks) = tx.open_table(TASKS) else { return Ok(None) };
            Ok(tasks.get(task_id)?.and_then(|bytes| TaskRecord::decode(bytes.value()).ok()))
        })
    }

    async fn observed(&self, task: &Task, at: DateTime<Utc>) -> Result<(), StoreError> {
        let seen = unsigned(task);
        if self.noted().get(&task.task_id).is_some_and(|noted| says_the_same(noted, &seen, at)) {
            return Ok(());
        }
        let known = self.get(&task.task_id).await?;
        let Some(record) = known else { return Ok(()) };
        let noted = record.last_observed.as_ref().zip(record.observe_time.as_ref()).and_then(|(task, time)| {
            let at = DateTime::<Utc>::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0))?;
            Some(Noted { task: unsigned(task), at })
        });
        if let Some(noted) = noted
            && says_the_same(&noted, &seen, at)
        {
            self.remember(&task.task_id, noted);
            return Ok(());
        }
        let now = now_millis();
        let last = self.last_durable_observation.load(Ordering::Relaxed);
        let durability = if now.saturating_sub(last) >= DURABLE_OBSERVATION_EVERY.as_millis() as u64 {
            self.last_durable_observation.store(now, Ordering::Relaxed);
            Durability::Immediate
        } else {
            Durability::None
        };
        let (task_id, observed) = (task.task_id.clone(), task.clone());
        let written = write_blocking(&self.db, durability, move |tx| {
            let mut tasks = tx.open_table(TASKS)?;
            // Read again inside the write: observations noted at once (a watch's RUNNING and
            // COMPLETED a few milliseconds apart) must not put the older one over the newer.
            let current = tasks.get(task_id.as_str())?.and_then(|bytes| TaskRecord::decode(bytes.value()).ok());
            // Not there any more (trimmed meanwhile), or a newer observation is: nothing to write.
            let Some(mut current) = current else { return Ok(false) };
            let newer = current.observe_time.as_ref().is_some_and(|time| {
                DateTime::<Utc>::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0))
                    .is_some_and(|noted| noted > at)
            });
            if newer {
                return Ok(false);
            }
            note_observed(&mut current, &observed, at);
            tasks.insert(task_id.as_str(), current.encode_to_vec().as_slice())?;
            Ok(true)
        })
        .await?;
        if !written {
            return Ok(());
        }
        self.remember(&task.task_id, Noted { task: seen, at });
        Ok(())
    }

    async fn page_of_owner(
        &self,
        owner: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.owner_page(owner, after, limit)
    }

    async fn page(&self, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.db.read(|tx| {
            let Ok(index) = tx.open_table(TASKS_BY_TIME) else { return Ok(Vec::new()) };
            let tasks = tx.open_table(TASKS)?;
            let range = match after {
                Some(after) => index.range(..(after.created_micros, after.task_id.as_str()))?,
                None => index.range(..)?,
            };
            let mut records = Vec::with_capacity(limit.min(1024));
            for entry in range.rev() {
                if records.len() >= limit {
                    break;
                }
                let (key, _) = entry?;
                let (_, task_id) = key.value();
                if let Some(bytes) = tasks.get(task_id)?
                    && let Ok(record) = TaskRecord::decode(bytes.value())
                {
                    records.push(record);
                }
            }
            Ok(records)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{contract::task::timestamp, store::embedded::StateDir};

    fn record(task_id: &str, owner: &str, seconds_ago: i64) -> TaskRecord {
        let at = DateTime::<Utc>::from_timestamp(Utc::now().timestamp() - seconds_ago, 0).unwrap_or_default();
        TaskRecord {
            task_id: task_id.into(),
            owner: owner.into(),
            create_time: Some(timestamp(at)),
            ..TaskRecord::default()
        }
    }

    fn ids(records: &[TaskRecord]) -> Vec<&str> {
        records.iter().map(|record| record.task_id.as_str()).collect()
    }

    #[tokio::test]
    async fn records_survive_a_reopen_and_pages_go_newest_first_by_owner_too() {
        let dir = super::super::tests::scratch("registry");
        {
            let state = StateDir::open(&dir).unwrap();
            let registry = EmbeddedRegistry::new(state.db(), 100);
            for (age, (id, owner)) in [("a", "x"), ("b", "y"), ("c", "x"), ("d", "y")].iter().rev().enumerate() {
                registry.record(record(id, owner, age as i64 + 10)).await.unwrap();
            }
            registry.record(record("b", "z", 0)).await.unwrap();
        }
        let state = StateDir::open(&dir).unwrap();
        let registry = EmbeddedRegistry::new(state.db(), 100);
        let first = registry.page(None, 3).await.unwrap();
        assert_eq!(ids(&first), ["d", "c", "b"]);
        assert_eq!(registry.get("b").await.unwrap().unwrap().owner, "y", "a task keeps its first record");
        let next = registry.page(Some(&Cursor::of(&first[2])), 3).await.unwrap();
        assert_eq!(ids(&next), ["a"]);
        let xs = registry.page_of_owner("x", None, 10).await.unwrap();
        assert_eq!(ids(&xs), ["c", "a"]);
        let after_c = registry.page_of_owner("x", Some(&Cursor::of(&xs[0])), 10).await.unwrap();
        assert_eq!(ids(&after_c), ["a"]);
        assert!(registry.page_of_owner("nobody", None, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_new_state_is_noted_at_once_and_the_same_state_again_only_once_the_note_is_old() {
        use crate::proto::{TaskResult, TaskState};

        let dir = super::super::tests::scratch("observed");
        let state = StateDir::open(&dir).unwrap();
        let registry = EmbeddedRegistry::new(state.db(), 10);
        registry.record(record("t", "x", 60)).await.unwrap();
        let task = |state: TaskState, url: &str| Task {
            task_id: "t".into(),
            state: state as i32,
            result: (!url.is_empty()).then(|| TaskResult { url: url.into(), ..TaskResult::default() }),
            ..Task::default()
        };
        let noted = || async { registry.get("t").await.unwrap().unwrap() };
        let start = DateTime::<Utc>::from_timestamp(Utc::now().timestamp(), 0).unwrap_or_default();
        let after = |seconds: i64| start + chrono::Duration::seconds(seconds);

        registry.observed(&task(TaskState::Running, ""), start).await.unwrap();
        registry.observed(&task(TaskState::Running, ""), after(1)).await.unwrap();
        assert_eq!(noted().await.observe_time, Some(timestamp(start)), "the same state, noted a second ago");

        registry.observed(&task(TaskState::Completed, "https://x/?sig=1"), after(2)).await.unwrap();
        let completed = noted().await;
        assert_eq!(completed.last_observed.map(|task| task.state()), Some(TaskState::Completed), "noted at once");
        assert_eq!(completed.observe_time, Some(timestamp(after(2))));

        registry.observed(&task(TaskState::Completed, "https://x/?sig=2"), after(3)).await.unwrap();
        assert_eq!(noted().await.observe_time, Some(timestamp(after(2))), "only the URL's signature differs");

        let late = after(2) + chrono::Duration::from_std(OBSERVATION_REFRESH).unwrap();
        registry.observed(&task(TaskState::Completed, "https://x/?sig=3"), late).await.unwrap();
        let refreshed = noted().await;
        assert_eq!(refreshed.observe_time, Some(timestamp(late)), "an old note is refreshed");
        assert_eq!(refreshed.last_observed.and_then(|task| task.result).unwrap().url, "https://x/?sig=3");

        // A registry that has written nothing yet (after a restart) finds the note in the record.
        let restarted = EmbeddedRegistry::new(state.db(), 10);
        let soon = late + chrono::Duration::seconds(1);
        restarted.observed(&task(TaskState::Completed, "https://x/?sig=4"), soon).await.unwrap();
        assert_eq!(noted().await.observe_time, Some(timestamp(late)), "the record's own note is recent");
        restarted.observed(&task(TaskState::Failed, ""), soon).await.unwrap();
        assert_eq!(noted().await.last_observed.map(|task| task.state()), Some(TaskState::Failed));

        // An observation that arrives after a newer one (two noted at once) is not written.
        let other = EmbeddedRegistry::new(state.db(), 10);
        other.observed(&task(TaskState::Running, ""), start).await.unwrap();
        assert_eq!(noted().await.last_observed.map(|task| task.state()), Some(TaskState::Failed), "the newest stays");
    }

    #[tokio::test]
    async fn records_past_the_capacity_or_the_retention_are_removed_with_their_indexes() {
        let dir = super::super::tests::scratch("trim");
        let state = StateDir::open(&dir).unwrap();
        let registry = EmbeddedRegistry::new(state.db(), 3);
        let too_old = RETENTION.as_secs() as i64 + 60;
        registry.record(record("ancient", "x", too_old)).await.unwrap();
        for (number, id) in ["a", "b", "c", "d"].iter().enumerate() {
            registry.record(record(id, "x", 10 - number as i64)).await.unwrap();
        }
        assert_eq!(registry.len().unwrap(), 3);
        assert_eq!(ids(&registry.page(None, 10).await.unwrap()), ["d", "c", "b"]);
        assert_eq!(ids(&registry.page_of_owner("x", None, 10).await.unwrap()), ["d", "c", "b"]);
        assert!(registry.get("ancient").await.unwrap().is_none());
        assert!(registry.get("a").await.unwrap().is_none());
    }
}
