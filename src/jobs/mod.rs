//! Export jobs: any number of channels (listed, or found by a QueryChannels filter) or users,
//! exported for one window as one durable job.
//!
//! - [`plan`] resolves a job's selector into a frozen list and cuts it into shards of at most
//!   25 (Stream's limit, a setting);
//! - [`runner`] runs one job: it plans, submits each shard under the export budget (paced
//!   evenly, never in a burst) with an idempotency key of its own, watches the shards' tasks
//!   through the hub, retries failed tasks and resubmits those past the task deadline, and
//!   writes every transition to the [`JobStore`] before acting on it, so that a restart
//!   resumes each unfinished job where it was.
//!
//! What a job's shards are checked against (the policies, the submit RPCs' validation) is the
//! service's, handed in as a [`JobPolicy`]: this module sits below the handlers.

pub mod plan;
mod runner;
pub mod schedules;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::Status;

pub use self::plan::ShardRequest;
use crate::{
    archive::{Archives, Location},
    contract::status,
    proto::{ArchivedFile, CreateExportJobRequest, ExportJob, ExportJobProgress, create_export_job_request::Selector},
    store::{
        Fingerprint, StoreError, SubmitStore, TaskRegistry,
        jobs::{Created, JobCursor, JobRecord, JobStore, ShardRecord},
    },
    task_watch::{WatchHub, budget::PollBudget, coordination::SlotBooker},
    upstream::{
        StreamClient,
        wire::{ExportChannelsBody, ExportUsersBody},
    },
};

/// Tuning of export jobs; every value has a flag in `stream-export serve`.
#[derive(Clone, Debug)]
pub struct JobSettings {
    /// Most channels (or users) one shard's task exports: Stream's limit per request.
    pub shard_size: usize,
    /// Export submits per minute, all jobs together (Stream allows 60 a minute, a second's share
    /// being a thirtieth of that): paced evenly.
    pub export_budget_per_minute: u32,
    /// A task not finished this long after its submit is submitted again (once).
    pub task_deadline: Duration,
    /// How many times a shard is submitted before its failure fails the job.
    pub task_attempts: u32,
    /// The first wait before a failed task is submitted again; it doubles per attempt.
    pub retry_delay: Duration,
    /// Most channels or users in one job (an explicit list, or what a query lists).
    pub max_channels: usize,
    /// Most jobs running at once, all callers together.
    pub max_running: usize,
    /// Most jobs one caller runs at once.
    pub max_running_per_caller: usize,
}

impl Default for JobSettings {
    fn default() -> Self {
        Self {
            shard_size: 25,
            export_budget_per_minute: 50,
            task_deadline: Duration::from_secs(4 * 3600),
            task_attempts: 3,
            retry_delay: Duration::from_secs(30),
            max_channels: 100_000,
            max_running: 100,
            max_running_per_caller: 10,
        }
    }
}

/// Who owns a job, as the policies name a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The caller's name.
    pub name: String,
    /// How it was identified (the policies' `Caller.source`).
    pub source: String,
}

/// One shard's upstream request, checked and built.
#[derive(Debug)]
pub struct Prepared {
    /// The body to send.
    pub body: ShardBody,
    /// Its fingerprint under the submit's RPC, as the submit RPCs compute it.
    pub fingerprint: Fingerprint,
    /// The submit's RPC name (a task record's `rpc`).
    pub rpc: &'static str,
}

/// The body of a shard's submit.
#[derive(Debug)]
pub enum ShardBody {
    /// `POST /export_channels`.
    Channels(ExportChannelsBody),
    /// `POST /export/users`.
    Users(ExportUsersBody),
}

