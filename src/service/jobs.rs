//! The export job RPCs: `CreateExportJob`, `GetExportJob`, `ListExportJobs`,
//! `CancelExportJob`, `WatchExportJob` and `ListExportJobTasks`; and [`JobChecks`], the checks
//! the job runner makes of each shard (the submit RPCs' validation and policies).

use std::time::Duration;

use chrono::Utc;
use prost::Message;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::{
    ExportApi,
    audit::{self, Subject},
    authorization::{NOBODY, Policies, Resource},
    call::Call,
    caller::{Caller, CallerSource},
    deadline,
    page_token::{self, Listing},
    revocation::{self, BoxedStream, Grant, Granted},
    rpc::Rpc,
    validation,
};
use crate::{
    archive::{Location, Refusal},
    contract::{status, task::timestamp},
    jobs::{JobPolicy, Owner, Prepared, ShardBody, ShardRequest, plan, planned_progress, store_failure},
    proto::{
        CancelExportJobRequest, CreateExportJobRequest, ExportFormatVersion, ExportJob, ExportJobEvent, ExportJobState,
        GetExportJobRequest, ListExportJobTasksRequest, ListExportJobTasksResponse, ListExportJobsRequest,
        ListExportJobsResponse, VerifyExportJobRequest, VerifyExportJobResponse, WatchExportJobRequest,
        create_export_job_request::Selector, task_event::EventType,
    },
    store::{
        Fingerprint,
        jobs::{Created, JobCursor, JobRecord},
        registry::Cursor,
    },
};

/// The stream type of `WatchExportJob`.
pub type ExportJobEventStream = BoxedStream<ExportJobEvent>;

/// Page sizes of the job listings: the default, and the most.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1_000;

/// Jobs read at a time, and at most per call, when `ListExportJobs` looks for a schedule's.
const SCHEDULE_SCAN_BATCH: usize = 500;
const SCHEDULE_SCAN_LIMIT: usize = 10_000;

/// The least time between two reads of a watched job: changes are coalesced to a few a second.
const WATCH_COALESCE: Duration = Duration::from_millis(250);

/// The longest a watched job goes unread: a change written by another replica is seen within it.
const WATCH_REREAD: Duration = Duration::from_secs(1);

/// `CreateExportJob`: validated and (for explicit lists) every channel or user checked before
/// anything is stored; the job then runs in the background.
pub(super) async fn create_export_job(
    api: &ExportApi,
    request: Request<CreateExportJobRequest>,
) -> Result<Response<ExportJob>, Status> {
    let rpc = Rpc::CreateExportJob;
    let call = Call::begin(api, &request)?;
    let message = request.get_ref();
    let outcome = async {
        let settings = api.jobs.settings();
        check_list_size(api, message, "")?;
        validation::create_export_job(message).map_err(status::invalid_request)?;
        let archive = archive_location(api, &message.archive_uri)?;
        let job_id = uuid::Uuid::new_v4().to_string();
        let new_job = Resource::Job { id: &job_id, owner: None, archive: archive.as_deref() };
        api.policies.check(&call.caller, rpc, &new_job)?;
        let items = plan::listed(message);
        if let Some(items) = &items {
            check_items(&api.policies, &call.caller, message, items)?;
        }
        let mut fingerprinted = message.clone();
        fingerprinted.request_id.clear();
        let fingerprint = Fingerprint::of_bytes(rpc.name(), &fingerprinted.encode_to_vec()).to_hex();
        let now = Some(timestamp(Utc::now()));
        let progress = planned_progress(message, settings.shard_size);
        let job = ExportJob {
            job_id,
            owner: call.caller.name.clone(),
            request: Some(message.clone()),
            state: ExportJobState::Planning as i32,
            progress,
            create_time: now,
            update_time: now,
            ..ExportJob::default()
        };
        let record = JobRecord { job, owner_source: call.caller.source.name().to_owned(), fingerprint };
        // Shown with the whole request, as given.
        let whole = |mut job: ExportJob| {
            job.request = Some(message.clone());
            job
        };
        let fingerprint = record.fingerprint.clone();
        match api.jobs.create(record).await? {
            Created::New(created) => Ok(whole(created.job)),
            Created::Existing(existing) if existing.fingerprint == fingerprint => Ok(whole(existing.job)),
            Created::Existing(_) => Err(status::request_id_reused()),
        }
    }
    .await;
    let audited = outcome.as_ref().map(|job| job.job_id.as_str());
    audit::record(&call.caller, rpc, &Subject::Job(audited.unwrap_or_default()), audited);
    Ok(Response::new(outcome?))
}

