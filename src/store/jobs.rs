//! Export jobs' state: each job's record, its plan cut into shards, and each shard's attempts,
//! behind [`JobStore`]. One process keeps it in its state directory (`embedded::EmbeddedJobStore`)
//! or in memory by choice (`memory_jobs::MemoryJobStore`); every transition a job runner makes is written
//! here before it is acted on, so that a restart resumes the job where it was.

use std::sync::Arc;

use super::StoreError;
use crate::proto::{CreateExportJobRequest, ExportJob, ExportJobState, ExportJobTask};

/// How many finished jobs are kept, at most (the oldest go first); their shards go with them.
pub const FINISHED_JOBS_KEPT: usize = 10_000;

/// A job as stored: the contract's `ExportJob` and what only the service needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct JobRecord {
    /// The job as callers see it; its `request` without the lists (see
    /// [`request_summary`]): every write of the job's state stays small.
    #[prost(message, required, tag = "1")]
    pub job: ExportJob,
    /// How the owner was identified (the policies' `Caller.source`): a query's channels are
    /// checked against the policies when they are listed, possibly after a restart.
    #[prost(string, tag = "2")]
    pub owner_source: String,
    /// The create request's fingerprint (hex), which a retried create must match.
    #[prost(string, tag = "3")]
    pub fingerprint: String,
}

/// One shard as stored: the contract's `ExportJobTask` and its runner's bookkeeping.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ShardRecord {
    /// The shard as callers see it.
    #[prost(message, required, tag = "1")]
    pub task: ExportJobTask,
    /// When the current task was submitted, in µs since the epoch (0: not yet).
    #[prost(int64, tag = "2")]
    pub submitted_micros: i64,
    /// The next attempt is not submitted before this instant (µs since the epoch): a failed
    /// task's backoff, kept across a restart.
    #[prost(int64, tag = "3")]
    pub retry_at_micros: i64,
    /// Why the last attempt failed, as Stream said it.
    #[prost(string, tag = "4")]
    pub last_error: String,
    /// When Stream created the current task (µs since the epoch; 0: not known), for the
    /// archive's manifest.
    #[prost(int64, tag = "5")]
    pub task_created_micros: i64,
}

/// Where a job sits in the listing order (newest first: by create time, then id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobCursor {
    /// The job's create time, in µs since the epoch.
    pub created_micros: i64,
    /// The job id, which breaks ties.
    pub job_id: String,
}

impl JobCursor {
    /// The position of `job`.
    pub fn of(job: &ExportJob) -> Self {
        Self { created_micros: micros(job.create_time.as_ref()), job_id: job.job_id.clone() }
    }
}

/// µs since the epoch of a timestamp (0 when unset).
pub fn micros(at: Option<&prost_types::Timestamp>) -> i64 {
    at.map_or(0, |at| at.seconds * 1_000_000 + i64::from(at.nanos / 1_000))
}

/// What [`JobStore::create`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum Created {
    /// The job is new.
    New(JobRecord),
    /// The owner already created a job with this `request_id`: that job, unchanged.
    Existing(JobRecord),
}

/// Where export jobs are kept.
#[tonic::async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new job (its whole request apart, [`JobStore::request`]), unless its owner
    /// already created one with the same non-empty `request_id` (then that one is returned,
    /// whatever its request). The record returned holds the request's summary.
    async fn create(&self, record: JobRecord) -> Result<Created, StoreError>;

    /// A job, if it is kept (its request's summary).
    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError>;

    /// A job's whole request, lists included.
    async fn request(&self, job_id: &str) -> Result<Option<CreateExportJobRequest>, StoreError>;

    /// Writes a job's state and progress as [`merge`] allows; returns the job as stored.
    async fn update(&self, job: ExportJob) -> Result<ExportJob, StoreError>;

    /// Writes the plan's shards and the job together: a job is never RUNNING without its shards.
    async fn plan(&self, job: ExportJob, shards: Arc<Vec<ShardRecord>>) -> Result<ExportJob, StoreError>;

    /// Writes one shard and the job's progress together.
    async fn update_shard(&self, job: ExportJob, shard: ShardRecord) -> Result<ExportJob, StoreError>;

    /// Up to `limit` shards of a job, in shard order, from shard `from`.
    async fn shards(&self, job_id: &str, from: u32, limit: usize) -> Result<Vec<ShardRecord>, StoreError>;

    /// Up to `limit` jobs (of `owner` only, when given), newest first, after `after`.
    async fn page(
        &self,
        owner: Option<&str>,
        after: Option<&JobCursor>,
        limit: usize,
    ) -> Result<Vec<ExportJob>, StoreError>;

    /// Every job that has not ended, oldest first: the runner resumes them after a restart.
    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError>;
}

