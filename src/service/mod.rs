//! The gRPC handlers of `streamexport.v1.ExportService`.
//!
//! Each handler is admitted (load shedding, drain), validates (see [`validation`]), makes its
//! upstream call through the [`StreamClient`] (submits through the idempotency store), and
//! converts the answer (see [`convert`]); every failure becomes a status in [`errors`]. Submits
//! and exports are written to the [`audit`] log with the [`caller`]. Every call is checked
//! against the [`authorization`] policies before it goes upstream; submits are recorded in the
//! task registry, which answers `ListTasks` and names a task's owner to the policies.

pub mod audit;
pub mod authorization;
pub mod caller;
mod deadline;
mod forwarded_cert;
mod revocation;
pub mod validation;

use std::{collections::HashMap, future::Future, sync::Arc, time::Duration};

use chrono::Utc;
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use self::{
    audit::Subject,
    authorization::{Action, Policies, Resource},
    caller::Caller,
    revocation::TaskGrant,
};
use crate::{
    contract::status,
    export_file::{self, ReadLimits},
    proto::{
        ExportChannelsRequest, ExportChannelsResponse, ExportFormatVersion, ExportRecord, ExportUserRequest,
        ExportUserResponse, ExportUsersRequest, ExportUsersResponse, GetTaskRequest, ListTasksRequest,
        ListTasksResponse, ReadExportRequest, Task, TaskEvent, TaskRecord, TaskState, WatchTaskRequest,
        export_service_server::ExportService, task_record,
    },
    store::{Fingerprint, StoreError, SubmitStore, TaskRegistry, registry::Cursor},
    task_watch::{WatchHub, events},
    upstream::{self, Answer, Operation, StreamClient, UpstreamError, convert, wire::TaskCreated},
};

/// Limits on the unary calls of one replica.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Most unary calls handled at once; past it, calls are shed with RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// The longest a unary call may take, whatever deadline the caller sent.
    pub unary_timeout: Duration,
    /// Limits of ReadExport streams.
    pub reads: ReadLimits,
    /// The most records one `ListTasks` call reads from the registry: a caller who may see few
    /// tasks gets short pages (each with a token to go on) instead of a scan of every record.
    pub list_scan_limit: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            unary_timeout: Duration::from_secs(30),
            reads: ReadLimits::default(),
            list_scan_limit: 500,
        }
    }
}

/// The `ExportService` implementation.
#[derive(Clone, Debug)]
pub struct ExportApi {
    client: StreamClient,
    hub: WatchHub,
    submits: Arc<dyn SubmitStore>,
    registry: Arc<dyn TaskRegistry>,
    policies: Policies,
    limits: CallLimits,
    in_flight: Arc<Semaphore>,
    /// One permit per ReadExport stream that is reading its file.
    read_streams: Arc<Semaphore>,
    /// Cancelled when the drain ends the ReadExport streams still open.
    reads_ending: CancellationToken,
    /// How many records each task's file has, once a read went to its end (a task's file never
    /// changes): a `start_index` past the end is refused without downloading the file again.
    record_counts: moka::sync::Cache<String, u64>,
    /// The key that authenticates `ListTasks` page tokens.
    page_token_key: Arc<[u8; 32]>,
    /// `ListTasks` calls running, per caller.
    listings: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// How many tasks' record counts are remembered.
const RECORD_COUNTS_REMEMBERED: u64 = 10_000;

impl ExportApi {
    /// A service that sends every request through `client`, watches tasks through `hub`,
    /// deduplicates submits in `stores.submits`, records their tasks in `stores.registry`, and
    /// lets callers do what `policies` permit.
    pub fn new(client: StreamClient, hub: WatchHub, stores: Stores, policies: Policies, limits: CallLimits) -> Self {
        Self {
            client,
            hub,
            submits: stores.submits,
            registry: stores.registry,
            policies,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            read_streams: Arc::new(Semaphore::new(limits.reads.max_streams)),
            reads_ending: CancellationToken::new(),
            record_counts: moka::sync::Cache::new(RECORD_COUNTS_REMEMBERED),
            page_token_key: Arc::new(stores.page_token_key),
            listings: Arc::default(),
            limits,
        }
    }

