//! The registry of watched tasks: one poller per task id, shared by all its watchers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use super::{
    ChangeObserver, WatchSettings, budget::PollBudget, fleet_budget::FleetBudget, fleet_view::FleetView, poller,
};
use crate::{
    contract::status,
    fleet::{Redis, members::Members},
    proto::Task,
    telemetry::{self, otel::WatcherLinks},
    upstream::{RetryPolicy, StreamClient},
};

/// What a task's watchers see. The poller replaces it; watchers only read it, so a slow
/// watcher never slows the poller or another watcher, and always sees the latest state.
#[derive(Clone, Debug)]
pub struct TaskView {
    /// The latest outcome of polling.
    pub observation: Observation,
    /// When upstream was last polled, changed or not.
    pub polled_at: Option<DateTime<Utc>>,
}

impl TaskView {
    /// The task, when one has been observed.
    pub fn task(&self) -> Option<&Task> {
        match &self.observation {
            Observation::Task(task) => Some(task),
            _ => None,
        }
    }
}

/// The latest outcome of polling a task.
#[derive(Clone, Debug)]
pub enum Observation {
    /// No poll has answered yet.
    Pending,
    /// The task as last read upstream.
    Task(Box<Task>),
    /// Watching ended with this status (NOT_FOUND, or UNAVAILABLE after the failure budget).
    Ended(Status),
}

/// The sending side of one task's view, shared by the hub (to subscribe) and its poller.
pub(super) type ViewSender = Arc<watch::Sender<TaskView>>;

/// Starts, shares and retires pollers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WatchHub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
pub(super) struct HubInner {
    pub(super) client: StreamClient,
    pub(super) settings: WatchSettings,
    pub(super) budget: PollBudget,
    /// Fleet mode: how this replica shares its tasks' polls with the others.
    pub(super) fleet: Option<FleetView>,
    /// Told of every observed change.
    pub(super) observer: Option<Arc<dyn ChangeObserver>>,
    pub(super) shutdown: CancellationToken,
    /// Each watched task's view and its watchers' calls (for the poll spans' links).
    tasks: Mutex<HashMap<String, (ViewSender, Arc<WatcherLinks>)>>,
    streams: Arc<Semaphore>,
    /// Open watch streams per caller, so that no caller takes the whole [`Self::streams`].
    streams_by_caller: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        metrics::gauge!(telemetry::metrics::WATCH_STREAMS).decrement(1);
    }
}

/// One caller's place among its open watch streams, given back when the stream ends.
struct CallerStream {
    counts: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    caller: Arc<str>,
}

impl CallerStream {
    /// Counts one more stream of `caller`, unless it already has `limit`.
    fn open(counts: &Arc<Mutex<HashMap<Arc<str>, usize>>>, caller: &str, limit: usize) -> Option<Self> {
        let mut by_caller = lock(counts);
        let caller: Arc<str> = match by_caller.get_key_value(caller) {
            Some((_, count)) if *count >= limit => return None,
            Some((name, _)) => Arc::clone(name),
            None => caller.into(),
        };
        *by_caller.entry(Arc::clone(&caller)).or_insert(0) += 1;
        Some(Self { counts: Arc::clone(counts), caller })
    }
}

