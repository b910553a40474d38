//! One job's runner: plan, submit, watch, retry, finish. Every transition is written to the
//! job store before the runner acts on it, so that after a restart the runner resumes from
//! what is written: a shard with a task is watched again, a shard without one is submitted
//! (under the same idempotency key, so a crash between the POST and its record costs at most
//! one duplicate task per crash, never a lost shard).
//!
//! A job with an archive copies each shard's file as soon as its task completes (a restart
//! copies again any completed shard whose copy was not written), and writes its manifest last:
//! it is SUCCEEDED only once the manifest is in the archive.

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use chrono::Utc;
use futures::FutureExt;
use tokio::{sync::mpsc, task::AbortHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status};

use super::{Inner, Owner, ShardBody, ShardRequest, plan};
use crate::{
    archive::{Archives, Copied, CopyError, Location, Manifest, Refusal, manifest::ShardFacts},
    contract::{job::status_message, status, task::timestamp},
    proto::{
        CreateExportJobRequest, ExportFormatVersion, ExportJob, ExportJobProgress, ExportJobState, Task, TaskRecord,
        TaskState, create_export_job_request::Selector, task_record,
    },
    store::{
        StoreError,
        jobs::{JobRecord, ShardRecord},
    },
    task_watch::{budget::Lane, view::Observation},
    upstream::{ErrorKind, UpstreamError},
};

/// How often the runner looks for tasks past the job task deadline.
const DEADLINE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// The wait before a submit that failed for a reason that may pass (Stream down, the store
/// unavailable) is tried again; the attempt is not counted.
const TRANSIENT_RETRY: Duration = Duration::from_secs(5);

/// The wait before a shard whose watch ended without an answer (upstream failing past the
/// failure budget) is watched again.
const REWATCH_AFTER: Duration = Duration::from_secs(5);

/// What a shard's watcher reports.
#[derive(Debug)]
enum Watched {
    /// The task's state changed.
    Changed(Box<Task>),
    /// Stream does not know the task (any more).
    NotFound(Status),
    /// The task's file was copied into the archive, or could not be.
    Archived(Result<Copied, CopyError>),
}

/// How a run ended, when it did.
struct Ended;

/// Runs `record`'s job until it ends, its cancel switch is thrown, or its store fails.
pub(super) async fn run(inner: &Inner, record: JobRecord, cancel: CancellationToken) {
    let owner = Owner { name: record.job.owner.clone(), source: record.owner_source.clone() };
    let request = record.job.request.clone().unwrap_or_default();
    let mut run = Run {
        inner,
        owner,
        request,
        job: record.job,
        shards: Vec::new(),
        pending: BTreeSet::new(),
        watchers: HashMap::new(),
        archive: None,
        copies: HashMap::new(),
        cancel,
    };
    let (events, mut received) = mpsc::channel(256);
    match run.drive(&events, &mut received).await {
        Ok(Ended) => {}
        Err(error) => tracing::warn!(%error, "the job stopped: its store failed; it resumes at the next start"),
    }
}

struct Run<'a> {
    inner: &'a Inner,
    owner: Owner,
    /// The request's summary (its options; the lists are read once, to plan).
    request: CreateExportJobRequest,
    job: ExportJob,
    /// Every shard, by number (the shard's number is its index).
    shards: Vec<ShardRecord>,
    /// Shards to submit: (not before, in µs since the epoch; shard).
    pending: BTreeSet<(i64, u32)>,
    /// The watcher of each shard's current task.
    watchers: HashMap<u32, AbortHandle>,
    /// Where the job copies its files, when it archives.
    archive: Option<Location>,
    /// The copy of each shard's file under way.
    copies: HashMap<u32, AbortHandle>,
    cancel: CancellationToken,
}

/// However a run ends (also when its future is dropped at a stop), its watchers end with it.
impl Drop for Run<'_> {
    fn drop(&mut self) {
        for task in self.watchers.values().chain(self.copies.values()) {
            task.abort();
        }
    }
}

type Events = mpsc::Sender<(u32, String, Watched)>;