/// RESOURCE_EXHAUSTED `JOB_TOO_LARGE` for an explicit list longer than a job may hold
/// (`prefix` goes before the field's path: `schedule.template.`).
pub(super) fn check_list_size(api: &ExportApi, request: &CreateExportJobRequest, prefix: &str) -> Result<(), Status> {
    let limit = api.jobs.settings().max_channels;
    let listed = match &request.selector {
        Some(Selector::Channels(list)) => Some(("channels.channels", list.channels.len())),
        Some(Selector::Users(list)) => Some(("users.user_ids", list.user_ids.len())),
        Some(Selector::ChannelQuery(_)) | None => None,
    };
    match listed.filter(|(_, count)| *count > limit) {
        Some((field, count)) => Err(status::job_list_too_large(&format!("{prefix}{field}"), count, limit)),
        None => Ok(()),
    }
}

/// Checks `ExportChannels` (or `ExportUsers`) on every item of an explicit list.
pub(super) fn check_items(
    policies: &Policies,
    caller: &Caller,
    request: &CreateExportJobRequest,
    items: &plan::Items,
) -> Result<(), Status> {
    match items {
        plan::Items::Channels(channels) => {
            let version = version_name(request.version);
            for channel in channels {
                let resource = Resource::Channel { kind: &channel.r#type, id: &channel.id, version };
                policies.check(caller, Rpc::ExportChannels, &resource)?;
            }
        }
        plan::Items::Users(users) => {
            for user in users {
                policies.check(caller, Rpc::ExportUsers, &Resource::User(user))?;
            }
        }
    }
    Ok(())
}

fn version_name(version: i32) -> &'static str {
    if version == ExportFormatVersion::V2 as i32 { "v2" } else { "v1" }
}

/// `GetExportJob`: the job with its whole request.
pub(super) async fn get_export_job(
    api: &ExportApi,
    request: Request<GetExportJobRequest>,
) -> Result<Response<ExportJob>, Status> {
    let call = Call::begin(api, &request)?;
    let mut job = api.authorize_job(&call.caller, Rpc::GetExportJob, &request.get_ref().job_id).await?.job;
    if let Some(whole) = api.jobs.request(&job.job_id).await.map_err(|error| store_failure(&error))? {
        job.request = Some(whole);
    }
    Ok(Response::new(job))
}

/// An `archive_uri`, normalised, if the service lets jobs write there (`None` when empty).
pub(super) fn archive_location(api: &ExportApi, archive_uri: &str) -> Result<Option<String>, Status> {
    if archive_uri.is_empty() {
        return Ok(None);
    }
    match api.jobs.archives().check(archive_uri) {
        Ok(location) => Ok(Some(location.to_string())),
        Err(Refusal::NotConfigured) => Err(status::archive_not_configured()),
        Err(Refusal::NotAllowed) => {
            let normalised = Location::parse(archive_uri).map_or_else(|_| archive_uri.to_owned(), |at| at.to_string());
            Err(status::archive_not_allowed(&normalised))
        }
        Err(Refusal::Invalid(why)) => {
            Err(status::invalid_request(vec![tonic_types::FieldViolation::new("archive_uri", why)]))
        }
    }
}