/// What a write may change of a stored job: a job that ended stays as it ended, and a job
/// being cancelled stays CANCELLING until its runner writes a terminal state.
pub fn merge(stored: &ExportJob, mut new: ExportJob) -> ExportJob {
    if stored.state().is_terminal() {
        return stored.clone();
    }
    if stored.state() == ExportJobState::Cancelling && !new.state().is_terminal() {
        new.set_state(ExportJobState::Cancelling);
    }
    new.request = stored.request.clone();
    new
}

/// The request id of a job's create request ("" when none).
pub fn request_id(job: &ExportJob) -> &str {
    job.request.as_ref().map_or("", |request| request.request_id.as_str())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::CreateExportJobRequest;

    fn job(id: &str, owner: &str, at: i64, request_id: &str) -> JobRecord {
        JobRecord {
            job: ExportJob {
                job_id: id.into(),
                owner: owner.into(),
                request: Some(CreateExportJobRequest { request_id: request_id.into(), ..Default::default() }),
                state: ExportJobState::Planning as i32,
                create_time: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
                ..Default::default()
            },
            owner_source: "token".into(),
            fingerprint: "f".into(),
        }
    }

    /// The contract every implementation keeps; `embedded` runs it too.
    pub(crate) async fn keeps_the_contract(store: &dyn JobStore) {
        assert!(matches!(store.create(job("a", "alice", 1, "r1")).await.unwrap(), Created::New(_)));
        assert!(matches!(store.create(job("b", "bob", 2, "r1")).await.unwrap(), Created::New(_)), "per owner");
        let again = store.create(job("c", "alice", 3, "r1")).await.unwrap();
        assert!(matches!(again, Created::Existing(record) if record.job.job_id == "a"));
        assert!(store.get("c").await.unwrap().is_none(), "a repeated create stores nothing");
        let mut listed = job("d", "carol", 0, "");
        let channel = crate::proto::ChannelRef { r#type: "t".into(), id: "x".into(), ..Default::default() };
        let selector = crate::proto::create_export_job_request::Selector::Channels(crate::proto::ChannelList {
            channels: vec![channel; 3],
        });
        listed.job.request.as_mut().unwrap().selector = Some(selector.clone());
        let Created::New(stored) = store.create(listed).await.unwrap() else { panic!("new") };
        let summary = stored.job.request.and_then(|request| request.selector);
        assert!(
            matches!(summary, Some(crate::proto::create_export_job_request::Selector::Channels(list)) if list.channels.is_empty())
        );
        assert_eq!(store.request("d").await.unwrap().and_then(|request| request.selector), Some(selector));

        let newest: Vec<_> = store.page(None, None, 10).await.unwrap().into_iter().map(|job| job.job_id).collect();
        assert_eq!(newest, ["b", "a", "d"]);
        let after_b = JobCursor::of(&store.get("b").await.unwrap().unwrap().job);
        let rest: Vec<_> =
            store.page(None, Some(&after_b), 10).await.unwrap().into_iter().map(|job| job.job_id).collect();
        assert_eq!(rest, ["a", "d"]);
        let alices: Vec<_> =
            store.page(Some("alice"), None, 10).await.unwrap().into_iter().map(|job| job.job_id).collect();
        assert_eq!(alices, ["a"]);

        let mut running = store.get("a").await.unwrap().unwrap().job;
        running.set_state(ExportJobState::Running);
        let shards = (0..3u32)
            .map(|n| ShardRecord { task: ExportJobTask { shard: n, ..Default::default() }, ..Default::default() })
            .collect();
        store.plan(running.clone(), Arc::new(shards)).await.unwrap();
        let mut cancelling = running.clone();
        cancelling.set_state(ExportJobState::Cancelling);
        store.update(cancelling).await.unwrap();
        let written = store.update(running.clone()).await.unwrap();
        assert_eq!(written.state(), ExportJobState::Cancelling, "a runner's write does not undo a cancel");
        let mut shard = store.shards("a", 1, 1).await.unwrap().remove(0);
        assert_eq!(shard.task.shard, 1);
        shard.task.task_id = "t-1".into();
        store.update_shard(running.clone(), shard).await.unwrap();
        let shards = store.shards("a", 0, 10).await.unwrap();
        assert_eq!(shards.iter().map(|shard| shard.task.task_id.as_str()).collect::<Vec<_>>(), ["", "t-1", ""]);
        let unfinished: Vec<_> =
            store.unfinished().await.unwrap().into_iter().map(|record| record.job.job_id).collect();
        assert_eq!(unfinished, ["d", "a", "b"]);
        let mut cancelled = running;
        cancelled.set_state(ExportJobState::Cancelled);
        store.update(cancelled.clone()).await.unwrap();
        cancelled.set_state(ExportJobState::Running);
        assert_eq!(store.update(cancelled).await.unwrap().state(), ExportJobState::Cancelled, "an end is final");
        assert_eq!(store.unfinished().await.unwrap().len(), 2);
        let mut refused = job("e", "alice", 4, "");
        refused.job.set_state(ExportJobState::Failed);
        store.create(refused).await.unwrap();
        assert_eq!(store.unfinished().await.unwrap().len(), 2, "a job created ended is not resumed");
    }
}
