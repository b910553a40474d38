//! Idempotent submits of one process, on disk: a repeat of a `request_id` after a restart finds
//! the first submit's task.
//!
//! Two tables and an index: `submit_done` (key → fingerprint, expiry, task id; kept for the
//! idempotency TTL, at most the configured number, the soonest to expire going first),
//! `submit_expiry` (expiry, key) to find them, and `submit_claims` (key → fingerprint, the
//! process that claimed it): a claim is written durably *before* the submit goes upstream and
//! replaced by `done` (or removed, when the submit failed) after it.
//!
//! **A claim that survives a crash.** Only one process uses a state directory, so a claim found
//! that no running submit of this process holds was left by a process that died mid-submit:
//! its POST may or may not have reached Stream, and no task id was recorded. It is never taken
//! for done. The next call with that key takes the claim over and runs the submit (a warning
//! says so): a client that retries gets a task, at the risk of a second export when the first
//! POST did reach Stream, the one case Stream's API makes unavoidable (it has no idempotency
//! key of its own; the fleet's dead-holder lease has the same outcome). Claims older than the
//! idempotency TTL are removed at start-up.
//!
//! **What the two durable commits keep, and why neither can be relaxed.** A submit commits
//! twice with `Durability::Immediate` (one fsync each), and the caller gets its task id only
//! after the second:
//! - the `done` record is on disk before any caller has the task id, so once a caller has it,
//!   a retry of its `request_id` (after `kill -9`, a restart, a power cut) finds that task and
//!   sends nothing upstream. Written without durability, it could be lost after the answer,
//!   and the retry would start a second export;
//! - the claim is on disk before the POST goes out, so a submit cut by a crash is never taken
//!   for done and the retry says it may start a second export. Written without durability (it
//!   would reach the disk with the next durable commit), the retry after such a crash would run
//!   the submit as if it were new, silently. Sending the POST while the claim's commit runs
//!   would open the same gap.
//!
//! The task registry's record of the submit is written in the `done` commit too
//! ([`EmbeddedSubmitStore::recording_into_registry`]): no third fsync, and no moment when a
//! caller holds a task id whose owner the registry does not know.
//!
//! A crash between the POST and the `done` commit is the window no store can close (Stream has
//! no idempotency key). The commits are short (one fsync each); redb has no group commit, and
//! several submits' claims in one transaction would make each submit wait for the others.
//!
//! Concurrent calls with one key in this process join the running submit (as in memory).

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use tokio::sync::Mutex;
use tracing::Instrument;

use super::{StateDb, now_millis, write_blocking};
use crate::{
    proto::TaskRecord,
    store::{Fingerprint, StoreError, SubmitStore, Submitted},
    upstream::UpstreamError,
};

const DONE: TableDefinition<&str, &[u8]> = TableDefinition::new("submit_done");
const EXPIRY: TableDefinition<(u64, &str), ()> = TableDefinition::new("submit_expiry");
const CLAIMS: TableDefinition<&str, &[u8]> = TableDefinition::new("submit_claims");

/// Most expired or excess records one recording removes.
const TRIM_BATCH: usize = 1_000;

/// The outcome of a submit, shared by every caller waiting for it: its task id, and whether its
/// registry record was written with its `done`.
type SharedOutcome = Shared<BoxFuture<'static, Result<(String, bool), StoreError>>>;

#[derive(Clone)]
struct Running {
    fingerprint: Fingerprint,
    outcome: SharedOutcome,
}

/// The [`SubmitStore`] of one process, in the state directory.
#[derive(Debug)]
pub struct EmbeddedSubmitStore {
    db: Arc<StateDb>,
    ttl: Duration,
    capacity: u64,
    /// The task registry's capacity, when its records are written with `done`
    /// ([`EmbeddedSubmitStore::recording_into_registry`]).
    registry_capacity: Option<u64>,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running").finish_non_exhaustive()
    }
}

/// A `done` value: fingerprint (32 bytes), expiry (ms, 8 bytes big-endian), task id.
fn encode_done(fingerprint: Fingerprint, expires: u64, task_id: &str) -> Vec<u8> {
    let mut value = Vec::with_capacity(40 + task_id.len());
    value.extend_from_slice(&fingerprint.0);
    value.extend_from_slice(&expires.to_be_bytes());
    value.extend_from_slice(task_id.as_bytes());
    value
}