    /// Cancelling this token ends every open ReadExport stream with UNAVAILABLE `SHUTTING_DOWN`
    /// and its `next_index` (the end of the drain).
    pub fn read_streams_ending(&self) -> CancellationToken {
        self.reads_ending.clone()
    }

    /// Checks a ReadExport request and opens its file: the task must be completed, and the
    /// stream takes one of the replica's ReadExport slots (or is refused at once). Returns the
    /// task id in its canonical spelling with the stream.
    async fn open_export(
        &self,
        request: &Request<ReadExportRequest>,
        call: &Call,
    ) -> Result<(String, ExportRecordStream), Status> {
        let ReadExportRequest { task_id, start_index, encoding } = request.get_ref();
        let (task_id, encoding) = validation::read_export(task_id, *encoding).map_err(status::invalid_request)?;
        annotate_task(&task_id);
        let grant = self.authorize_task(&call.caller, Action::ReadExport, &task_id).await?;
        if let Some(records) = self.record_counts.get(&task_id).filter(|records| start_index > records) {
            return Err(status::start_index_past_end(*start_index, records));
        }
        let reads = self.limits.reads;
        let slot = Arc::clone(&self.read_streams)
            .try_acquire_owned()
            .map_err(|_| status::read_limit_reached(reads.max_streams))?;
        // Reading the task re-signs its URL; only that URL is ever fetched.
        let status =
            self.client.get_task(&task_id, Some(call.deadline)).await.map_err(|error| upstream_failure(&error))?;
        let task = convert::task(status.body, Utc::now());
        let url = match (task.state(), task.result) {
            (TaskState::Completed, Some(result)) if !result.url.is_empty() => result.url,
            _ => return Err(status::task_not_completed(&task.upstream_status)),
        };
        let response = self.client.download(&url).await.map_err(|error| {
            tracing::warn!(%error, "export download refused");
            upstream::download_not_started(&error, *start_index)
        })?;
        let (record_counts, counted_task) = (self.record_counts.clone(), task_id.clone());
        let records = export_file::session::start(
            response.bytes_stream(),
            *start_index,
            encoding,
            reads,
            slot,
            self.reads_ending.clone(),
            Box::new(move |records| record_counts.insert(counted_task, records)),
        );
        Ok((task_id, revocation::end_when_revoked(Box::pin(records), &self.policies, grant)))
    }

    /// The prologue of every handler: names the caller in the call's span, then admits the call
    /// (see [`ExportApi::admit`]) and sets the deadline of its upstream work.
    fn begin<T>(&self, request: &Request<T>) -> Result<Call, Status> {
        let caller = Caller::of(request);
        tracing::Span::current().record("caller", caller.name.as_str());
        let admitted = self.admit()?;
        Ok(Call { deadline: self.deadline(request), caller, _admitted: admitted })
    }

    /// Lets a call in (unary, or a stream being set up), or turns it away at once: while
    /// draining (UNAVAILABLE, so that a mesh retries elsewhere) or at the concurrency limit
    /// (RESOURCE_EXHAUSTED).
    fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        if self.hub.is_shutting_down() {
            return Err(status::shutting_down());
        }
        Arc::clone(&self.in_flight).try_acquire_owned().map_err(|_| status::overloaded(self.limits.max_in_flight))
    }

    /// When this call's upstream work must be done: the caller's deadline or the unary timeout.
    fn deadline<T>(&self, request: &Request<T>) -> tokio::time::Instant {
        let limit = tokio::time::Instant::now() + self.limits.unary_timeout;
        deadline::for_upstream(request.metadata()).map_or(limit, |caller| caller.min(limit))
    }