/// What a job's shards are checked against: the service's validation and policies.
pub trait JobPolicy: Send + Sync + std::fmt::Debug + 'static {
    /// Checks that `owner` may export every channel (or user) of `shard`, validates it as the
    /// submit RPCs do, and builds its upstream request. The error is the status the submit
    /// RPC would have returned (PERMISSION_DENIED `NOT_AUTHORIZED` naming the channel, say).
    fn prepare(&self, owner: &Owner, shard: &ShardRequest) -> Result<Prepared, Status>;

    /// Checks that `owner` may create `job` (as `CreateExportJob` would, and each channel of
    /// an explicit list): a schedule's job is checked when its window starts, so that a policy
    /// change takes effect from the next window.
    fn authorize_start(&self, owner: &Owner, job: &ExportJob) -> Result<(), Status>;
}

/// The progress of a job before it is planned: the totals of an explicit list (a query's are
/// known once it is listed).
pub fn planned_progress(request: &CreateExportJobRequest, shard_size: usize) -> Option<ExportJobProgress> {
    let items = plan::listed(request)?;
    let total = items.len() as u64;
    let users = matches!(request.selector, Some(Selector::Users(_)));
    Some(ExportJobProgress {
        channels_total: if users { 0 } else { total },
        users_total: if users { total } else { 0 },
        tasks_total: total.div_ceil(shard_size.max(1) as u64),
        ..ExportJobProgress::default()
    })
}

/// Who runs each job. In one process, this replica runs every job ([`RunsEveryJob`]); in a
/// fleet, the replica that holds the job's lease (`fleet::jobs::JobLeases`), so that a job
/// never runs on two replicas at once and another takes it over when its replica dies.
#[tonic::async_trait]
pub trait JobClaims: Send + Sync + std::fmt::Debug + 'static {
    /// Takes, or keeps, the right to run `job_id`; `false` while another replica holds it
    /// (or when it cannot be told).
    async fn claim(&self, job_id: &str) -> bool;

    /// Gives the right up (the job ended, or this replica stops).
    async fn release(&self, job_id: &str);

    /// How often a running job's claim is kept, and unowned unfinished jobs are looked for;
    /// `None` when no other replica can hold a claim.
    fn renew_every(&self) -> Option<Duration>;
}

/// One process: it runs every job.
#[derive(Debug)]
pub struct RunsEveryJob;

#[tonic::async_trait]
impl JobClaims for RunsEveryJob {
    async fn claim(&self, _: &str) -> bool {
        true
    }

    async fn release(&self, _: &str) {}

    fn renew_every(&self) -> Option<Duration> {
        None
    }
}

/// What the jobs use, handed in by `startup`.
#[derive(Debug)]
pub struct JobParts {
    /// Where jobs are kept.
    pub store: Arc<dyn JobStore>,
    /// The upstream client (QueryChannels and the submits).
    pub client: StreamClient,
    /// The hub that watches the shards' tasks.
    pub hub: WatchHub,
    /// Idempotent submits: each shard's attempt has its own key.
    pub submits: Arc<dyn SubmitStore>,
    /// The task registry, where each shard's task is recorded as its owner's.
    pub registry: Arc<dyn TaskRegistry>,
    /// The checks of each shard.
    pub policy: Arc<dyn JobPolicy>,
    /// Books the export budget's slots: this replica's alone, or the fleet's.
    pub export_slots: Arc<dyn SlotBooker>,
    /// Who runs each job.
    pub claims: Arc<dyn JobClaims>,
    /// Where jobs with an `archive_uri` copy their files.
    pub archives: Arc<Archives>,
    /// Tuning.
    pub settings: JobSettings,
}

/// The export jobs of this replica: creates, reads, cancels, and the runners. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Jobs {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    parts: JobParts,
    /// Paces the submits of every job to the export budget (and to what Stream's rate-limit
    /// headers say is left of its window).
    pacer: Arc<PollBudget>,
    /// The jobs running here: each one's owner and its cancel switch.
    running: Mutex<HashMap<String, Running>>,
    /// Bumped at every write of any job, so that watchers read it again.
    changes: watch::Sender<u64>,
    /// Cancelled when the replica stops: runners stop where they are (what they wrote stays,
    /// and the next start resumes it).
    stopping: CancellationToken,
}