fn decode_done(value: &[u8]) -> Option<(Submitted, u64)> {
    let fingerprint = Fingerprint(value.get(..32)?.try_into().ok()?);
    let expires = u64::from_be_bytes(value.get(32..40)?.try_into().ok()?);
    let task_id = std::str::from_utf8(value.get(40..)?).ok()?.to_owned();
    Some((Submitted { fingerprint, task_id }, expires))
}

/// A claim value: fingerprint (32 bytes), claim time (ms, 8 bytes big-endian).
fn encode_claim(fingerprint: Fingerprint, at: u64) -> Vec<u8> {
    let mut value = fingerprint.0.to_vec();
    value.extend_from_slice(&at.to_be_bytes());
    value
}

fn claim_time(value: &[u8]) -> u64 {
    value.get(32..40).and_then(|bytes| bytes.try_into().ok()).map_or(0, u64::from_be_bytes)
}

impl EmbeddedSubmitStore {
    /// A store that remembers a submit for `ttl`, and at most `capacity` submits; claims left
    /// by an earlier process and older than `ttl` are removed, the others counted in a warning.
    pub fn new(db: Arc<StateDb>, ttl: Duration, capacity: u64) -> Result<Self, StoreError> {
        let cutoff = now_millis().saturating_sub(ttl.as_millis() as u64);
        let left = db.write(Durability::Immediate, |tx| {
            let mut claims = tx.open_table(CLAIMS)?;
            let mut stale = 0;
            let kept = claims.len()?;
            for entry in claims.extract_if(.., |_, value| claim_time(value) < cutoff)? {
                entry?;
                stale += 1;
            }
            Ok(kept - stale)
        })?;
        if left > 0 {
            tracing::warn!(
                claims = left,
                "submits with a request_id were running when the previous process stopped; their outcome is \
                 unknown: a retry of one runs it again, which may start a second export"
            );
        }
        Ok(Self { db, ttl, capacity: capacity.max(1), registry_capacity: None, running: Arc::default() })
    }

    /// Writes a submit's task registry record (`get_or_submit_recording`) in the transaction of
    /// its `done`, into the registry of the same database (`EmbeddedRegistry`, of `capacity`).
    #[must_use]
    pub fn recording_into_registry(mut self, capacity: usize) -> Self {
        self.registry_capacity = Some(u64::try_from(capacity.max(1)).unwrap_or(u64::MAX));
        self
    }

    /// The submit recorded under `key`, unless expired.
    fn find(&self, key: &str) -> Result<Option<Submitted>, StoreError> {
        self.db.read(|tx| {
            let Ok(done) = tx.open_table(DONE) else { return Ok(None) };
            let found = done.get(key)?.and_then(|value| decode_done(value.value()));
            Ok(found.filter(|(_, expires)| *expires > now_millis()).map(|(submitted, _)| submitted))
        })
    }

    /// Starts `submit` on its own task, after its claim is on disk; when it ends, records a
    /// success (or removes the claim) and leaves `running`.
    fn start(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
        record: Option<TaskRecord>,
    ) -> Running {
        let (db, running, ttl, capacity) = (Arc::clone(&self.db), Arc::clone(&self.running), self.ttl, self.capacity);
        let record = record.zip(self.registry_capacity);
        let task = tokio::spawn(
            async move {
                let outcome = run(&db, &key, fingerprint, submit, ttl, capacity, record).await;
                running.lock().await.remove(&key);
                outcome
            }
            .in_current_span(),
        );
        let outcome = task.map(|joined| joined.unwrap_or(Err(StoreError::Aborted))).boxed().shared();
        Running { fingerprint, outcome }
    }
}