/// A job's archive as the policies see it: its `archive_uri`, normalised.
fn archive_of(job: &ExportJob) -> Option<String> {
    job.request.as_ref().and_then(|request| normalised_archive(&request.archive_uri))
}

/// An `archive_uri` as the policies see it: in its one normal spelling (as given, when it does
/// not parse); `None` when empty.
pub(super) fn normalised_archive(uri: &str) -> Option<String> {
    (!uri.is_empty()).then(|| Location::parse(uri).map_or_else(|_| uri.to_owned(), |location| location.to_string()))
}

/// `VerifyExportJob`: the job's manifest and every object it lists read back from the archive.
pub(super) async fn verify_export_job(
    api: &ExportApi,
    request: Request<VerifyExportJobRequest>,
) -> Result<Response<VerifyExportJobResponse>, Status> {
    let rpc = Rpc::VerifyExportJob;
    let call = Call::begin(api, &request)?;
    let record = api.authorize_job(&call.caller, rpc, &request.get_ref().job_id).await?;
    let job_id = record.job.job_id.as_str();
    let outcome = async {
        let uri = archive_of(&record.job).ok_or_else(|| status::not_archived(job_id, "has no archive_uri"))?;
        let location = Location::parse(&uri).map_err(|why| status::not_archived(job_id, &why))?;
        match api.jobs.archives().verify(&location, job_id).await {
            Ok(Some(verified)) => Ok(verified),
            Ok(None) if record.job.state().is_terminal() => {
                Err(status::not_archived(job_id, "has no manifest in its archive (never written, or deleted)"))
            }
            Ok(None) => Err(status::not_archived(job_id, "has no manifest yet: it is written when the job ends")),
            Err(error) => Err(status::archive_unavailable(&error.to_string())),
        }
    }
    .await;
    audit::record(&call.caller, rpc, &Subject::Job(job_id), outcome.as_ref().map(|_| job_id));
    Ok(Response::new(outcome?))
}

/// `CancelExportJob`.
pub(super) async fn cancel_export_job(
    api: &ExportApi,
    request: Request<CancelExportJobRequest>,
) -> Result<Response<ExportJob>, Status> {
    let call = Call::begin(api, &request)?;
    let record = api.authorize_job(&call.caller, Rpc::CancelExportJob, &request.get_ref().job_id).await?;
    let job = api.jobs.cancel(record).await.map_err(|error| store_failure(&error))?;
    Ok(Response::new(job))
}

