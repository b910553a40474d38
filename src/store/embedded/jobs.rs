//! Export jobs of one process, on disk.
//!
//! Tables: `jobs` (job id → the record, protobuf), `job_shards` ((job id, shard) → the shard),
//! and indexes without values: `jobs_by_time` (create time in µs, job id) for pages,
//! `jobs_by_owner` (owner, create time, job id) for a caller's own, `jobs_unfinished` (create
//! time, job id) for the runner to resume after a restart, and `job_requests` ((owner,
//! request id) → job id) for idempotent creates; each job's whole request, written once, is in
//! `job_bodies` (job id → request), so that the record written at each step stays small. Every write commits durably: the runner acts
//! only on what is written.

use std::sync::Arc;

use prost::Message;
use redb::{Durability, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::{StateDb, write_blocking};
use crate::{
    contract::job::request_summary,
    proto::{CreateExportJobRequest, ExportJob},
    store::{
        StoreError,
        jobs::{Created, FINISHED_JOBS_KEPT, JobCursor, JobRecord, JobStore, ShardRecord, merge, micros, request_id},
    },
};

const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const JOB_SHARDS: TableDefinition<(&str, u32), &[u8]> = TableDefinition::new("job_shards");
const JOBS_BY_TIME: TableDefinition<(i64, &str), ()> = TableDefinition::new("jobs_by_time");
const JOBS_BY_OWNER: TableDefinition<(&str, i64, &str), ()> = TableDefinition::new("jobs_by_owner");
const JOBS_UNFINISHED: TableDefinition<(i64, &str), ()> = TableDefinition::new("jobs_unfinished");
const JOB_REQUESTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("job_requests");
const JOB_BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("job_bodies");

/// Most finished jobs one create forgets (the oldest past [`FINISHED_JOBS_KEPT`]).
const TRIM_BATCH: usize = 16;

/// The [`JobStore`] of one process, in the state directory.
#[derive(Debug)]
pub struct EmbeddedJobStore {
    pub(super) db: Arc<StateDb>,
}

impl EmbeddedJobStore {
    /// The jobs kept in `db`.
    pub fn new(db: Arc<StateDb>) -> Self {
        Self { db }
    }
}

fn read_record(tx: &WriteTransaction, job_id: &str) -> Result<Option<JobRecord>, redb::Error> {
    let jobs = tx.open_table(JOBS)?;
    let record = jobs.get(job_id)?.and_then(|bytes| JobRecord::decode(bytes.value()).ok());
    Ok(record)
}

/// Writes `job` over the stored one as [`merge`] allows, keeping the unfinished index true.
fn write_job(tx: &WriteTransaction, job: ExportJob) -> Result<Result<ExportJob, String>, redb::Error> {
    let Some(mut record) = read_record(tx, &job.job_id)? else {
        return Ok(Err(format!("the job {} is no longer kept", job.job_id)));
    };
    record.job = merge(&record.job, job);
    let at = micros(record.job.create_time.as_ref());
    if record.job.state().is_terminal() {
        tx.open_table(JOBS_UNFINISHED)?.remove((at, record.job.job_id.as_str()))?;
    }
    tx.open_table(JOBS)?.insert(record.job.job_id.as_str(), record.encode_to_vec().as_slice())?;
    Ok(Ok(record.job))
}

/// Forgets the oldest finished jobs past [`FINISHED_JOBS_KEPT`], with their shards and indexes.
fn trim(tx: &WriteTransaction) -> Result<(), redb::Error> {
    let finished = {
        let all = tx.open_table(JOBS_BY_TIME)?.len()?;
        let unfinished = tx.open_table(JOBS_UNFINISHED)?.len()?;
        usize::try_from(all.saturating_sub(unfinished)).unwrap_or(usize::MAX)
    };
    let excess = finished.saturating_sub(FINISHED_JOBS_KEPT).min(TRIM_BATCH);
    if excess == 0 {
        return Ok(());
    }
    let oldest: Vec<(i64, String)> = {
        let by_time = tx.open_table(JOBS_BY_TIME)?;
        let unfinished = tx.open_table(JOBS_UNFINISHED)?;
        let mut oldest = Vec::new();
        for entry in by_time.range(..)? {
            let (key, _) = entry?;
            let (at, job_id) = key.value();
            if unfinished.get((at, job_id))?.is_none() {
                oldest.push((at, job_id.to_owned()));
                if oldest.len() == excess {
                    break;
                }
            }
        }
        oldest
    };
    for (at, job_id) in oldest {
        if let Some(record) = read_record(tx, &job_id)? {
            tx.open_table(JOBS_BY_OWNER)?.remove((record.job.owner.as_str(), at, job_id.as_str()))?;
            tx.open_table(JOB_REQUESTS)?.remove((record.job.owner.as_str(), request_id(&record.job)))?;
        }
        tx.open_table(JOBS)?.remove(job_id.as_str())?;
        tx.open_table(JOB_BODIES)?.remove(job_id.as_str())?;
        tx.open_table(JOBS_BY_TIME)?.remove((at, job_id.as_str()))?;
        let mut shards = tx.open_table(JOB_SHARDS)?;
        shards.retain_in((job_id.as_str(), 0)..=(job_id.as_str(), u32::MAX), |_, _| false)?;
    }
    Ok(())
}

/// Stores a new job (its request's lists apart), unless its owner already created one with
/// its non-empty `request_id` (then that one is returned); forgets the oldest finished jobs.
pub(super) fn insert_job(tx: &WriteTransaction, mut record: JobRecord) -> Result<Created, redb::Error> {
    let whole = record.job.request.take().unwrap_or_default();
    record.job.request = Some(request_summary(&whole));
    let owner = record.job.owner.as_str();
    let request_id = request_id(&record.job);
    if !request_id.is_empty() {
        let existing = tx.open_table(JOB_REQUESTS)?.get((owner, request_id))?.map(|id| id.value().to_owned());
        if let Some(existing) = existing.and_then(|job_id| read_record(tx, &job_id).transpose()) {
            return Ok(Created::Existing(existing?));
        }
        tx.open_table(JOB_REQUESTS)?.insert((owner, request_id), record.job.job_id.as_str())?;
    }
    trim(tx)?;
    let at = micros(record.job.create_time.as_ref());
    let job_id = record.job.job_id.as_str();
    tx.open_table(JOBS)?.insert(job_id, record.encode_to_vec().as_slice())?;
    tx.open_table(JOB_BODIES)?.insert(job_id, whole.encode_to_vec().as_slice())?;
    tx.open_table(JOBS_BY_TIME)?.insert((at, job_id), ())?;
    tx.open_table(JOBS_BY_OWNER)?.insert((owner, at, job_id), ())?;
    // A job may be created ended (a schedule's window its owner may not export).
    if !record.job.state().is_terminal() {
        tx.open_table(JOBS_UNFINISHED)?.insert((at, job_id), ())?;
    }
    Ok(Created::New(record))
}

fn gone(why: String) -> StoreError {
    StoreError::Unavailable(crate::store::Unavailable(why))
}

#[tonic::async_trait]
impl JobStore for EmbeddedJobStore {
    async fn create(&self, record: JobRecord) -> Result<Created, StoreError> {
        write_blocking(&self.db, Durability::Immediate, move |tx| insert_job(tx, record)).await
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.db.read(|tx| {
            let Ok(jobs) = tx.open_table(JOBS) else { return Ok(None) };
            Ok(jobs.get(job_id)?.and_then(|bytes| JobRecord::decode(bytes.value()).ok()))
        })
    }

    async fn request(&self, job_id: &str) -> Result<Option<CreateExportJobRequest>, StoreError> {
        self.db.read(|tx| {
            let Ok(bodies) = tx.open_table(JOB_BODIES) else { return Ok(None) };
            Ok(bodies.get(job_id)?.and_then(|bytes| CreateExportJobRequest::decode(bytes.value()).ok()))
        })
    }

    async fn update(&self, job: ExportJob) -> Result<ExportJob, StoreError> {
        write_blocking(&self.db, Durability::Immediate, move |tx| write_job(tx, job)).await?.map_err(gone)
    }

    async fn plan(&self, job: ExportJob, shards: Arc<Vec<ShardRecord>>) -> Result<ExportJob, StoreError> {
        write_blocking(&self.db, Durability::Immediate, move |tx| {
            let job_id = job.job_id.clone();
            let written = write_job(tx, job)?;
            if written.is_ok() {
                let mut table = tx.open_table(JOB_SHARDS)?;
                for shard in shards.iter() {
                    table.insert((job_id.as_str(), shard.task.shard), shard.encode_to_vec().as_slice())?;
                }
            }
            Ok(written)
        })
        .await?
        .map_err(gone)
    }

    async fn update_shard(&self, job: ExportJob, shard: ShardRecord) -> Result<ExportJob, StoreError> {
        write_blocking(&self.db, Durability::Immediate, move |tx| {
            let job_id = job.job_id.clone();
            let written = write_job(tx, job)?;
            if written.is_ok() {
                tx.open_table(JOB_SHARDS)?
                    .insert((job_id.as_str(), shard.task.shard), shard.encode_to_vec().as_slice())?;
            }
            Ok(written)
        })
        .await?
        .map_err(gone)
    }

    async fn shards(&self, job_id: &str, from: u32, limit: usize) -> Result<Vec<ShardRecord>, StoreError> {
        self.db.read(|tx| {
            let Ok(table) = tx.open_table(JOB_SHARDS) else { return Ok(Vec::new()) };
            let mut shards = Vec::with_capacity(limit.min(1024));
            for entry in table.range((job_id, from)..=(job_id, u32::MAX))?.take(limit) {
                let (_, bytes) = entry?;
                if let Ok(shard) = ShardRecord::decode(bytes.value()) {
                    shards.push(shard);
                }
            }
            Ok(shards)
        })
    }

    async fn page(
        &self,
        owner: Option<&str>,
        after: Option<&JobCursor>,
        limit: usize,
    ) -> Result<Vec<ExportJob>, StoreError> {
        self.db.read(|tx| {
            let (Ok(jobs), Ok(by_time), Ok(by_owner)) =
                (tx.open_table(JOBS), tx.open_table(JOBS_BY_TIME), tx.open_table(JOBS_BY_OWNER))
            else {
                return Ok(Vec::new());
            };
            let ids: Vec<String> = match owner {
                Some(owner) => {
                    let upper = match after {
                        Some(at) => std::ops::Bound::Excluded((owner, at.created_micros, at.job_id.as_str())),
                        None => std::ops::Bound::Included((owner, i64::MAX, "\u{10FFFF}")),
                    };
                    let lower = std::ops::Bound::Included((owner, i64::MIN, ""));
                    let mut ids = Vec::new();
                    for entry in by_owner.range((lower, upper))?.rev().take(limit) {
                        ids.push(entry?.0.value().2.to_owned());
                    }
                    ids
                }
                None => {
                    let range = match after {
                        Some(at) => by_time.range(..(at.created_micros, at.job_id.as_str()))?,
                        None => by_time.range(..)?,
                    };
                    let mut ids = Vec::new();
                    for entry in range.rev().take(limit) {
                        ids.push(entry?.0.value().1.to_owned());
                    }
                    ids
                }
            };
            let mut page = Vec::with_capacity(ids.len());
            for job_id in ids {
                if let Some(record) = jobs.get(job_id.as_str())?.and_then(|bytes| JobRecord::decode(bytes.value()).ok())
                {
                    page.push(record.job);
                }
            }
            Ok(page)
        })
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.db.read(|tx| {
            let (Ok(jobs), Ok(unfinished)) = (tx.open_table(JOBS), tx.open_table(JOBS_UNFINISHED)) else {
                return Ok(Vec::new());
            };
            let mut records = Vec::new();
            for entry in unfinished.range(..)? {
                let (key, _) = entry?;
                if let Some(record) = jobs.get(key.value().1)?.and_then(|bytes| JobRecord::decode(bytes.value()).ok()) {
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
    use crate::store::embedded::StateDir;

    #[tokio::test]
    async fn the_embedded_store_keeps_the_contract_and_its_jobs_across_a_reopen() {
        let dir = super::super::tests::scratch("jobs");
        {
            let state = StateDir::open(&dir).unwrap();
            crate::store::jobs::tests::keeps_the_contract(&EmbeddedJobStore::new(state.db())).await;
        }
        let state = StateDir::open(&dir).unwrap();
        let store = EmbeddedJobStore::new(state.db());
        assert_eq!(store.page(None, None, 10).await.unwrap().len(), 4);
        assert_eq!(store.shards("a", 0, 10).await.unwrap()[1].task.task_id, "t-1");
        assert_eq!(store.unfinished().await.unwrap().len(), 2);
        assert!(store.request("d").await.unwrap().is_some(), "the whole request outlives a reopen");
    }
}