/// Claims `key` on disk, runs `submit`, then records its task (and `record`, the registry's
/// record, with it, in a registry of the given capacity) or lets go of the claim. A claim that
/// cannot be written sends nothing upstream. Returns the task id and whether `record` was
/// written.
async fn run(
    db: &Arc<StateDb>,
    key: &str,
    fingerprint: Fingerprint,
    submit: BoxFuture<'static, Result<String, UpstreamError>>,
    ttl: Duration,
    capacity: u64,
    record: Option<(TaskRecord, u64)>,
) -> Result<(String, bool), StoreError> {
    let claimed_key = key.to_owned();
    let taken_over = write_blocking(db, Durability::Immediate, move |tx| {
        let mut claims = tx.open_table(CLAIMS)?;
        let earlier = claims.insert(claimed_key.as_str(), encode_claim(fingerprint, now_millis()).as_slice())?;
        Ok(earlier.is_some())
    })
    .await?;
    if taken_over {
        tracing::warn!(
            "a submit with this request_id was running when the previous process stopped, and its outcome is \
             unknown: running it again (Stream may now have two exports)"
        );
    }
    let outcome = submit.await;
    let key = key.to_owned();
    match outcome {
        Ok(task_id) => {
            let expires = now_millis().saturating_add(ttl.as_millis() as u64);
            let value = encode_done(fingerprint, expires, &task_id);
            let record = record.map(|(record, registry_capacity)| {
                (TaskRecord { task_id: task_id.clone(), ..record }, registry_capacity)
            });
            let with_record = record.is_some();
            let recorded = write_blocking(db, Durability::Immediate, move |tx| {
                if let Some((record, registry_capacity)) = &record {
                    super::registry::insert(tx, record, *registry_capacity)?;
                }
                trim(tx, capacity)?;
                tx.open_table(CLAIMS)?.remove(key.as_str())?;
                let mut done = tx.open_table(DONE)?;
                let earlier = done.insert(key.as_str(), value.as_slice())?.and_then(|value| decode_done(value.value()));
                if let Some((_, expired)) = earlier {
                    tx.open_table(EXPIRY)?.remove((expired, key.as_str()))?;
                }
                tx.open_table(EXPIRY)?.insert((expires, key.as_str()), ())?;
                Ok(())
            })
            .await;
            match recorded {
                Ok(()) => Ok((task_id, with_record)),
                Err(error) => {
                    // The caller gets its task (and records it in the registry itself); the claim
                    // stays, so a repeat is not taken for done.
                    tracing::warn!(%error, %task_id, "a submit's task could not be recorded in the state directory");
                    Ok((task_id, false))
                }
            }
        }
        Err(error) => {
            let released = write_blocking(db, Durability::Immediate, move |tx| {
                tx.open_table(CLAIMS)?.remove(key.as_str())?;
                Ok(())
            })
            .await;
            if let Err(release) = released {
                tracing::debug!(%release, "a failed submit's claim stays until a retry takes it over");
            }
            Err(StoreError::Submit(error))
        }
    }
}

/// Removes expired records, then the soonest to expire past `capacity` (leaving room for one).
fn trim(tx: &WriteTransaction, capacity: u64) -> Result<(), redb::Error> {
    let now = now_millis();
    let gone: Vec<(u64, String)> = {
        let expiry = tx.open_table(EXPIRY)?;
        let count = expiry.len()?;
        let mut gone = Vec::new();
        for entry in expiry.range(..(now, ""))?.take(TRIM_BATCH) {
            let (key, _) = entry?;
            let (at, key) = key.value();
            gone.push((at, key.to_owned()));
        }
        let over = (count - gone.len() as u64 + 1).saturating_sub(capacity);
        let over = usize::try_from(over).unwrap_or(usize::MAX).min(TRIM_BATCH);
        for entry in expiry.range(..)?.skip(gone.len()).take(over) {
            let (key, _) = entry?;
            let (at, key) = key.value();
            gone.push((at, key.to_owned()));
        }
        gone
    };
    let (mut expiry, mut done) = (tx.open_table(EXPIRY)?, tx.open_table(DONE)?);
    for (at, key) in &gone {
        expiry.remove((*at, key.as_str()))?;
        done.remove(key.as_str())?;
    }
    Ok(())
}

#[tonic::async_trait]
impl SubmitStore for EmbeddedSubmitStore {
    async fn get_or_submit(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
    ) -> Result<Submitted, StoreError> {
        Ok(self.submit_once(key, fingerprint, submit, None).await?.0)
    }

    async fn get_or_submit_recording(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
        record: TaskRecord,
    ) -> Result<(Submitted, bool), StoreError> {
        self.submit_once(key, fingerprint, submit, Some(record)).await
    }
}

