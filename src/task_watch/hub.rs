//! The registry of watched tasks: one poller per task id, shared by all its watchers.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use super::{
    ChangeObserver, WatchSettings,
    budget::PollBudget,
    coordination::Coordination,
    poller,
    shared::{Shared, lock},
    view::TaskView,
};
use crate::{
    contract::status,
    telemetry::{self, otel::WatcherLinks},
    upstream::{RetryPolicy, StreamClient},
};

/// Starts, shares and retires pollers. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WatchHub {
    shared: Arc<Shared>,
    streams: Arc<Semaphore>,
    /// Open watch streams per caller, so that no caller takes the whole of [`Self::streams`].
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
    /// A hub whose pollers use `client`, and agree with other replicas (if any) through
    /// `coordination`. `observer` is told of every change the pollers observe.
    pub fn new(
        client: StreamClient,
        settings: WatchSettings,
        coordination: Coordination,
        observer: Option<Arc<dyn ChangeObserver>>,
    ) -> Self {
        let budget = PollBudget::new(settings.upstream_budget_per_second, coordination.slots);
        let streams = Arc::new(Semaphore::new(settings.max_streams));
        // Pollers pace their own retries (backoff, failure budget).
        let client = client.with_retry(RetryPolicy::NONE);
        Self {
            shared: Arc::new(Shared::new(client, settings, budget, coordination.polls, observer)),
            streams,
            streams_by_caller: Arc::default(),
        }
    }

    /// Joins `caller` to the watchers of `task_id`, starting its poller if it has none. A
    /// watcher of a task that is already polled sees the last observation at once, with no
    /// upstream call. A new poller's first poll takes its turn among `caller`'s.
    pub fn watch(&self, task_id: &str, caller: &str) -> Result<Watcher, Status> {
        let settings = &self.shared.settings;
        let caller_stream = CallerStream::open(&self.streams_by_caller, caller, settings.max_streams_per_caller)
            .ok_or_else(|| status::caller_watch_limit_reached(settings.max_streams_per_caller))?;
        let permit = Arc::clone(&self.streams)
            .try_acquire_owned()
            .map_err(|_| status::watch_limit_reached(settings.max_streams))?;
        let view = {
            let mut tasks = self.shared.lock_tasks();
            match tasks.get(task_id) {
                Some((sender, links)) => {
                    links.add(&tracing::Span::current());
                    sender.subscribe()
                }
                None => {
                    let (sender, view) = watch::channel(TaskView::pending());
                    let sender = Arc::new(sender);
                    let links = Arc::new(WatcherLinks::default());
                    links.add(&tracing::Span::current());
                    tasks.insert(task_id.to_owned(), (Arc::clone(&sender), Arc::clone(&links)));
                    let first_caller = Arc::clone(&caller_stream.caller);
                    let poller = poller::run(Arc::clone(&self.shared), task_id.to_owned(), first_caller, sender, links);
                    tokio::spawn(poller.instrument(tracing::debug_span!("poller", task_id)));
                    view
                }
            }
        };
        metrics::gauge!(telemetry::metrics::WATCH_STREAMS).increment(1);
        Ok(Watcher {
            view,
            shutdown: self.shared.shutdown.clone(),
            settings: self.shared.settings.clone(),
            _permit: permit,
            _caller_stream: caller_stream,
        })
    }

    /// The hub's settings (the heartbeat and stream lifetime that other streams keep too).
    pub fn settings(&self) -> &WatchSettings {
        &self.shared.settings
    }

    /// Ends every watch stream as interrupted (resumable) and stops the pollers.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether [`Self::shutdown`] was called.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// Tasks with a running poller (or a retained final state).
    pub fn watched_tasks(&self) -> usize {
        self.shared.lock_tasks().len()
    }

    /// Pollers polling now.
    pub fn active_pollers(&self) -> usize {
        self.shared.budget.active_pollers()
    }

    /// Open watch streams.
    pub fn open_streams(&self) -> usize {
        self.shared.settings.max_streams - self.streams.available_permits()
    }
}