impl Run<'_> {
    async fn drive(
        &mut self,
        events: &Events,
        received: &mut mpsc::Receiver<(u32, String, Watched)>,
    ) -> Result<Ended, StoreError> {
        if self.job.state() == ExportJobState::Planning {
            match self.plan().await {
                Ok(shards) => {
                    let mut job = self.job.clone();
                    job.set_state(ExportJobState::Running);
                    job.progress = Some(progress(&shards, self.inner.parts.settings.task_attempts));
                    job.update_time = Some(timestamp(Utc::now()));
                    // Shared, not copied, by each try of the write: a plan may be 100,000 channels.
                    let shards = Arc::new(shards);
                    self.job = self.write(|store, job| store.plan(job, Arc::clone(&shards)).boxed(), job).await?;
                    self.shards = Arc::try_unwrap(shards).unwrap_or_else(|shared| shared.as_ref().clone());
                }
                Err(error) => return self.finish(ExportJobState::Failed, Some(error)).await,
            }
        } else {
            self.shards = self.inner.parts.store.shards(&self.job.job_id, 0, usize::MAX).await?;
        }
        if self.stopping() {
            return self.finish(ExportJobState::Cancelled, None).await;
        }
        let archive_uri = &self.request.archive_uri;
        if !archive_uri.is_empty() {
            match self.inner.parts.archives.check(archive_uri) {
                Ok(location) => self.archive = Some(location),
                Err(refusal) => {
                    let refused = match refusal {
                        Refusal::NotConfigured => status::archive_not_configured(),
                        Refusal::Invalid(_) | Refusal::NotAllowed => status::archive_not_allowed(archive_uri),
                    };
                    return self.finish(ExportJobState::Failed, Some(refused)).await;
                }
            }
        }
        let now = now_micros();
        for index in 0..self.shards.len() {
            let shard = &self.shards[index];
            let number = shard.task.shard;
            match shard.task.state() {
                TaskState::Completed if shard.task.archive.is_none() => self.copy(number, events),
                TaskState::Completed => {}
                _ if shard.task.task_id.is_empty() || shard.retry_at_micros > 0 => {
                    self.pending.insert((shard.retry_at_micros.max(now), number));
                }
                _ => self.watch(number, events),
            }
        }
        let mut deadline_check = tokio::time::interval(DEADLINE_CHECK_EVERY);
        let renew_every = self.inner.parts.claims.renew_every();
        let mut renewals = tokio::time::interval(renew_every.unwrap_or(Duration::from_secs(3600)));
        loop {
            if self.shards.iter().all(|shard| shard.is_done(self.archive.is_some())) {
                return self.finish(ExportJobState::Succeeded, None).await;
            }
            let next = self.pending.first().copied();
            let due = next.map_or_else(|| Instant::now() + Duration::from_secs(3600), |(at, _)| instant_of(at));
            tokio::select! {
                () = self.cancel.cancelled() => return self.finish(ExportJobState::Cancelled, None).await,
                Some((number, task_id, watched)) = received.recv() => {
                    if let Some(ended) = self.on_watched(number, &task_id, watched, events).await? {
                        return Ok(ended);
                    }
                }
                () = tokio::time::sleep_until(due), if next.is_some() => {
                    if let Some((at, number)) = next {
                        self.pending.remove(&(at, number));
                        if let Some(ended) = self.submit(number, events).await? {
                            return Ok(ended);
                        }
                    }
                }
                _ = deadline_check.tick() => self.resubmit_overdue(),
                _ = renewals.tick(), if renew_every.is_some() => {
                    if !self.inner.parts.claims.claim(&self.job.job_id).await {
                        tracing::warn!("the job's lease was lost: another replica runs it now");
                        return Ok(Ended);
                    }
                    // A cancel written by another replica.
                    let stored = self.inner.parts.store.get(&self.job.job_id).await?;
                    if stored.is_some_and(|stored| stored.job.state() == ExportJobState::Cancelling) {
                        self.job.set_state(ExportJobState::Cancelling);
                    }
                }
            }
            if self.stopping() {
                return self.finish(ExportJobState::Cancelled, None).await;
            }
        }
    }

    /// Whether the job is being cancelled (here, or by a write that another call made).
    fn stopping(&self) -> bool {
        self.cancel.is_cancelled() || self.job.state() == ExportJobState::Cancelling
    }

    /// Resolves the selector (of the whole request, lists included) and checks every shard;
    /// the shards, ready to store.
    async fn plan(&self) -> Result<Vec<ShardRecord>, Status> {
        let settings = &self.inner.parts.settings;
        let whole =
            self.inner.parts.store.request(&self.job.job_id).await.map_err(|error| super::store_failure(&error))?;
        let whole = whole.unwrap_or_else(|| self.request.clone());
        let items = plan::resolve(&whole, &self.inner.parts.client, settings).await?;
        let shards = items.shards(settings.shard_size);
        for shard in &shards {
            self.inner.parts.policy.prepare(&self.owner, &ShardRequest::of(&self.request, &shard.task))?;
        }
        Ok(shards)
    }

    /// Submits shard `number`'s next attempt (paced), records its task and watches it.
    async fn submit(&mut self, number: u32, events: &Events) -> Result<Option<Ended>, StoreError> {
        let Some(shard) = self.shards.get(number as usize).cloned() else { return Ok(None) };
        let request = ShardRequest::of(&self.request, &shard.task);
        let prepared = match self.inner.parts.policy.prepare(&self.owner, &request) {
            Ok(prepared) => prepared,
            Err(refused) => return self.finish(ExportJobState::Failed, Some(refused)).await.map(Some),
        };
        let attempt = shard.task.attempts + 1;
        let key = format!("job:{}:shard:{number}:attempt:{attempt}", self.job.job_id);
        let rpc = prepared.rpc;
        let paced = async {
            self.inner.pacer.acquire(Lane::Periodic).await;
            // Stream's window running low (another client of the app spends it too): spread
            // what is left of it.
            tokio::time::sleep(self.inner.pacer.rate_limit_spacing()).await;
        };
        tokio::select! {
            () = paced => {}
            () = self.cancel.cancelled() => return Ok(None),
        }
        let record = self.task_record(rpc, &request);
        let post = self.post(prepared.body);
        let submitted =
            self.inner.parts.submits.get_or_submit_recording(key, prepared.fingerprint, post, record.clone()).await;
        let (task_id, recorded) = match submitted {
            Ok((submitted, recorded)) => (submitted.task_id, recorded),
            Err(StoreError::Submit(error)) => return self.submit_failed(number, &error).await,
            Err(error) => {
                tracing::warn!(%error, shard = number, "a shard's submit could not be recorded; it is tried again");
                self.pending.insert((now_micros() + micros_of(TRANSIENT_RETRY), number));
                return Ok(None);
            }
        };
        let mut shard = shard;
        if !shard.task.task_id.is_empty() && shard.task.task_id != task_id {
            let earlier = std::mem::take(&mut shard.task.task_id);
            shard.task.earlier_task_ids.push(earlier);
        }
        shard.task.task_id = task_id.clone();
        shard.task.attempts = attempt;
        shard.task.set_state(TaskState::Waiting);
        shard.submitted_micros = now_micros();
        shard.retry_at_micros = 0;
        self.save_shard(shard).await?;
        if !recorded {
            self.record_task(TaskRecord { task_id: task_id.clone(), ..record }).await;
        }
        self.watch(number, events);
        Ok(None)
    }

    /// The POST of one shard, bounded by the upstream timeout alone (see `SubmitStore`), its
    /// rate-limit window told to the pacer.
    fn post(&self, body: ShardBody) -> futures::future::BoxFuture<'static, Result<String, UpstreamError>> {
        let client = self.inner.parts.client.clone();
        let pacer = Arc::clone(&self.inner.pacer);
        async move {
            let answer = match &body {
                ShardBody::Channels(body) => client.export_channels(body, None).await,
                ShardBody::Users(body) => client.export_users(body, None).await,
            }?;
            pacer.record(answer.rate_limit);
            Ok(answer.body.task_id)
        }
        .boxed()
    }

    /// A submit that Stream refused or that failed on the way: a 429 waits for the window, a
    /// failure that may pass is tried again later, and any other fails the job.
    async fn submit_failed(&mut self, number: u32, error: &UpstreamError) -> Result<Option<Ended>, StoreError> {
        let wait = match error.kind() {
            ErrorKind::RateLimited { retry_after } => {
                let wait = retry_after.unwrap_or(Duration::from_secs(1));
                self.inner.pacer.rate_limited(wait);
                wait
            }
            kind if kind.is_temporary() => TRANSIENT_RETRY,
            _ => return self.finish(ExportJobState::Failed, Some(error.to_status())).await.map(Some),
        };
        tracing::info!(%error, shard = number, "a shard's submit is tried again later");
        self.pending.insert((now_micros() + micros_of(wait), number));
        Ok(None)
    }

    /// The task registry's record of a shard's task, as its owner's: `GetTask`, `WatchTask`,
    /// `ReadExport` and `ListTasks` treat it as any other (its task id filled in once known).
    fn task_record(&self, rpc: &str, request: &ShardRequest) -> TaskRecord {
        let submit = match request {
            ShardRequest::Channels(request) => task_record::Submit::ExportChannels(request.clone()),
            ShardRequest::Users(request) => task_record::Submit::ExportUsers(request.clone()),
        };
        TaskRecord {
            owner: self.owner.name.clone(),
            rpc: rpc.to_owned(),
            submit: Some(submit),
            create_time: Some(timestamp(Utc::now())),
            job_id: self.job.job_id.clone(),
            ..TaskRecord::default()
        }
    }

    /// Records a shard's task in the task registry when the submit store did not record it with
    /// the submit. A failure is logged (the registry's own pending writes keep trying).
    async fn record_task(&self, record: TaskRecord) {
        let task_id = record.task_id.clone();
        if let Err(error) = self.inner.parts.registry.record(record).await {
            tracing::warn!(%error, task_id, "a job's task could not be recorded in the task registry");
        }
    }

    /// Watches shard `number`'s current task through the hub, reporting each change.
    fn watch(&mut self, number: u32, events: &Events) {
        let Some(shard) = self.shards.get(number as usize) else { return };
        let task_id = shard.task.task_id.clone();
        let hub = self.inner.parts.hub.clone();
        let caller = format!("job {}", self.job.job_id);
        let events = events.clone();
        let watcher = tokio::spawn(async move {
            let mut reported = None;
            loop {
                // The hub's stream limit, or a watch that ended without an answer (upstream
                // failing past the failure budget, the poller stopped): watched again later.
                if let Ok(mut watcher) = hub.watch(&task_id, &caller) {
                    loop {
                        let observation = watcher.view.borrow_and_update().observation.clone();
                        match observation {
                            Observation::Task(task) => {
                                let state = task.state();
                                if reported != Some(state) {
                                    reported = Some(state);
                                    let _ = events.send((number, task_id.clone(), Watched::Changed(task))).await;
                                    if state.is_terminal() {
                                        return;
                                    }
                                }
                            }
                            Observation::Ended(ended) if ended.code() == Code::NotFound => {
                                let _ = events.send((number, task_id.clone(), Watched::NotFound(ended))).await;
                                return;
                            }
                            Observation::Ended(_) => break,
                            Observation::Pending => {}
                        }
                        if watcher.view.changed().await.is_err() {
                            break;
                        }
                    }
                }
                tokio::time::sleep(REWATCH_AFTER).await;
            }
        });
        if let Some(earlier) = self.watchers.insert(number, watcher.abort_handle()) {
            earlier.abort();
        }
    }

    /// A shard's watcher reported.
    async fn on_watched(
        &mut self,
        number: u32,
        task_id: &str,
        watched: Watched,
        events: &Events,
    ) -> Result<Option<Ended>, StoreError> {
        let Some(shard) = self.shards.get(number as usize).cloned() else { return Ok(None) };
        if shard.task.task_id != task_id {
            return Ok(None); // An earlier attempt's task.
        }
        let task = match watched {
            Watched::Archived(copied) => return self.on_copied(shard, copied).await,
            Watched::Changed(task) => task,
            Watched::NotFound(ended) => Box::new(Task {
                task_id: task_id.to_owned(),
                state: TaskState::Failed as i32,
                error: Some(crate::proto::TaskError {
                    r#type: "not_found".into(),
                    description: ended.message().to_owned(),
                }),
                ..Task::default()
            }),
        };
        let mut shard = shard;
        shard.task.set_state(task.state());
        match task.state() {
            TaskState::Failed | TaskState::Canceled => {
                let why = task.error.as_ref().map_or_else(
                    || "the task failed".to_owned(),
                    |error| format!("{}: {}", error.r#type, error.description),
                );
                shard.last_error = why.clone();
                if shard.task.attempts >= self.inner.parts.settings.task_attempts {
                    self.save_shard(shard).await?;
                    let failed =
                        status::job_task_failed(number, task_id, self.shards[number as usize].task.attempts, &why);
                    return self.finish(ExportJobState::Failed, Some(failed)).await.map(Some);
                }
                let delay = self.retry_delay(shard.task.attempts);
                shard.retry_at_micros = now_micros() + micros_of(delay);
                self.pending.insert((shard.retry_at_micros, number));
                self.save_shard(shard).await?;
            }
            TaskState::Completed => {
                self.save_shard(shard).await?;
                self.copy(number, events);
            }
            _ => self.save_shard(shard).await?,
        }
        Ok(None)
    }

    /// Copies shard `number`'s file into the archive (when the job archives), reporting how
    /// the copy went.
    fn copy(&mut self, number: u32, events: &Events) {
        let (Some(location), Some(shard)) = (self.archive.clone(), self.shards.get(number as usize)) else { return };
        let task_id = shard.task.task_id.clone();
        let key = self.file_key(&location, number, &task_id);
        let (archives, verify, events) = (Arc::clone(&self.inner.parts.archives), self.request.verify, events.clone());
        let copy = tokio::spawn(async move {
            let copied = archives.copy(&location, &key, &task_id, verify).await;
            let _ = events.send((number, task_id, Watched::Archived(copied))).await;
        });
        if let Some(earlier) = self.copies.insert(number, copy.abort_handle()) {
            earlier.abort();
        }
    }

    /// The key of shard `number`'s file (task `task_id`) under `location`.
    fn file_key(&self, location: &Location, number: u32, task_id: &str) -> String {
        let lines = self.request.version() == ExportFormatVersion::V2
            || matches!(self.request.selector, Some(Selector::Users(_)));
        Archives::file_key(location, &self.job.job_id, number, task_id, lines)
    }

    /// A shard's copy ended: its archive is written, or the job fails.
    async fn on_copied(
        &mut self,
        mut shard: ShardRecord,
        copied: Result<Copied, CopyError>,
    ) -> Result<Option<Ended>, StoreError> {
        let number = shard.task.shard;
        self.copies.remove(&number);
        match copied {
            Ok(copied) => {
                tracing::info!(
                    shard = number,
                    key = copied.file.key,
                    bytes = copied.file.bytes,
                    "a shard's file is archived"
                );
                shard.task_created_micros = copied.task_created.map_or(0, |at| at.timestamp_micros());
                shard.task.archive = Some(copied.file);
                self.save_shard(shard).await?;
                Ok(None)
            }
            Err(error) => {
                let key = self.archive.as_ref().map_or_else(String::new, |location| {
                    location.uri_of(&self.file_key(location, number, &shard.task.task_id))
                });
                let failed = status::archive_failed(Some(number), &key, &error.to_string());
                self.finish(ExportJobState::Failed, Some(failed)).await.map(Some)
            }
        }
    }

    /// Writes the archive's manifest of the job as it ends in `state`; its URI.
    async fn write_manifest(&self, location: &Location, state: ExportJobState) -> Result<String, CopyError> {
        let attempts = self.inner.parts.settings.task_attempts;
        let facts: Vec<ShardFacts<'_>> = self
            .shards
            .iter()
            .map(|shard| ShardFacts {
                task: &shard.task,
                task_created: (shard.task_created_micros > 0)
                    .then(|| chrono::DateTime::from_timestamp_micros(shard.task_created_micros))
                    .flatten(),
                failed: (state == ExportJobState::Failed
                    && matches!(shard.task.state(), TaskState::Failed | TaskState::Canceled)
                    && shard.task.attempts >= attempts)
                    .then_some(shard.last_error.as_str()),
            })
            .collect();
        let manifest = Manifest::new(&self.job, &self.request, &facts, Utc::now());
        self.inner.parts.archives.write_manifest(location, &self.job.job_id, &manifest).await?;
        Ok(Archives::manifest_uri(location, &self.job.job_id))
    }

    /// The wait before attempt `attempts + 1` of a failed shard: exponential from the retry delay.
    fn retry_delay(&self, attempts: u32) -> Duration {
        let base = self.inner.parts.settings.retry_delay;
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(base)
            .with_max_delay(base.saturating_mul(64))
            .with_max_times(usize::MAX)
            .with_jitter()
            .build();
        delays.nth(attempts.saturating_sub(1) as usize).unwrap_or(base)
    }

    /// Queues a new attempt of every shard whose task has run past the job task deadline.
    fn resubmit_overdue(&mut self) {
        let settings = &self.inner.parts.settings;
        let cutoff = now_micros() - micros_of(settings.task_deadline);
        for shard in &self.shards {
            let overdue = !shard.task.task_id.is_empty()
                && !shard.task.state().is_terminal()
                && shard.retry_at_micros == 0
                && shard.submitted_micros > 0
                && shard.submitted_micros < cutoff
                && shard.task.attempts < settings.task_attempts;
            let queued = self.pending.iter().any(|(_, number)| *number == shard.task.shard);
            if overdue && !queued {
                tracing::info!(
                    shard = shard.task.shard,
                    task_id = shard.task.task_id,
                    "a task is past the job task deadline; it is submitted again"
                );
                self.pending.insert((now_micros(), shard.task.shard));
            }
        }
    }

    /// Writes a shard and the job's progress.
    async fn save_shard(&mut self, shard: ShardRecord) -> Result<(), StoreError> {
        let number = shard.task.shard as usize;
        if let Some(slot) = self.shards.get_mut(number) {
            *slot = shard.clone();
        }
        let mut job = self.job.clone();
        job.progress = Some(progress(&self.shards, self.inner.parts.settings.task_attempts));
        job.update_time = Some(timestamp(Utc::now()));
        self.job = self.write(move |store, job| store.update_shard(job, shard.clone()).boxed(), job).await?;
        Ok(())
    }

    /// Ends the job in `state` (with `error` when FAILED). An archived job that succeeded or
    /// failed writes its manifest first; one that cannot is FAILED.
    async fn finish(&mut self, mut state: ExportJobState, mut error: Option<Status>) -> Result<Ended, StoreError> {
        let ending = matches!(state, ExportJobState::Succeeded | ExportJobState::Failed);
        if let Some(location) = self.archive.clone().filter(|_| ending && !self.shards.is_empty()) {
            match self.write_manifest(&location, state).await {
                Ok(uri) => self.job.manifest_uri = uri,
                Err(failed) if state == ExportJobState::Succeeded => {
                    let key = Archives::manifest_uri(&location, &self.job.job_id);
                    state = ExportJobState::Failed;
                    error = Some(status::archive_failed(None, &key, &failed.to_string()));
                }
                Err(failed) => tracing::warn!(error = %failed, "a failed job's manifest could not be written"),
            }
        }
        let mut job = self.job.clone();
        job.set_state(state);
        job.error = error.as_ref().map(status_message);
        let now = Some(timestamp(Utc::now()));
        job.update_time = now;
        job.end_time = now;
        if !self.shards.is_empty() {
            job.progress = Some(progress(&self.shards, self.inner.parts.settings.task_attempts));
        }
        self.job = self.write(|store, job| store.update(job).boxed(), job).await?;
        tracing::info!(state = ?self.job.state(), "the job ended");
        Ok(Ended)
    }

    /// Writes `job` with `write`, retrying a store that fails for a while; tells watchers.
    async fn write(
        &self,
        write: impl Fn(
            &dyn crate::store::jobs::JobStore,
            ExportJob,
        ) -> futures::future::BoxFuture<'_, Result<ExportJob, StoreError>>,
        job: ExportJob,
    ) -> Result<ExportJob, StoreError> {
        let store = self.inner.parts.store.as_ref();
        let written = (|| write(store, job.clone()))
            .retry(ExponentialBuilder::default().with_min_delay(Duration::from_millis(100)).with_max_times(8))
            .await?;
        self.inner.changes.send_modify(|version| *version += 1);
        Ok(written)
    }
}