    /// Runs a submit once per idempotency key: a repeat of `request_id` with the same request
    /// returns the first task; with another request, INVALID_ARGUMENT.
    ///
    /// `upstream` makes the POST with the deadline it is given. Without a `request_id` that is
    /// this call's deadline. With one, the POST runs detached from this call, bounded only by
    /// the upstream timeout, and this call (like every repeat) waits for it until its own
    /// deadline: a caller that leaves or times out never abandons a submit that Stream may
    /// already have, so its retry finds the task instead of starting a second export.
    async fn submit_once<F>(
        &self,
        operation: Operation,
        call: &Call,
        request_id: &str,
        fingerprint: Fingerprint,
        upstream: impl FnOnce(Option<Instant>) -> F,
    ) -> Result<String, Status>
    where
        F: Future<Output = Result<Answer<TaskCreated>, UpstreamError>> + Send + 'static,
    {
        let submit = |deadline| upstream(deadline).map(|outcome| outcome.map(|created| created.body.task_id));
        if request_id.is_empty() {
            return submit(Some(call.deadline)).await.map_err(|error| upstream_failure(&error));
        }
        let key = format!("{}\n{}\n{request_id}", call.caller.name, operation.name());
        let submitted =
            tokio::time::timeout_at(call.deadline, self.submits.get_or_submit(key, fingerprint, submit(None).boxed()))
                .await
                .map_err(|_| upstream_failure(&UpstreamError::DeadlineExceeded { operation }))?
                .map_err(|error| store_failure(&error))?;
        if submitted.fingerprint != fingerprint {
            return Err(status::request_id_reused());
        }
        Ok(submitted.task_id)
    }
}

/// The service's stores.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Idempotent submits.
    pub submits: Arc<dyn SubmitStore>,
    /// The tasks submitted through the service.
    pub registry: Arc<dyn TaskRegistry>,
    /// The key that authenticates `ListTasks` page tokens: kept with the state, so that a token
    /// outlives a restart (and, in a fleet, shared by every replica).
    pub page_token_key: [u8; 32],
}

/// Most `ListTasks` calls of one caller at once: one caller's listings cannot take the
/// registry from everyone else's reads.
const LISTS_PER_CALLER: usize = 2;

/// An owner no caller has: the policies' answer for it says whether a caller may read tasks
/// that are not its own.
const NOBODY: &str = "\u{0}stream-export:nobody";

/// `ListTasks` page sizes: the default, and the most.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1_000;

impl ExportApi {
    /// Refuses `action` on a task unless the policies permit it to this caller; the task's
    /// owner and RPC come from the registry (none for a task not submitted here). Returns what
    /// was granted, for a stream to be checked again when the policies are reloaded.
    async fn authorize_task(&self, caller: &Caller, action: Action, task_id: &str) -> Result<TaskGrant, Status> {
        let mut grant = TaskGrant { caller: caller.clone(), action, task_id: task_id.to_owned(), record: None };
        if !self.policies.is_enforced() {
            return Ok(grant);
        }
        grant.record = self.registry.get(task_id).await.map_err(|error| registry_failure(&error))?;
        self.policies.check(caller, action, &task_resource(task_id, grant.record.as_ref()))?;
        Ok(grant)
    }

    /// Records a submitted task (owner, request, time); a registry failure is logged, not
    /// returned: the export has started, and the caller needs its task id.
    async fn record_submit(&self, caller: &Caller, task_id: &str, submit: task_record::Submit) {
        let rpc = match &submit {
            task_record::Submit::ExportChannels(_) => "ExportChannels",
            task_record::Submit::ExportUsers(_) => "ExportUsers",
        };
        let record = TaskRecord {
            task_id: task_id.to_owned(),
            owner: caller.name.clone(),
            rpc: rpc.to_owned(),
            submit: Some(submit),
            create_time: Some(crate::contract::task::timestamp(Utc::now())),
            ..TaskRecord::default()
        };
        if let Err(error) = self.registry.record(record).await {
            tracing::warn!(%error, task_id, "a submitted task could not be recorded in the task registry");
        }
    }

