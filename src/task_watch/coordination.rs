//! The seam between one process and a fleet, for watching: how a replica's pollers agree with
//! other replicas on who polls a task ([`PollCoordinator`]), and how they share one upstream
//! budget ([`SlotBooker`]). A single process uses [`Coordination::solo`], which always leads
//! and never fails; `startup` picks the fleet's implementations when there is a Redis. Nothing
//! else in the hub knows which it has.

use std::{sync::Arc, time::Duration};

use tokio::sync::Notify;

use super::view::TaskView;
use crate::upstream::RateLimit;

/// The replicas' shared state could not be reached: a replica then carries on alone (it polls
/// the tasks it watches, under its share of the budget).
#[derive(Clone, Debug, thiserror::Error)]
#[error("the fleet's shared state is unreachable: {0}")]
pub struct Unreachable(pub String);

/// A follower's read of a task's shared view.
pub struct Followed {
    /// Whether this replica now holds the task's lease (and must poll).
    pub leading: bool,
    /// The shared observation, unless it is still the one the follower has.
    pub update: Option<SharedView>,
    /// When to read again at the latest, if no change is announced meanwhile.
    pub read_again_in: Duration,
}

/// How soon a follower needs its read of the shared view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Urgency {
    /// It has nothing to relay yet, or a change was announced: read at once.
    Now,
    /// Its periodic check that the leader still holds the lease: it may wait up to a follow
    /// interval, to be read together with the replica's other checks.
    Soon,
}

/// One observation as the replicas share it.
pub struct SharedView {
    /// Its number: each write adds one.
    pub seq: i64,
    /// What the polling replica observed.
    pub view: TaskView,
}

/// Who polls a task: one replica leads (polls Stream and publishes each observation), the others
/// follow (relay what it published) until its lease is free.
#[tonic::async_trait]
pub trait PollCoordinator: Send + Sync + std::fmt::Debug + 'static {
    /// Whether a new poller leads at once (alone) or first follows (a fleet, where another
    /// replica may poll the task already).
    fn leads_at_once(&self) -> bool;

    /// What a follower of `task_id` may wait on besides [`Followed::read_again_in`]: notified
    /// when another replica announces a change of the task (a permit is kept while the
    /// follower is reading). `None`: no change is announced.
    fn announcements(&self, task_id: &str) -> Option<Arc<Notify>>;

    /// How often a leader's lease is renewed; `None`: there is no lease to renew.
    fn renew_interval(&self) -> Option<Duration>;

    /// Reads what the leader published since `seq`, taking the lease if it is free, as soon as
    /// `urgency` asks.
    async fn follow(&self, task_id: &str, seq: i64, urgency: Urgency) -> Result<Followed, Unreachable>;

    /// Publishes an observation, kept for `last` when it is the last one (the task ended, or its
    /// watch did); otherwise for a few of the longest poll intervals. Returns its `seq`, or
    /// `None` if another replica leads now.
    async fn publish(
        &self,
        task_id: &str,
        view: &TaskView,
        last: Option<Duration>,
        poll_interval_max: Duration,
    ) -> Result<Option<i64>, Unreachable>;

    /// Waits for the next renewal of this replica's lease on `task_id` (at most one renew
    /// interval: a fleet renews all of a replica's leases together), and says whether it was
    /// kept; `false` if another replica leads now. A leading poller keeps one such wait going.
    async fn renew(&self, task_id: &str) -> Result<bool, Unreachable>;

    /// Gives the lease up (the last watcher left, or the replica drains), so that another
    /// replica with watchers takes the poll over at once.
    fn release(&self, task_id: &str);
}

/// How the next upstream requests' slots were booked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Booking {
    /// Nobody else shares the budget: the poll budget paces its requests itself.
    Paced,
    /// `count` slots of the shared budget, the first `first_in` from now, the others each
    /// `spacing` after the one before (the budget's period, or longer while Stream's window is
    /// low). A slot unused when it comes is lost, never moved.
    In {
        /// When the first slot comes.
        first_in: Duration,
        /// How many slots were booked (at least one).
        count: u32,
        /// The time between two slots.
        spacing: Duration,
    },
    /// The shared budget is unreachable: pace alone, at this replica's share of it (the budget
    /// divided by `replicas`).
    Alone {
        /// The replicas last seen sharing the budget, this one included.
        replicas: u32,
    },
}

/// One upstream budget for every replica: books each request's slot, and shares what Stream
/// says of its rate-limit window.
#[tonic::async_trait]
pub trait SlotBooker: Send + Sync + std::fmt::Debug + 'static {
    /// Books the next slots, up to `wanted` of them (the requests waiting), each one `period`
    /// after the one before.
    async fn book(&self, period: Duration, wanted: u32) -> Booking;

    /// Shares what Stream said of its rate-limit window (a low window spreads the replicas' polls).
    fn share(&self, rate_limit: RateLimit);

    /// No replica polls for `duration` (Stream answered 429, or its window is spent).
    fn pause(&self, duration: Duration);
}

/// The coordination of a replica's watches.
#[derive(Clone, Debug)]
pub struct Coordination {
    /// Who polls each task.
    pub polls: Arc<dyn PollCoordinator>,
    /// The upstream budget's slots.
    pub slots: Arc<dyn SlotBooker>,
}

impl Coordination {
    /// A single process: it polls every task it watches, under its own budget.
    pub fn solo() -> Self {
        Self { polls: Arc::new(Solo), slots: Arc::new(Solo) }
    }
}

/// The coordination of a single process: it always leads, and nothing can fail.
#[derive(Debug)]
struct Solo;

#[tonic::async_trait]
impl PollCoordinator for Solo {
    fn leads_at_once(&self) -> bool {
        true
    }

    fn announcements(&self, _task_id: &str) -> Option<Arc<Notify>> {
        None
    }

    fn renew_interval(&self) -> Option<Duration> {
        None
    }

    async fn follow(&self, _task_id: &str, _seq: i64, _urgency: Urgency) -> Result<Followed, Unreachable> {
        Ok(Followed { leading: true, update: None, read_again_in: Duration::from_secs(1) })
    }

    async fn publish(
        &self,
        _task_id: &str,
        _view: &TaskView,
        _last: Option<Duration>,
        _poll_interval_max: Duration,
    ) -> Result<Option<i64>, Unreachable> {
        Ok(Some(0))
    }

    async fn renew(&self, _task_id: &str) -> Result<bool, Unreachable> {
        Ok(true)
    }

    fn release(&self, _task_id: &str) {}
}

#[tonic::async_trait]
impl SlotBooker for Solo {
    async fn book(&self, _period: Duration, _wanted: u32) -> Booking {
        Booking::Paced
    }

    fn share(&self, _rate_limit: RateLimit) {}

    fn pause(&self, _duration: Duration) {}
}