/// The progress of a job whose shards are `shards`.
fn progress(shards: &[ShardRecord], attempts: u32) -> ExportJobProgress {
    let items: usize = shards.iter().map(|shard| shard.task.channels.len() + shard.task.user_ids.len()).sum();
    let users = shards.first().is_some_and(|shard| !shard.task.user_ids.is_empty());
    let count = |keep: &dyn Fn(&ShardRecord) -> bool| shards.iter().filter(|shard| keep(shard)).count() as u64;
    ExportJobProgress {
        channels_total: if users { 0 } else { items as u64 },
        users_total: if users { items as u64 } else { 0 },
        tasks_total: shards.len() as u64,
        tasks_submitted: count(&|shard| shard.task.attempts > 0),
        tasks_completed: count(&|shard| shard.task.state() == TaskState::Completed),
        tasks_failed: count(&|shard| {
            matches!(shard.task.state(), TaskState::Failed | TaskState::Canceled) && shard.task.attempts >= attempts
        }),
        tasks_archived: count(&|shard| shard.task.archive.is_some()),
        bytes_archived: shards.iter().filter_map(|shard| shard.task.archive.as_ref()).map(|file| file.bytes).sum(),
    }
}

impl ShardRecord {
    /// Whether nothing is left to do for the shard: its task completed (and, when the job
    /// archives, its file is copied).
    fn is_done(&self, archives: bool) -> bool {
        self.task.state() == TaskState::Completed && (!archives || self.task.archive.is_some())
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

fn micros_of(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// The monotonic instant of a wall-clock time in µs (now, when it has passed).
fn instant_of(at_micros: i64) -> Instant {
    let wait = at_micros.saturating_sub(now_micros()).max(0);
    Instant::now() + Duration::from_micros(u64::try_from(wait).unwrap_or(0))
}