    /// Notes a task's state, read by this call, in the registry. A registry that answers at once
    /// (in memory) is done here; one that must wait (Redis) finishes in the background, so that
    /// the call never waits for it. Spawning only then saves a task and a worker wakeup per call.
    fn note_observed(&self, task: &Task) {
        let (registry, task, at) = (Arc::clone(&self.registry), task.clone(), Utc::now());
        let mut observation = Box::pin(async move {
            if let Err(error) = registry.observed(&task, at).await {
                tracing::debug!(%error, "the task registry did not take an observation");
            }
        });
        // A future that is pending registers the waker of its next poll: the spawned task's.
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        if observation.as_mut().poll(&mut context).is_pending() {
            tokio::spawn(observation);
        }
    }

    /// One page of `ListTasks`: the records this caller may see (`GetTask` on each), newest first.
    ///
    /// A caller whom the policies let read only its own tasks pages through the registry's
    /// owner index; others scan every record, at most `list_scan_limit` per call (then a short
    /// page, with a token to go on). A page token holds where the scan stopped, encrypted: that
    /// may be another caller's task, which the token must not show.
    async fn list_page(&self, caller: &Caller, request: &ListTasksRequest) -> Result<ListTasksResponse, Status> {
        let _turn = ListingTurn::take(&self.listings, &caller.name)?;
        let size = match request.page_size {
            size if size < 0 => return Err(status::invalid_page("page_size", "must not be negative")),
            0 => DEFAULT_PAGE_SIZE,
            size => usize::try_from(size).unwrap_or(MAX_PAGE_SIZE).min(MAX_PAGE_SIZE),
        };
        let own_only = self.sees_only_own_tasks(caller);
        let mut after =
            match request.page_token.as_str() {
                "" => None,
                token => Some(page_token::read(token, caller, own_only, &self.page_token_key).ok_or_else(|| {
                    status::invalid_page("page_token", "is not a token that ListTasks gave this caller")
                })?),
            };
        let token = |after: &Option<Cursor>| {
            after.as_ref().map_or_else(String::new, |at| page_token::write(at, caller, own_only, &self.page_token_key))
        };
        let scan_limit = self.limits.list_scan_limit.max(1);
        let mut tasks = Vec::new();
        let mut scanned = 0;
        loop {
            let batch_size = (size + 1).min(scan_limit - scanned).max(1);
            let batch = if own_only {
                self.registry.page_of_owner(&caller.name, after.as_ref(), batch_size).await
            } else {
                self.registry.page(after.as_ref(), batch_size).await
            };
            let batch = batch.map_err(|error| registry_failure(&error))?;
            let exhausted = batch.len() < batch_size;
            for record in batch {
                scanned += 1;
                let visible =
                    self.policies.allows(caller, Action::GetTask, &task_resource(&record.task_id, Some(&record)));
                if visible && tasks.len() == size {
                    // One more visible task: the page is full and another follows.
                    return Ok(ListTasksResponse { next_page_token: token(&after), tasks });
                }
                after = Some(Cursor::of(&record));
                if visible {
                    tasks.push(record);
                }
            }
            if exhausted {
                return Ok(ListTasksResponse { tasks, next_page_token: String::new() });
            }
            if scanned >= scan_limit {
                // A short page; the caller goes on from where the scan stopped.
                return Ok(ListTasksResponse { next_page_token: token(&after), tasks });
            }
        }
    }

    /// Whether the policies let `caller` read only tasks of particular owners (its own, in the
    /// usual owner-based policies), so that its listing can use the owner index: they refuse it
    /// a task of an owner no caller has, whatever its RPC.
    fn sees_only_own_tasks(&self, caller: &Caller) -> bool {
        self.policies.is_enforced()
            && [Some("ExportChannels"), Some("ExportUsers")].into_iter().all(|rpc| {
                let nobodys = Resource::Task { id: "", owner: Some(NOBODY), rpc };
                !self.policies.allows(caller, Action::GetTask, &nobodys)
            })
    }
}