/// `ListExportJobs`: the jobs this caller may read (`GetExportJob` on each), newest first.
pub(super) async fn list_export_jobs(
    api: &ExportApi,
    request: Request<ListExportJobsRequest>,
) -> Result<Response<ListExportJobsResponse>, Status> {
    let call = Call::begin(api, &request)?;
    let caller = &call.caller;
    api.policies.check(caller, Rpc::ListExportJobs, &Resource::Service)?;
    let message = request.get_ref();
    let size = page_size(message.page_size)?;
    let nobodys = Resource::Job { id: "", owner: Some(NOBODY), archive: None };
    let own_only = api.policies.is_enforced() && !api.policies.allows(caller, Rpc::GetExportJob, &nobodys);
    let listing = Listing::jobs(own_only);
    let after = read_token(api, &message.page_token, caller, listing)?
        .map(|at| JobCursor { created_micros: at.created_micros, job_id: at.task_id });
    let owner = own_only.then_some(caller.name.as_str());
    let schedule = match message.schedule_id.as_str() {
        "" => None,
        id => Some(validation::schedule_id("schedule_id", id).map_err(status::invalid_request)?),
    };
    // One more than a page: whether another page follows. Jobs are few per caller, so the
    // page is filtered by the policies after the read (a caller who sees few of many may get
    // a short page, with a token to go on). A schedule's jobs are found by reading on, in
    // batches, up to a bound per call.
    let batch = if schedule.is_some() { SCHEDULE_SCAN_BATCH } else { size + 1 };
    let wanted = |job: &ExportJob| schedule.as_ref().is_none_or(|id| job.schedule_id == *id);
    let (mut page, mut position, mut scanned, mut exhausted) = (Vec::new(), after, 0, false);
    while page.len() <= size {
        let read = api.jobs.page(owner, position.as_ref(), batch).await.map_err(|error| store_failure(&error))?;
        exhausted = read.len() < batch;
        scanned += read.len();
        for job in read {
            position = Some(JobCursor::of(&job));
            if wanted(&job) {
                page.push(job);
                if page.len() > size {
                    break;
                }
            }
        }
        if exhausted || scanned >= SCHEDULE_SCAN_LIMIT {
            break;
        }
    }
    let more = page.len() > size;
    page.truncate(size);
    let resume_at = match (more, page.last()) {
        (true, Some(last)) => Some(JobCursor::of(last)),
        // The scan's bound was reached: go on from where it stopped.
        _ if !exhausted && schedule.is_some() => position,
        _ => None,
    };
    let next_page_token = match resume_at {
        Some(at) => {
            let cursor = Cursor { created_micros: at.created_micros, task_id: at.job_id };
            page_token::write(&cursor, caller, listing, &api.page_token_key)
        }
        None => String::new(),
    };
    let jobs = page
        .into_iter()
        .filter(|job| {
            let archive = archive_of(job);
            api.policies.allows(
                caller,
                Rpc::GetExportJob,
                &Resource::Job { id: &job.job_id, owner: Some(&job.owner), archive: archive.as_deref() },
            )
        })
        .collect();
    Ok(Response::new(ListExportJobsResponse { jobs, next_page_token }))
}

/// `ListExportJobTasks`: the job's shards in order.
pub(super) async fn list_export_job_tasks(
    api: &ExportApi,
    request: Request<ListExportJobTasksRequest>,
) -> Result<Response<ListExportJobTasksResponse>, Status> {
    let call = Call::begin(api, &request)?;
    let message = request.get_ref();
    let record = api.authorize_job(&call.caller, Rpc::ListExportJobTasks, &message.job_id).await?;
    let size = page_size(message.page_size)?;
    let job_id = record.job.job_id;
    let from = match read_token(api, &message.page_token, &call.caller, Listing::JobTasks)? {
        Some(at) if at.task_id == job_id => u32::try_from(at.created_micros).unwrap_or(u32::MAX),
        Some(_) => return Err(status::invalid_page("page_token", "continues another job's listing")),
        None => 0,
    };
    let mut shards = api.jobs.shards(&job_id, from, size + 1).await.map_err(|error| store_failure(&error))?;
    let next_page_token = match shards.get(size) {
        Some(next) => {
            let cursor = Cursor { created_micros: i64::from(next.task.shard), task_id: job_id.clone() };
            page_token::write(&cursor, &call.caller, Listing::JobTasks, &api.page_token_key)
        }
        None => String::new(),
    };
    shards.truncate(size);
    let tasks = shards.into_iter().map(|shard| shard.task).collect();
    Ok(Response::new(ListExportJobTasksResponse { tasks, next_page_token }))
}

