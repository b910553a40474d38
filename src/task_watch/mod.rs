//! The task hub behind `WatchTask`: one upstream poller per watched task, however many
//! watchers it has, relayed to each watcher as an ordered stream of events.
//!
//! - [`hub`] keeps the pollers: it starts one for the first watcher of a task and retires it
//!   when the last watcher leaves (or keeps a finished task's final state for a while).
//! - [`poller`] polls `GET /tasks/{id}` adaptively inside the shared [`budget`].
//! - [`events`] turns what the poller publishes into one watcher's `TaskEvent` stream.
//! - [`view`] is what a task's watchers see; [`shared`] what the hub and its pollers share.
//! - [`coordination`] is the seam between one process and a fleet: who polls each task, and
//!   whose budget the polls spend. The fleet's side (`fleet::watch_lease`, `fleet::budget`),
//!   where the replicas sharing a Redis poll each task once and share one budget, implements it
//!   from above.

pub mod budget;
pub mod coordination;
pub mod events;
pub mod hub;
mod poller;
mod shared;
pub mod view;

use std::time::Duration;

pub use coordination::Coordination;
pub use hub::{WatchHub, Watcher};

/// Told of every change a poller observes; in fleet mode only the polling replica tells.
pub trait ChangeObserver: Send + Sync + std::fmt::Debug {
    /// `task` changed, as polled at `at`: the noting of it. The poller runs it in the background,
    /// except for a final state, which it awaits (for at most [`FINAL_STATE_NOTE_WAIT`]) before
    /// its watchers see it: a client that watched a task to its end then finds it ended in
    /// `ListTasks` too.
    fn observed(
        &self,
        task: &crate::proto::Task,
        at: chrono::DateTime<chrono::Utc>,
    ) -> futures::future::BoxFuture<'static, ()>;
}

/// The longest a poller waits for a final state to be noted before its watchers see it (a
/// stalled registry delays the end of a watch by this much at most).
pub const FINAL_STATE_NOTE_WAIT: Duration = Duration::from_secs(1);

/// Tuning of the hub; every value has a flag in `stream-export serve`.
#[derive(Clone, Debug)]
pub struct WatchSettings {
    /// A heartbeat event is sent after this long without another event.
    pub heartbeat_interval: Duration,
    /// The first interval between polls, and the interval right after a change.
    pub poll_interval_min: Duration,
    /// The longest interval between polls of an unchanged task.
    pub poll_interval_max: Duration,
    /// How long upstream may keep failing before watchers get UNAVAILABLE.
    pub failure_budget: Duration,
    /// The longest a watch stream lives before it is ended as interrupted (resumable).
    pub max_stream_lifetime: Duration,
    /// Most concurrent watch streams; past it, RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// Most concurrent watch streams of one caller, so that no caller can take them all;
    /// past it, RESOURCE_EXHAUSTED. (Per connection, HTTP/2's concurrent-stream limit holds.)
    pub max_streams_per_caller: usize,
    /// Upstream status requests per second, all pollers together.
    pub upstream_budget_per_second: f64,
    /// How long a finished task's final state is kept for late watchers.
    pub terminal_retention: Duration,
    /// How long upstream's NOT_FOUND for a task id is remembered: repeated watchers of an
    /// unknown id get it at once instead of each costing an upstream request.
    pub not_found_retention: Duration,
    /// Fleet mode: how long a replica's lease on polling a task lasts unless renewed; a
    /// replica that dies while polling is replaced within about this long.
    pub fleet_lease: Duration,
    /// Fleet mode: how often a replica that does not poll a task reads its shared state.
    pub fleet_follow_interval: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(20),
            poll_interval_min: Duration::from_millis(500),
            poll_interval_max: Duration::from_secs(10),
            failure_budget: Duration::from_secs(60),
            max_stream_lifetime: Duration::from_secs(3600),
            max_streams: 20_000,
            max_streams_per_caller: 2_000,
            upstream_budget_per_second: 10.0,
            terminal_retention: Duration::from_secs(60),
            not_found_retention: Duration::from_secs(10),
            fleet_lease: Duration::from_secs(3),
            fleet_follow_interval: Duration::from_millis(250),
        }
    }
}