/// A caller's turn among its [`LISTS_PER_CALLER`] concurrent `ListTasks` calls, given back
/// when dropped.
struct ListingTurn {
    listings: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl ListingTurn {
    fn take(listings: &Arc<std::sync::Mutex<HashMap<String, usize>>>, caller: &str) -> Result<Self, Status> {
        let mut running = listings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = running.entry(caller.to_owned()).or_default();
        if *count >= LISTS_PER_CALLER {
            return Err(status::list_limit_reached(LISTS_PER_CALLER));
        }
        *count += 1;
        Ok(Self { listings: Arc::clone(listings), caller: caller.to_owned() })
    }
}

impl Drop for ListingTurn {
    fn drop(&mut self) {
        let mut running = self.listings.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = running.get_mut(&self.caller) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

/// The policy resource of a task, with what the registry knows of it.
fn task_resource<'a>(task_id: &'a str, record: Option<&'a TaskRecord>) -> Resource<'a> {
    Resource::Task {
        id: task_id,
        owner: record.map(|record| record.owner.as_str()),
        rpc: record.map(|record| record.rpc.as_str()),
    }
}

/// The status of a failed registry call.
fn registry_failure(error: &StoreError) -> Status {
    tracing::warn!(%error, "the task registry is unavailable");
    status::task_registry_unavailable()
}

/// `ListTasks` page tokens: where a listing stopped (the last record it scanned), sealed with
/// the server's key (ChaCha20-Poly1305) together with the caller's name and the kind of listing.
/// The position may be another caller's task, so the token hides it; and a token cannot be
/// forged, altered, or used by another caller. Opaque to clients (hex).
mod page_token {
    use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

    use super::{Caller, Cursor};

    const VERSION: u8 = 3;

    fn key(key: &[u8; 32]) -> Option<LessSafeKey> {
        Some(LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).ok()?))
    }

    /// What the seal binds the position to: the format, the caller, the kind of listing.
    fn bound_to(caller: &Caller, own_only: bool) -> Vec<u8> {
        let mut aad = vec![VERSION, u8::from(own_only)];
        aad.extend_from_slice(caller.name.as_bytes());
        aad
    }

    /// The token that continues after `after` (empty if it cannot be sealed, which a 32-byte
    /// key never causes).
    pub fn write(after: &Cursor, caller: &Caller, own_only: bool, server_key: &[u8; 32]) -> String {
        let Some(key) = key(server_key) else { return String::new() };
        let nonce: [u8; NONCE_LEN] = rand::random();
        let mut sealed = format!("{}|{}", after.created_micros, after.task_id).into_bytes();
        let aad = Aad::from(bound_to(caller, own_only));
        if key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut sealed).is_err() {
            return String::new();
        }
        format!("{VERSION:02x}{}{}", hex::encode(nonce), hex::encode(sealed))
    }

    /// The position in a token, if this server gave it to this caller for this kind of listing.
    pub fn read(token: &str, caller: &Caller, own_only: bool, server_key: &[u8; 32]) -> Option<Cursor> {
        let bytes = hex::decode(token).ok()?;
        let (version, rest) = bytes.split_first()?;
        (*version == VERSION && rest.len() > NONCE_LEN).then_some(())?;
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let mut sealed = sealed.to_vec();
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let aad = Aad::from(bound_to(caller, own_only));
        let opened = key(server_key)?.open_in_place(nonce, aad, &mut sealed).ok()?;
        let (micros, task_id) = std::str::from_utf8(opened).ok()?.split_once('|')?;
        Some(Cursor { created_micros: micros.parse().ok()?, task_id: task_id.to_owned() })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn caller(name: &str) -> Caller {
            Caller { name: name.into(), source: crate::service::caller::CallerSource::Token }
        }

        #[test]
        fn a_token_hides_its_position_and_is_good_only_for_its_caller_its_kind_of_listing_and_this_key() {
            let key = [7u8; 32];
            let at = Cursor { created_micros: 42, task_id: "0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10".into() };
            let token = write(&at, &caller("a"), false, &key);
            assert!(!token.contains(&hex::encode(&at.task_id)) && !token.contains("0b6c7d7e"), "{token}");
            assert_eq!(read(&token, &caller("a"), false, &key), Some(at.clone()));
            assert_eq!(read(&token, &caller("b"), false, &key), None, "another caller");
            assert_eq!(read(&token, &caller("a"), true, &key), None, "another kind of listing");
            assert_eq!(read(&token, &caller("a"), false, &[8u8; 32]), None, "another server key");
            let mut altered = hex::decode(&token).unwrap();
            *altered.last_mut().unwrap() ^= 1;
            assert_eq!(read(&hex::encode(altered), &caller("a"), false, &key), None, "altered");
            assert_eq!(read("", &caller("a"), false, &key), None);
            assert_eq!(read("zz", &caller("a"), false, &key), None);
        }
    }
}