impl Drop for CallerStream {
    fn drop(&mut self) {
        let mut by_caller = lock(&self.counts);
        if let Some(count) = by_caller.get_mut(&self.caller) {
            *count -= 1;
            if *count == 0 {
                by_caller.remove(&self.caller);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One watcher of one task: its view of the task and its place among the open streams.
pub struct Watcher {
    /// The task's view, as the poller publishes it.
    pub view: watch::Receiver<TaskView>,
    /// Ends the stream when cancelled (shutdown).
    pub shutdown: CancellationToken,
    /// The hub's settings.
    pub settings: WatchSettings,
    _permit: OwnedSemaphorePermit,
    _caller_stream: CallerStream,
}

impl WatchHub {
    /// A hub whose pollers use `client`. With `fleet`, the Redis that the replicas share,
    /// each task is polled by one replica of the fleet and the budget is the fleet's.
    /// `observer` is told of every change the pollers observe.
    pub fn new(
        client: StreamClient,
        settings: WatchSettings,
        fleet: Option<Redis>,
        observer: Option<Arc<dyn ChangeObserver>>,
    ) -> Self {
        let shutdown = CancellationToken::new();
        let per_second = settings.upstream_budget_per_second;
        let (budget, fleet) = match fleet {
            None => (PollBudget::new(per_second), None),
            Some(redis) => {
                let members = Members::start(redis.clone(), shutdown.clone());
                let budget = PollBudget::for_fleet(per_second, FleetBudget::new(redis.clone(), members.clone()));
                let view = FleetView::new(redis, members, settings.fleet_lease, settings.fleet_follow_interval);
                (budget, Some(view))
            }
        };
        Self {
            inner: Arc::new(HubInner {
                // Pollers pace their own retries (backoff, failure budget).
                client: client.with_retry(RetryPolicy::NONE),
                budget,
                fleet,
                observer,
                streams: Arc::new(Semaphore::new(settings.max_streams)),
                streams_by_caller: Arc::default(),
                settings,
                shutdown,
                tasks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Joins `caller` to the watchers of `task_id`, starting its poller if it has none. A
    /// watcher of a task that is already polled sees the last observation at once, with no
    /// upstream call. A new poller's first poll takes its turn among `caller`'s.
    pub fn watch(&self, task_id: &str, caller: &str) -> Result<Watcher, Status> {
        let settings = &self.inner.settings;
        let caller_stream = CallerStream::open(&self.inner.streams_by_caller, caller, settings.max_streams_per_caller)
            .ok_or_else(|| status::caller_watch_limit_reached(settings.max_streams_per_caller))?;
        let permit = Arc::clone(&self.inner.streams)
            .try_acquire_owned()
            .map_err(|_| status::watch_limit_reached(settings.max_streams))?;
        let view = {
            let mut tasks = self.inner.lock_tasks();
            match tasks.get(task_id) {
                Some((sender, links)) => {
                    links.add(&tracing::Span::current());
                    sender.subscribe()
                }
                None => {
                    let (sender, view) =
                        watch::channel(TaskView { observation: Observation::Pending, polled_at: None });
                    let sender = Arc::new(sender);
                    let links = Arc::new(WatcherLinks::default());
                    links.add(&tracing::Span::current());
                    tasks.insert(task_id.to_owned(), (Arc::clone(&sender), Arc::clone(&links)));
                    let first_caller = Arc::clone(&caller_stream.caller);
                    let poller = poller::run(Arc::clone(&self.inner), task_id.to_owned(), first_caller, sender, links);
                    tokio::spawn(poller.instrument(tracing::debug_span!("poller", task_id)));
                    view
                }
            }
        };
        metrics::gauge!(telemetry::metrics::WATCH_STREAMS).increment(1);
        Ok(Watcher {
            view,
            shutdown: self.inner.shutdown.clone(),
            settings: self.inner.settings.clone(),
            _permit: permit,
            _caller_stream: caller_stream,
        })
    }

    /// Ends every watch stream as interrupted (resumable) and stops the pollers.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Whether [`Self::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Tasks with a running poller (or a retained final state).
    pub fn watched_tasks(&self) -> usize {
        self.inner.lock_tasks().len()
    }

    /// Pollers polling now.
    pub fn active_pollers(&self) -> usize {
        self.inner.budget.active_pollers()
    }

    /// Open watch streams.
    pub fn open_streams(&self) -> usize {
        self.inner.settings.max_streams - self.inner.streams.available_permits()
    }
}

impl HubInner {
    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, HashMap<String, (ViewSender, Arc<WatcherLinks>)>> {
        lock(&self.tasks)
    }

    /// Removes the task's entry if it has no watcher left; `false` if one joined meanwhile.
    /// Watchers subscribe under the same lock, so none can slip in between.
    pub(super) fn retire_if_unwatched(&self, task_id: &str, sender: &ViewSender) -> bool {
        let mut tasks = self.lock_tasks();
        if sender.receiver_count() > 0 {
            return false;
        }
        Self::remove_entry(&mut tasks, task_id, sender);
        true
    }

    /// Removes the task's entry: its watchers keep their last view, new ones start afresh.
    pub(super) fn forget(&self, task_id: &str, sender: &ViewSender) {
        Self::remove_entry(&mut self.lock_tasks(), task_id, sender);
    }

    fn remove_entry(tasks: &mut HashMap<String, (ViewSender, Arc<WatcherLinks>)>, task_id: &str, sender: &ViewSender) {
        if tasks.get(task_id).is_some_and(|(current, _)| Arc::ptr_eq(current, sender)) {
            tasks.remove(task_id);
        }
    }
}