impl EmbeddedSubmitStore {
    /// Both ways of [`SubmitStore`]: the submit under `key`, and whether `record` was written
    /// with it (only by the call that ran the submit; a repeat or a joined call leaves it to
    /// the caller, whose registry keeps a record that exists).
    async fn submit_once(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
        record: Option<TaskRecord>,
    ) -> Result<(Submitted, bool), StoreError> {
        let (running, ran) = {
            let mut running = self.running.lock().await;
            if let Some(first) = running.get(&key) {
                (first.clone(), false)
            } else {
                if let Some(submitted) = self.find(&key)? {
                    return Ok((submitted, false));
                }
                let started = self.start(key.clone(), fingerprint, submit, record);
                running.insert(key, started.clone());
                (started, true)
            }
        };
        let (task_id, recorded) = running.outcome.await?;
        Ok((Submitted { fingerprint: running.fingerprint, task_id }, ran && recorded))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use redb::{Database, StorageBackend, backends::FileBackend};

    use super::*;
    use crate::store::embedded::{DATABASE_FILE, StateDir};
    use crate::store::testing::{counting_submit, timeout};

    fn store(state: &StateDir, ttl: Duration, capacity: u64) -> EmbeddedSubmitStore {
        EmbeddedSubmitStore::new(state.db(), ttl, capacity).unwrap()
    }

    #[tokio::test]
    async fn a_submit_and_its_registry_record_are_written_in_one_transaction() {
        use crate::{
            proto::TaskRecord,
            store::{TaskRegistry, embedded::EmbeddedRegistry},
        };
        let dir = super::super::tests::scratch("submit-record");
        let state = StateDir::open(&dir).unwrap();
        let store = store(&state, Duration::from_secs(60), 100).recording_into_registry(100);
        let registry = EmbeddedRegistry::new(state.db(), 100);
        let (calls, fingerprint) = (Arc::new(AtomicUsize::new(0)), Fingerprint::of("r", &"b"));
        let template = TaskRecord { owner: "alice".into(), rpc: "ExportChannels".into(), ..TaskRecord::default() };
        let (submitted, recorded) = store
            .get_or_submit_recording("k".into(), fingerprint, counting_submit(&calls, Ok("t-1")), template.clone())
            .await
            .unwrap();
        assert!(recorded, "recorded with the submit");
        let record = registry.get(&submitted.task_id).await.unwrap().expect("in the registry");
        assert_eq!((record.task_id.as_str(), record.owner.as_str()), ("t-1", "alice"));
        // A repeat finds the first submit and leaves the (existing) record to the caller.
        let (again, recorded) = store
            .get_or_submit_recording("k".into(), fingerprint, counting_submit(&calls, Ok("t-2")), template)
            .await
            .unwrap();
        assert_eq!((again.task_id.as_str(), recorded), ("t-1", false));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn one_submit_per_key_across_concurrent_calls_and_a_reopen() {
        let dir = super::super::tests::scratch("submit");
        let calls = Arc::new(AtomicUsize::new(0));
        let fingerprint = Fingerprint::of("rpc", &"body");
        {
            let state = StateDir::open(&dir).unwrap();
            let store = store(&state, Duration::from_secs(60), 100);
            let results = futures::future::join_all(
                (0..10).map(|_| store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("task-1")))),
            )
            .await;
            assert!(results.iter().all(|r| r.as_ref().is_ok_and(|s| s.task_id == "task-1")));
        }
        let state = StateDir::open(&dir).unwrap();
        let store = store(&state, Duration::from_secs(60), 100);
        let again = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("task-2"))).await;
        assert_eq!(again.unwrap().task_id, "task-1", "found after the reopen");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn failures_are_not_recorded_and_records_expire_and_give_way_past_the_capacity() {
        let dir = super::super::tests::scratch("submit-expiry");
        let state = StateDir::open(&dir).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let fingerprint = Fingerprint::of("rpc", &"body");
        let short = store(&state, Duration::from_millis(50), 2);
        let failed = short.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Err(timeout()))).await;
        assert!(matches!(failed, Err(StoreError::Submit(_))));
        let retried = short.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("a"))).await;
        assert_eq!(retried.unwrap().task_id, "a");
        tokio::time::sleep(Duration::from_millis(80)).await;
        let later = short.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("b"))).await;
        assert_eq!(later.unwrap().task_id, "b", "expired");

        let dir = super::super::tests::scratch("submit-capacity");
        let state = StateDir::open(&dir).unwrap();
        let small = store(&state, Duration::from_secs(60), 2);
        for key in ["x", "y", "z"] {
            small.get_or_submit(key.into(), fingerprint, counting_submit(&calls, Ok(key))).await.unwrap();
        }
        let again = small.get_or_submit("x".into(), fingerprint, counting_submit(&calls, Ok("x2"))).await;
        assert_eq!(again.unwrap().task_id, "x2", "the oldest went past the capacity");
        let counts = state.db().read(|tx| Ok((tx.open_table(DONE)?.len()?, tx.open_table(EXPIRY)?.len()?))).unwrap();
        assert_eq!(counts, (2, 2), "at most the capacity on disk, index and records alike");
    }

    #[tokio::test]
    async fn a_claim_left_by_a_dead_process_is_not_taken_for_done() {
        let dir = super::super::tests::scratch("claim");
        let fingerprint = Fingerprint::of("rpc", &"body");
        {
            let state = StateDir::open(&dir).unwrap();
            state
                .db()
                .write(Durability::Immediate, |tx| {
                    tx.open_table(CLAIMS)?.insert("k", encode_claim(fingerprint, now_millis()).as_slice())?;
                    Ok(())
                })
                .unwrap();
        }
        let state = StateDir::open(&dir).unwrap();
        let store = store(&state, Duration::from_secs(60), 100);
        let calls = Arc::new(AtomicUsize::new(0));
        let submitted = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("new"))).await;
        assert_eq!(submitted.unwrap().task_id, "new");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the submit ran again");
        let claims = state.db().read(|tx| Ok(tx.open_table(CLAIMS)?.len()?)).unwrap();
        assert_eq!(claims, 0, "the claim was replaced by the record");
    }

    /// A file backend whose writes fail with ENOSPC while `full` is set.
    #[derive(Debug)]
    struct FillableDisk {
        file: FileBackend,
        full: Arc<AtomicBool>,
    }

    impl StorageBackend for FillableDisk {
        fn len(&self) -> Result<u64, redb::BackendError> {
            self.file.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), redb::BackendError> {
            self.file.read(offset, out)
        }
        fn set_len(&self, len: u64) -> Result<(), redb::BackendError> {
            if self.full.load(Ordering::SeqCst) && len > self.file.len()? {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
            }
            self.file.set_len(len)
        }
        fn sync_data(&self) -> Result<(), redb::BackendError> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
            }
            self.file.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), redb::BackendError> {
            if self.full.load(Ordering::SeqCst) {
                return Err(std::io::Error::from_raw_os_error(libc::ENOSPC).into());
            }
            self.file.write(offset, data)
        }
        fn close(&self) -> Result<(), redb::BackendError> {
            self.file.close()
        }
    }

    #[tokio::test]
    async fn on_a_full_disk_the_submit_is_refused_before_upstream_and_works_again_after() {
        let dir = super::super::tests::scratch("full");
        let full = Arc::new(AtomicBool::new(false));
        let (path, disk) = (dir.join(DATABASE_FILE), Arc::clone(&full));
        let db = Arc::new(StateDb::with_opener(move || {
            let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
            Database::builder()
                .create_with_backend(FillableDisk { file: FileBackend::new(file), full: Arc::clone(&disk) })
        }));
        let store = EmbeddedSubmitStore::new(Arc::clone(&db), Duration::from_secs(60), 100).unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let fingerprint = Fingerprint::of("rpc", &"body");

        full.store(true, Ordering::SeqCst);
        let refused = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("t"))).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))), "{refused:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "nothing went upstream");
        let refused = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("t"))).await;
        assert!(matches!(refused, Err(StoreError::Unavailable(_))), "still full: {refused:?}");

        full.store(false, Ordering::SeqCst);
        let outcome = store.get_or_submit("k".into(), fingerprint, counting_submit(&calls, Ok("t"))).await;
        assert_eq!(outcome.unwrap().task_id, "t", "space again: the store works without a restart");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