/// The status of a failed store call: the submit's own failure as any upstream failure.
fn store_failure(error: &StoreError) -> Status {
    match error {
        StoreError::Submit(error) => upstream_failure(error),
        StoreError::Aborted => status::submit_aborted(),
        StoreError::Unavailable(why) => {
            tracing::warn!(%why, "a submit with a request_id was refused: the idempotency store is unavailable");
            status::idempotency_store_unavailable()
        }
    }
}

/// The stream type of `ReadExport`.
pub type ExportRecordStream = revocation::BoxedStream<ExportRecord>;

/// The stream type of `WatchTask`.
pub type TaskEventStream = revocation::BoxedStream<TaskEvent>;

#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn export_channels(
        &self,
        request: Request<ExportChannelsRequest>,
    ) -> Result<Response<ExportChannelsResponse>, Status> {
        let call = self.begin(&request)?;
        let message = request.get_ref();
        let subject = Subject::Channels(message.channels.iter().map(|c| format!("{}:{}", c.r#type, c.id)).collect());
        let outcome = async {
            let body = validation::export_channels(message).map_err(status::invalid_request)?;
            // Every channel must be permitted, or nothing goes upstream.
            let version = if message.version() == ExportFormatVersion::V2 { "v2" } else { "v1" };
            for channel in &message.channels {
                let resource = Resource::Channel { kind: &channel.r#type, id: &channel.id, version };
                self.policies.check(&call.caller, Action::ExportChannels, &resource)?;
            }
            let fingerprint = Fingerprint::of("ExportChannels", &body);
            let client = self.client.clone();
            let upstream = move |deadline| async move { client.export_channels(&body, deadline).await };
            self.submit_once(Operation::ExportChannels, &call, &message.request_id, fingerprint, upstream).await
        }
        .await;
        call.finish_submit("ExportChannels", &subject, &outcome);
        let task_id = outcome?;
        self.record_submit(&call.caller, &task_id, task_record::Submit::ExportChannels(message.clone())).await;
        Ok(Response::new(ExportChannelsResponse { task_id }))
    }

    async fn export_users(
        &self,
        request: Request<ExportUsersRequest>,
    ) -> Result<Response<ExportUsersResponse>, Status> {
        let call = self.begin(&request)?;
        let message = request.get_ref();
        let outcome = async {
            let body = validation::export_users(message).map_err(status::invalid_request)?;
            for user_id in &message.user_ids {
                self.policies.check(&call.caller, Action::ExportUsers, &Resource::User(user_id))?;
            }
            let fingerprint = Fingerprint::of("ExportUsers", &body);
            let client = self.client.clone();
            let upstream = move |deadline| async move { client.export_users(&body, deadline).await };
            self.submit_once(Operation::ExportUsers, &call, &message.request_id, fingerprint, upstream).await
        }
        .await;
        call.finish_submit("ExportUsers", &Subject::Users(&message.user_ids), &outcome);
        let task_id = outcome?;
        self.record_submit(&call.caller, &task_id, task_record::Submit::ExportUsers(message.clone())).await;
        Ok(Response::new(ExportUsersResponse { task_id }))
    }

    async fn export_user(&self, request: Request<ExportUserRequest>) -> Result<Response<ExportUserResponse>, Status> {
        let call = self.begin(&request)?;
        let user_id = &request.get_ref().user_id;
        let outcome = async {
            validation::user_id(user_id).map_err(status::invalid_request)?;
            self.policies.check(&call.caller, Action::ExportUser, &Resource::User(user_id))?;
            self.client.export_user(user_id, Some(call.deadline)).await.map_err(|error| upstream_failure(&error))
        }
        .await;
        let users = std::slice::from_ref(user_id);
        audit::record(&call.caller, "ExportUser", &Subject::Users(users), outcome.as_ref().map(|_| ""));
        Ok(Response::new(convert::user_export(outcome?.body)))
    }

    async fn get_task(&self, request: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        let call = self.begin(&request)?;
        let task_id = &validation::task_id(&request.get_ref().task_id).map_err(status::invalid_request)?;
        annotate_task(task_id);
        self.authorize_task(&call.caller, Action::GetTask, task_id).await?;
        let status =
            self.client.get_task(task_id, Some(call.deadline)).await.map_err(|error| upstream_failure(&error))?;
        let task = convert::task(status.body, Utc::now());
        self.note_observed(&task);
        Ok(Response::new(task))
    }

    type ReadExportStream = ExportRecordStream;

    async fn read_export(
        &self,
        request: Request<ReadExportRequest>,
    ) -> Result<Response<Self::ReadExportStream>, Status> {
        let call = self.begin(&request)?;
        let opened = self.open_export(&request, &call).await;
        let task_id = opened.as_ref().map_or(request.get_ref().task_id.as_str(), |(task_id, _)| task_id.as_str());
        audit::record(&call.caller, "ReadExport", &Subject::Task(task_id), opened.as_ref().map(|_| task_id));
        Ok(Response::new(opened?.1))
    }

    type WatchTaskStream = TaskEventStream;

    async fn watch_task(&self, request: Request<WatchTaskRequest>) -> Result<Response<Self::WatchTaskStream>, Status> {
        // Admitted like a unary call while the stream is set up (drain, in-flight limit);
        // the open stream then counts against the watch-stream limit, not the unary one.
        let call = self.begin(&request)?;
        // The stream lives as long as the caller's deadline allows, not the unary timeout.
        let deadline = deadline::from_metadata(request.metadata());
        let task_id = &validation::task_id(&request.get_ref().task_id).map_err(status::invalid_request)?;
        annotate_task(task_id);
        let grant = self.authorize_task(&call.caller, Action::WatchTask, task_id).await?;
        let watcher = self.hub.watch(task_id, &call.caller.name)?;
        let events = Box::pin(events::task_events(watcher, deadline));
        Ok(Response::new(revocation::end_when_revoked(events, &self.policies, grant)))
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        let call = self.begin(&request)?;
        self.policies.check(&call.caller, Action::ListTasks, &Resource::Service)?;
        Ok(Response::new(self.list_page(&call.caller, request.get_ref()).await?))
    }
}

/// One admitted call: who called, by when its upstream work must be done, and its slot among
/// the calls in flight (given back when the call ends).
struct Call {
    caller: Caller,
    deadline: Instant,
    _admitted: OwnedSemaphorePermit,
}

impl Call {
    /// The epilogue of a submit: names the new task in the call's span, and audits the submit.
    fn finish_submit(&self, rpc: &str, subject: &Subject<'_>, outcome: &Result<String, Status>) {
        if let Ok(task_id) = outcome {
            annotate_task(task_id);
        }
        audit::record(&self.caller, rpc, subject, outcome.as_deref());
    }
}

/// Adds the task id, once known in its canonical spelling (or once a submit returned it), to the
/// call's span (opened by the telemetry layer): one span per call, so that a log line of the
/// call carries the caller and the task. Each field is recorded once: a field recorded twice
/// is printed twice.
fn annotate_task(task_id: &str) {
    tracing::Span::current().record("task_id", task_id);
}

/// Logs an upstream failure and maps it to the caller's status.
fn upstream_failure(error: &crate::upstream::UpstreamError) -> Status {
    tracing::warn!(%error, "upstream request failed");
    error.to_status()
}
