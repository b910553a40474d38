//! The task reads: `GetTask`, `WatchTask`, and `ListTasks` with its paging. Each is checked
//! against the policies with what the task registry knows of the task (its owner and RPC); a
//! task read from Stream is noted in the registry as last observed.

use std::{collections::HashMap, sync::Arc};

use chrono::Utc;
use tonic::{Request, Response, Status};

use super::{
    ExportApi,
    authorization::{NOBODY, Resource},
    call::{Call, annotate_task, upstream_failure},
    caller::Caller,
    deadline,
    page_token::{self, Listing},
    revocation::{self, BoxedStream},
    rpc::Rpc,
    task_access::{registry_failure, task_resource},
    validation,
};
use crate::{
    contract::status,
    proto::{GetTaskRequest, ListTasksRequest, ListTasksResponse, Task, TaskEvent, WatchTaskRequest},
    store::registry::Cursor,
    task_watch::events,
    upstream::convert,
};

/// The stream type of `WatchTask`.
pub type TaskEventStream = BoxedStream<TaskEvent>;

/// `GetTask`: the task as Stream has it now.
pub(super) async fn get_task(api: &ExportApi, request: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
    let call = Call::begin(api, &request)?;
    let task_id = &validation::task_id(&request.get_ref().task_id).map_err(status::invalid_request)?;
    annotate_task(task_id);
    api.authorize_task(&call.caller, Rpc::GetTask, task_id).await?;
    let status = api.client.get_task(task_id, Some(call.deadline)).await.map_err(|error| upstream_failure(&error))?;
    let task = convert::task(status.body, Utc::now());
    api.note_observed(&task);
    Ok(Response::new(task))
}

/// `WatchTask`: the task's changes, from the hub's one poller of the task, until it ends, the
/// caller's deadline passes, or a policy reload takes the permission away.
pub(super) async fn watch_task(
    api: &ExportApi,
    request: Request<WatchTaskRequest>,
) -> Result<Response<TaskEventStream>, Status> {
    // Admitted like a unary call while the stream is set up (drain, in-flight limit);
    // the open stream then counts against the watch-stream limit, not the unary one.
    let call = Call::begin(api, &request)?;
    // The stream lives as long as the caller's deadline allows, not the unary timeout.
    let deadline = deadline::from_metadata(request.metadata());
    let task_id = &validation::task_id(&request.get_ref().task_id).map_err(status::invalid_request)?;
    annotate_task(task_id);
    let grant = api.authorize_task(&call.caller, Rpc::WatchTask, task_id).await?;
    let watcher = api.hub.watch(task_id, &call.caller.name)?;
    let events = Box::pin(events::task_events(watcher, deadline));
    Ok(Response::new(revocation::end_when_revoked(events, &api.policies, grant)))
}

/// `ListTasks`: one page of the tasks this caller may read.
pub(super) async fn list_tasks(
    api: &ExportApi,
    request: Request<ListTasksRequest>,
) -> Result<Response<ListTasksResponse>, Status> {
    let call = Call::begin(api, &request)?;
    api.policies.check(&call.caller, Rpc::ListTasks, &Resource::Service)?;
    Ok(Response::new(api.list_page(&call.caller, request.get_ref()).await?))
}

/// Most `ListTasks` calls of one caller at once: one caller's listings cannot take the
/// registry from everyone else's reads.
const LISTS_PER_CALLER: usize = 2;

/// `ListTasks` page sizes: the default, and the most.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1_000;

impl ExportApi {
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
        let mut after = match request.page_token.as_str() {
            "" => None,
            token => {
                Some(page_token::read(token, caller, Listing::tasks(own_only), &self.page_token_key).ok_or_else(
                    || status::invalid_page("page_token", "is not a token that ListTasks gave this caller"),
                )?)
            }
        };
        let token = |after: &Option<Cursor>| {
            after.as_ref().map_or_else(String::new, |at| {
                page_token::write(at, caller, Listing::tasks(own_only), &self.page_token_key)
            })
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
                    self.policies.allows(caller, Rpc::GetTask, &task_resource(&record.task_id, Some(&record)));
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
            && Rpc::SUBMITS.into_iter().all(|rpc| {
                let nobodys = Resource::Task { id: "", owner: Some(NOBODY), rpc: Some(rpc.name()) };
                !self.policies.allows(caller, Rpc::GetTask, &nobodys)
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