/// `WatchExportJob`: a snapshot, then the job's changes (coalesced), heartbeats while nothing
/// changes, and its terminal state last.
pub(super) async fn watch_export_job(
    api: &ExportApi,
    request: Request<WatchExportJobRequest>,
) -> Result<Response<ExportJobEventStream>, Status> {
    let call = Call::begin(api, &request)?;
    let deadline = deadline::from_metadata(request.metadata());
    let record = api.authorize_job(&call.caller, Rpc::WatchExportJob, &request.get_ref().job_id).await?;
    let grant = Grant {
        caller: call.caller.clone(),
        action: Rpc::WatchExportJob,
        on: Granted::Job {
            job_id: record.job.job_id.clone(),
            owner: record.job.owner.clone(),
            archive: archive_of(&record.job).unwrap_or_default(),
        },
    };
    let settings = api.hub.settings();
    let watch = JobWatch {
        changes: api.jobs.changes(),
        stopping: api.jobs.stopping(),
        jobs: api.jobs.clone(),
        sequence: 0,
        last: record.job,
        snapshot_sent: false,
        ended: false,
        quiet_since: Instant::now(),
        heartbeat: settings.heartbeat_interval,
        end_of_life: Instant::now() + settings.max_stream_lifetime,
        deadline,
    };
    let events = futures::stream::unfold(watch, |mut watch| async move {
        let event = watch.next_event().await?;
        Some((event, watch))
    });
    Ok(Response::new(revocation::end_when_revoked(Box::pin(events), &api.policies, grant)))
}

/// One `WatchExportJob` stream: what it last sent, and when it must end.
struct JobWatch {
    jobs: crate::jobs::Jobs,
    changes: tokio::sync::watch::Receiver<u64>,
    /// The drain: the stream ends as interrupted, and the client watches again elsewhere.
    stopping: tokio_util::sync::CancellationToken,
    sequence: u64,
    last: ExportJob,
    snapshot_sent: bool,
    ended: bool,
    quiet_since: Instant,
    heartbeat: Duration,
    end_of_life: Instant,
    deadline: Option<Instant>,
}

impl JobWatch {
    /// The next event; `None` once the terminal state (or an error) was sent.
    async fn next_event(&mut self) -> Option<Result<ExportJobEvent, Status>> {
        if self.ended {
            return None;
        }
        if !self.snapshot_sent {
            self.snapshot_sent = true;
            return Some(Ok(self.event(EventType::Snapshot)));
        }
        if self.last.state().is_terminal() {
            return None;
        }
        loop {
            let now = Instant::now();
            if self.deadline.is_some_and(|deadline| now >= deadline) {
                return self.end(Status::deadline_exceeded("the caller's deadline passed"));
            }
            if now >= self.end_of_life {
                return self.end(status::watch_interrupted("the stream reached its maximum lifetime"));
            }
            let heartbeat_at = self.quiet_since + self.heartbeat;
            tokio::select! {
                _ = self.changes.changed() => {}
                () = tokio::time::sleep(WATCH_REREAD) => {}
                () = tokio::time::sleep_until(heartbeat_at) => {
                    self.quiet_since = Instant::now();
                    return Some(Ok(self.event(EventType::Heartbeat)));
                }
                () = tokio::time::sleep_until(self.end_of_life) => continue,
                () = self.stopping.cancelled() => {
                    return self.end(status::watch_interrupted("the server is shutting down"));
                }
            }
            let read = match self.jobs.get(&self.last.job_id).await {
                Ok(Some(record)) => record.job,
                Ok(None) => return self.end(status::job_not_found(&self.last.job_id)),
                Err(error) => return self.end(store_failure(&error)),
            };
            if !read.same_progress(&self.last) {
                self.last = read;
                self.quiet_since = Instant::now();
                // Coalesced: the next read is at least this far away.
                tokio::time::sleep(WATCH_COALESCE).await;
                return Some(Ok(self.event(EventType::Changed)));
            }
        }
    }

    fn event(&mut self, kind: EventType) -> ExportJobEvent {
        self.sequence += 1;
        ExportJobEvent { sequence: self.sequence, r#type: kind as i32, job: Some(self.last.clone()) }
    }

    fn end(&mut self, status: Status) -> Option<Result<ExportJobEvent, Status>> {
        self.ended = true;
        Some(Err(status))
    }
}

/// A page size: 0 is the default; negative is refused.
pub(super) fn page_size(requested: i32) -> Result<usize, Status> {
    match requested {
        size if size < 0 => Err(status::invalid_page("page_size", "must not be negative")),
        0 => Ok(DEFAULT_PAGE_SIZE),
        size => Ok(usize::try_from(size).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE)),
    }
}