#[derive(Debug)]
struct Running {
    owner: String,
    cancel: CancellationToken,
}

impl Jobs {
    /// The jobs kept in `parts.store`; none runs until [`Jobs::resume`].
    pub fn new(parts: JobParts) -> Self {
        let per_second = f64::from(parts.settings.export_budget_per_minute.max(1)) / 60.0;
        let pacer = Arc::new(PollBudget::new(per_second, Arc::clone(&parts.export_slots)));
        let inner = Inner {
            parts,
            pacer,
            running: Mutex::default(),
            changes: watch::Sender::new(0),
            stopping: CancellationToken::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Starts a runner for every unfinished job (after a restart: each resumes where it was).
    /// In a fleet, keeps looking for unfinished jobs that no replica runs (their replica died)
    /// and takes them over.
    pub async fn resume(&self) -> Result<usize, StoreError> {
        if let Some(every) = self.inner.parts.claims.renew_every() {
            // Started first: a store that does not answer now (Redis down) is asked again.
            let jobs = self.clone();
            tokio::spawn(async move {
                let mut looks = tokio::time::interval(every);
                looks.tick().await;
                loop {
                    tokio::select! {
                        _ = looks.tick() => {}
                        () = jobs.inner.stopping.cancelled() => return,
                    }
                    match jobs.inner.parts.store.unfinished().await {
                        Ok(unfinished) => unfinished.into_iter().for_each(|record| jobs.start(record)),
                        Err(error) => tracing::debug!(%error, "the unfinished jobs could not be read"),
                    }
                }
            });
        }
        let unfinished = self.inner.parts.store.unfinished().await?;
        let count = unfinished.len();
        for record in unfinished {
            self.start(record);
        }
        Ok(count)
    }

    /// The settings in force.
    pub fn settings(&self) -> &JobSettings {
        &self.inner.parts.settings
    }

    /// Where jobs archive.
    pub fn archives(&self) -> &Arc<Archives> {
        &self.inner.parts.archives
    }

    /// Stores a new job and starts it, unless its owner already created one with this
    /// `request_id` (that one is returned). RESOURCE_EXHAUSTED past the running-job caps.
    pub async fn create(&self, record: JobRecord) -> Result<Created, Status> {
        self.check_caps(&record.job.owner)?;
        let created = self.inner.parts.store.create(record).await.map_err(|error| store_failure(&error))?;
        if let Created::New(record) = &created {
            self.start(record.clone());
            self.inner.changes.send_modify(|version| *version += 1);
        }
        Ok(created)
    }

    /// Whether `owner` may start another job now (the running-job caps).
    pub fn has_room(&self, owner: &str) -> bool {
        self.check_caps(owner).is_ok()
    }

    /// Starts a job that was stored by other means (a schedule's window, created with its
    /// cursor's move).
    pub fn run_created(&self, record: JobRecord) {
        self.start(record);
        self.inner.changes.send_modify(|version| *version += 1);
    }

    /// The checks of each job and shard.
    pub fn policy(&self) -> &Arc<dyn JobPolicy> {
        &self.inner.parts.policy
    }

    fn check_caps(&self, owner: &str) -> Result<(), Status> {
        let settings = &self.inner.parts.settings;
        let running = lock(&self.inner.running);
        if running.len() >= settings.max_running {
            return Err(status::job_limit_reached("running-jobs", "in all", settings.max_running));
        }
        let own = running.values().filter(|job| job.owner == owner).count();
        if own >= settings.max_running_per_caller {
            return Err(status::job_limit_reached(
                "running-jobs-per-caller",
                "of one caller",
                settings.max_running_per_caller,
            ));
        }
        Ok(())
    }

    /// A job, if it is kept.
    pub async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.inner.parts.store.get(job_id).await
    }

    /// A job's whole request, lists included.
    pub async fn request(&self, job_id: &str) -> Result<Option<crate::proto::CreateExportJobRequest>, StoreError> {
        self.inner.parts.store.request(job_id).await
    }

    /// A page of jobs (of `owner` only, when given), newest first.
    pub async fn page(
        &self,
        owner: Option<&str>,
        after: Option<&JobCursor>,
        limit: usize,
    ) -> Result<Vec<ExportJob>, StoreError> {
        self.inner.parts.store.page(owner, after, limit).await
    }

    /// A page of a job's shards, from shard `from`.
    pub async fn shards(&self, job_id: &str, from: u32, limit: usize) -> Result<Vec<ShardRecord>, StoreError> {
        self.inner.parts.store.shards(job_id, from, limit).await
    }

    /// Where job `job_id` archived task `task_id`'s file, if it did.
    pub async fn archived_file(
        &self,
        job_id: &str,
        task_id: &str,
    ) -> Result<Option<(Location, ArchivedFile)>, StoreError> {
        let Some(record) = self.get(job_id).await? else { return Ok(None) };
        let uri = record.job.request.map(|request| request.archive_uri).unwrap_or_default();
        let Ok(location) = Location::parse(&uri) else { return Ok(None) };
        let shards = self.shards(job_id, 0, usize::MAX).await?;
        let file = shards.into_iter().find(|shard| shard.task.task_id == task_id).and_then(|shard| shard.task.archive);
        Ok(file.map(|file| (location, file)))
    }

    /// Cancels a job: CANCELLING at once, CANCELLED once its runner has stopped (within
    /// seconds). A job that ended is returned as it ended.
    pub async fn cancel(&self, record: JobRecord) -> Result<ExportJob, StoreError> {
        if record.job.state().is_terminal() {
            return Ok(record.job);
        }
        let mut cancelling = record.job.clone();
        cancelling.set_state(crate::proto::ExportJobState::Cancelling);
        cancelling.update_time = Some(crate::contract::task::timestamp(chrono::Utc::now()));
        let written = self.inner.parts.store.update(cancelling).await?;
        self.inner.changes.send_modify(|version| *version += 1);
        let running = lock(&self.inner.running).get(&written.job_id).map(|job| job.cancel.clone());
        match running {
            Some(cancel) => cancel.cancel(),
            // Not running here (its runner stopped on a store failure): a runner finishes it.
            None => self.start(JobRecord { job: written.clone(), ..record }),
        }
        Ok(written)
    }

    /// Stops every runner of this replica where it is (the drain): nothing is cancelled, and the
    /// next start resumes each job from what it wrote.
    pub fn shutdown(&self) {
        self.inner.stopping.cancel();
    }

    /// Cancelled when the replica stops ([`Jobs::shutdown`]): open job watches end then.
    pub fn stopping(&self) -> CancellationToken {
        self.inner.stopping.clone()
    }

    /// Changes whenever any job is written here: watchers of a job read it again.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Starts `record`'s runner, unless it runs here already or another replica runs it.
    fn start(&self, record: JobRecord) {
        if self.inner.stopping.is_cancelled() || record.job.state().is_terminal() {
            return;
        }
        let job_id = record.job.job_id.clone();
        let cancel = CancellationToken::new();
        {
            let mut running = lock(&self.inner.running);
            if running.contains_key(&job_id) {
                return;
            }
            running.insert(job_id.clone(), Running { owner: record.job.owner.clone(), cancel: cancel.clone() });
        }
        let inner = Arc::clone(&self.inner);
        let span = tracing::info_span!("job", job_id);
        tokio::spawn(tracing::Instrument::instrument(
            async move {
                let claims = Arc::clone(&inner.parts.claims);
                if claims.claim(&job_id).await {
                    tokio::select! {
                        () = runner::run(&inner, record, cancel) => {}
                        () = inner.stopping.cancelled() => {}
                    }
                    claims.release(&job_id).await;
                }
                lock(&inner.running).remove(&job_id);
            },
            span,
        ));
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The status of a job store failure.
pub fn store_failure(error: &StoreError) -> Status {
    tracing::warn!(%error, "the job store failed");
    status::job_store_unavailable()
}