/// Where a page token says a listing stopped; INVALID_ARGUMENT for a token not given to this
/// caller for this listing.
pub(super) fn read_token(
    api: &ExportApi,
    token: &str,
    caller: &Caller,
    listing: Listing,
) -> Result<Option<Cursor>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    page_token::read(token, caller, listing, &api.page_token_key)
        .map(Some)
        .ok_or_else(|| status::invalid_page("page_token", "is not a token that this listing gave this caller"))
}

impl ExportApi {
    /// The job `job_id` if the policies let this caller do `rpc` on it. An unknown id is
    /// NOT_FOUND to a caller who may act on jobs it does not own, PERMISSION_DENIED to others
    /// (so that ids cannot be probed).
    async fn authorize_job(&self, caller: &Caller, rpc: Rpc, job_id: &str) -> Result<JobRecord, Status> {
        let job_id = validation::job_id(job_id).map_err(status::invalid_request)?;
        let record = self.jobs.get(&job_id).await.map_err(|error| store_failure(&error))?;
        let owner = record.as_ref().map(|record| record.job.owner.as_str());
        let archive = record.as_ref().and_then(|record| archive_of(&record.job));
        self.policies.check(caller, rpc, &Resource::Job { id: &job_id, owner, archive: archive.as_deref() })?;
        record.ok_or_else(|| status::job_not_found(&job_id))
    }
}

/// The checks of each shard of a job: the submit RPCs' validation, and `ExportChannels` (or
/// `ExportUsers`) on each channel (or user) for the job's owner.
#[derive(Clone, Debug)]
pub struct JobChecks {
    policies: Policies,
}

impl JobChecks {
    /// Checks against `policies`.
    pub fn new(policies: Policies) -> Self {
        Self { policies }
    }
}

impl JobPolicy for JobChecks {
    fn prepare(&self, owner: &Owner, shard: &ShardRequest) -> Result<Prepared, Status> {
        let caller = Caller { name: owner.name.clone(), source: CallerSource::from_name(&owner.source) };
        match shard {
            ShardRequest::Channels(request) => {
                let body = validation::export_channels(request).map_err(status::invalid_request)?;
                let version = version_name(request.version);
                for channel in &request.channels {
                    let resource = Resource::Channel { kind: &channel.r#type, id: &channel.id, version };
                    self.policies.check(&caller, Rpc::ExportChannels, &resource)?;
                }
                let fingerprint = Fingerprint::of(Rpc::ExportChannels.name(), &body);
                Ok(Prepared { body: ShardBody::Channels(body), fingerprint, rpc: Rpc::ExportChannels.name() })
            }
            ShardRequest::Users(request) => {
                let body = validation::export_users(request).map_err(status::invalid_request)?;
                for user in &request.user_ids {
                    self.policies.check(&caller, Rpc::ExportUsers, &Resource::User(user))?;
                }
                let fingerprint = Fingerprint::of(Rpc::ExportUsers.name(), &body);
                Ok(Prepared { body: ShardBody::Users(body), fingerprint, rpc: Rpc::ExportUsers.name() })
            }
        }
    }

    fn authorize_start(&self, owner: &Owner, job: &ExportJob) -> Result<(), Status> {
        let caller = Caller { name: owner.name.clone(), source: CallerSource::from_name(&owner.source) };
        let archive = archive_of(job);
        let resource = Resource::Job { id: &job.job_id, owner: None, archive: archive.as_deref() };
        self.policies.check(&caller, Rpc::CreateExportJob, &resource)?;
        let request = job.request.clone().unwrap_or_default();
        match plan::listed(&request) {
            Some(items) => check_items(&self.policies, &caller, &request, &items),
            None => Ok(()),
        }
    }
}
