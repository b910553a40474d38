//! The upstream request budget shared by every poller of a replica, and in fleet mode by
//! every replica (see [`FleetBudget`]).

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, oneshot},
    task::AbortHandle,
    time::Instant,
};

use super::coordination::{Booking, SlotBooker};
use crate::upstream::RateLimit;

/// Below this share of Stream's window left, pollers spread what is left over the window.
const LOW_REMAINING_SHARE: f64 = 0.5;

/// A queue this long is swept of departed waiters before it grows further, so that waiters
/// who leave without ever being served do not pile up ahead of the live ones.
const SWEEP_AT_LEAST: usize = 256;

/// The most slots one booking of a shared budget asks for (the fleet books fewer: see
/// `fleet::budget`).
const MOST_SLOTS_WANTED: usize = 64;

/// While both lanes wait, at most this many first polls go in a row before a periodic one, so
/// that a flood of new watchers slows the polls of watched tasks down instead of stopping them.
const FIRST_POLLS_IN_A_ROW: u32 = 3;

/// Which queue a poll waits in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A task's first poll, whose watchers have nothing yet: served before any periodic poll,
    /// taking turns between the callers who started the watches (named here), so that one
    /// caller's flood of watches (of unknown ids, say) cannot hold back another's snapshot.
    First(Arc<str>),
    /// A poll of a task its watchers have already seen.
    Periodic,
}

/// Paces the status polls of all pollers to at most a fixed rate, first come first served
/// within a lane, first polls before periodic ones.
///
/// Waiters queue for a grant; a dispatcher hands out one grant per period to the oldest
/// waiter still waiting and skips those that left, so a departed waiter never holds a slot
/// (booking a slot ahead of time let cancelled watchers delay everyone behind them). Each
/// poller holds at most one place in the queue at a time, so when the budget is saturated
/// every watched task gets one poll per round: a thousand tasks degrade freshness evenly
/// instead of tripping Stream's limit. First polls get their own lane so that a new watcher's
/// snapshot does not wait a full round behind thousands of periodic polls; they still spend
/// the same budget. (A token bucket such as `governor` caps the rate too, but waiters race
/// for tokens instead of queueing, so a busy task could starve a quiet one.)
#[derive(Debug)]
pub struct PollBudget {
    queues: Arc<Queues>,
    dispatcher: OnceLock<AbortHandle>,
    last_rate_limit: Mutex<Option<RateLimit>>,
    pollers: AtomicUsize,
    /// Books each request's slot: the budget is this replica's alone, or the fleet's.
    slots: Arc<dyn SlotBooker>,
}

/// The waiters of both lanes, shared with the dispatcher.
#[derive(Debug)]
struct Queues {
    period: Duration,
    lanes: Mutex<Lanes>,
    arrived: Notify,
}

#[derive(Debug, Default)]
struct Lanes {
    first: TakingTurns,
    periodic: WaitQueue,
    first_in_a_row: u32,
}

impl Lanes {
    /// Whether a waiter still waits (departed ones at the front are dropped).
    fn has_waiters(&mut self) -> bool {
        self.first.has_waiters() || self.periodic.has_waiters()
    }

    /// How many waiters still wait, counted up to `at_most`.
    fn waiting(&self, at_most: usize) -> usize {
        let first = self.first.queues.values().map(|queue| queue.waiting(at_most)).sum::<usize>();
        (first + self.periodic.waiting(at_most)).min(at_most)
    }

    /// Grants the next waiter, first polls before periodic ones (up to
    /// [`FIRST_POLLS_IN_A_ROW`]); `false` if none waits.
    fn grant_next(&mut self) -> bool {
        if self.first_in_a_row >= FIRST_POLLS_IN_A_ROW && self.periodic.grant() {
            self.first_in_a_row = 0;
            return true;
        }
        if self.first.grant() {
            self.first_in_a_row += 1;
            return true;
        }
        self.first_in_a_row = 0;
        self.periodic.grant()
    }
}

/// Waiters queued by caller: each grant goes to the oldest waiter of the next caller in turn.
#[derive(Debug, Default)]
struct TakingTurns {
    queues: HashMap<Arc<str>, WaitQueue>,
    /// The callers with a queue, the next one to be served first.
    turns: VecDeque<Arc<str>>,
}

impl TakingTurns {
    fn push(&mut self, caller: Arc<str>, waiter: oneshot::Sender<()>) {
        let queue = self.queues.entry(Arc::clone(&caller)).or_insert_with(|| {
            self.turns.push_back(caller);
            WaitQueue::default()
        });
        queue.push(waiter);
    }

    /// Whether a waiter still waits; callers whose waiters all left lose their turn.
    fn has_waiters(&mut self) -> bool {
        let queues = &mut self.queues;
        self.turns.retain(|caller| {
            let waiting = queues.get_mut(caller).is_some_and(WaitQueue::has_waiters);
            if !waiting {
                queues.remove(caller);
            }
            waiting
        });
        !self.turns.is_empty()
    }

    /// Grants the oldest waiter of the next caller with one; `false` if none waits.
    fn grant(&mut self) -> bool {
        while let Some(caller) = self.turns.pop_front() {
            let Some(queue) = self.queues.get_mut(&caller) else { continue };
            if queue.grant() {
                if queue.has_waiters() {
                    self.turns.push_back(caller);
                } else {
                    self.queues.remove(&caller);
                }
                return true;
            }
            self.queues.remove(&caller);
        }
        false
    }
}

/// One lane's waiters, oldest first; a waiter that left has a closed sender.
#[derive(Debug, Default)]
struct WaitQueue {
    waiters: VecDeque<oneshot::Sender<()>>,
    sweep_at: usize,
}

impl WaitQueue {
    fn push(&mut self, waiter: oneshot::Sender<()>) {
        if self.waiters.len() >= self.sweep_at.max(SWEEP_AT_LEAST) {
            self.waiters.retain(|waiter| !waiter.is_closed());
            self.sweep_at = self.waiters.len() * 2;
        }
        self.waiters.push_back(waiter);
    }

    /// How many waiters still wait, counted up to `at_most`.
    fn waiting(&self, at_most: usize) -> usize {
        self.waiters.iter().filter(|waiter| !waiter.is_closed()).take(at_most).count()
    }

    fn has_waiters(&mut self) -> bool {
        while self.waiters.front().is_some_and(oneshot::Sender::is_closed) {
            self.waiters.pop_front();
        }
        !self.waiters.is_empty()
    }

    /// Grants the oldest waiter still waiting; `false` if none is.
    fn grant(&mut self) -> bool {
        while let Some(waiter) = self.waiters.pop_front() {
            if waiter.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

impl PollBudget {
    /// A budget of `per_second` upstream status requests per second, for this replica alone or
    /// for every replica sharing `slots`.
    pub fn new(per_second: f64, slots: Arc<dyn SlotBooker>) -> Self {
        Self {
            queues: Arc::new(Queues {
                period: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
                lanes: Mutex::new(Lanes::default()),
                arrived: Notify::new(),
            }),
            dispatcher: OnceLock::new(),
            last_rate_limit: Mutex::new(None),
            pollers: AtomicUsize::new(0),
            slots,
        }
    }

    /// Waits for this poller's turn to send one request. Dropping the future gives up the
    /// place in the queue; nothing stays booked.
    pub async fn acquire(&self, lane: Lane) {
        self.dispatcher
            .get_or_init(|| tokio::spawn(dispatch(Arc::clone(&self.queues), Arc::clone(&self.slots))).abort_handle());
        let (grant, granted) = oneshot::channel();
        {
            let mut lanes = self.queues.lock_lanes();
            match lane {
                Lane::First(caller) => lanes.first.push(caller, grant),
                Lane::Periodic => lanes.periodic.push(grant),
            }
        }
        self.queues.arrived.notify_one();
        // The dispatcher lives as long as the budget, so the sender is only dropped unsent
        // when the runtime is going away; then there is nothing left to pace.
        let _ = granted.await;
    }

    /// Records the rate-limit window that Stream reported on a status request (and shares it
    /// with the fleet when it runs low).
    pub fn record(&self, rate_limit: Option<RateLimit>) {
        if let Some(rate_limit) = rate_limit {
            *self.last_rate_limit.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(rate_limit);
            self.slots.share(rate_limit);
        }
    }

    /// Stream answered 429 and said when to retry: in fleet mode, no replica polls before.
    /// (This replica's own poller already waits for it.)
    pub fn rate_limited(&self, retry_after: Duration) {
        self.slots.pause(retry_after);
    }

    /// The least time one poller should leave between polls so that all pollers together
    /// stay inside what is left of Stream's window; zero while plenty is left.
    pub fn rate_limit_spacing(&self) -> Duration {
        let Some(limit) = *self.last_rate_limit.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) else {
            return Duration::ZERO;
        };
        let until_reset = limit.until_reset();
        if until_reset.is_zero() || (limit.remaining as f64) >= (limit.limit as f64) * LOW_REMAINING_SHARE {
            return Duration::ZERO;
        }
        if limit.remaining == 0 {
            return until_reset;
        }
        let pollers = self.pollers.load(Ordering::Relaxed).max(1) as u32;
        let remaining = u32::try_from(limit.remaining).unwrap_or(u32::MAX);
        (until_reset.saturating_mul(pollers) / remaining).min(until_reset)
    }

    /// Counts a poller in for [`Self::rate_limit_spacing`] until the guard drops.
    pub fn enlist(&self) -> PollerGuard<'_> {
        self.pollers.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::metrics::WATCH_POLLERS).increment(1);
        PollerGuard(self)
    }

    /// Pollers running now.
    pub fn active_pollers(&self) -> usize {
        self.pollers.load(Ordering::Relaxed)
    }
}

/// Keeps a poller counted in its budget.
pub struct PollerGuard<'a>(&'a PollBudget);

impl Drop for PollBudget {
    fn drop(&mut self) {
        if let Some(dispatcher) = self.dispatcher.get() {
            dispatcher.abort();
        }
    }
}

impl Queues {
    fn lock_lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn grant_next(&self) -> bool {
        self.lock_lanes().grant_next()
    }

    fn has_waiters(&self) -> bool {
        self.lock_lanes().has_waiters()
    }

    fn waiting(&self) -> u32 {
        u32::try_from(self.lock_lanes().waiting(MOST_SLOTS_WANTED)).unwrap_or(1).max(1)
    }
}

/// Hands out one grant per period, for as long as the budget lives. Slots are planned a period
/// apart (not a period after each grant), so timer lag does not lower the rate. When the budget
/// is shared, the grants wait for the slots `slots` booked (several at a time, for the waiters
/// there are); while the shared budget cannot be reached, for this replica's share (the period
/// times the replicas last seen).
async fn dispatch(queues: Arc<Queues>, slots: Arc<dyn SlotBooker>) {
    let mut next_slot = Instant::now();
    loop {
        tokio::time::sleep_until(next_slot).await;
        let arrived = queues.arrived.notified();
        if !queues.has_waiters() {
            arrived.await;
            // Idle until now: the next slot is the arrival.
            next_slot = next_slot.max(Instant::now());
            continue;
        }
        match slots.book(queues.period, queues.waiting()).await {
            Booking::Paced => {
                if queues.grant_next() {
                    next_slot += queues.period;
                }
            }
            Booking::In { first_in, count, spacing } => {
                let first = Instant::now() + first_in;
                for slot in 0..count {
                    tokio::time::sleep_until(first + spacing * slot).await;
                    // Nobody waiting any more: the slot is lost (the others' slots are theirs).
                    queues.grant_next();
                }
                next_slot = Instant::now();
            }
            Booking::Alone { replicas } => {
                if queues.grant_next() {
                    next_slot += queues.period * replicas.max(1);
                }
            }
        }
    }
}

impl Drop for PollerGuard<'_> {
    fn drop(&mut self) {
        self.0.pollers.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(crate::telemetry::metrics::WATCH_POLLERS).decrement(1);
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::task_watch::coordination::Coordination;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_period() {
        let budget = PollBudget::new(10.0, Coordination::solo().slots);
        let start = Instant::now();
        for _ in 0..5 {
            budget.acquire(Lane::Periodic).await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_that_leave_hold_no_slot() {
        let budget = PollBudget::new(10.0, Coordination::solo().slots);
        budget.acquire(Lane::Periodic).await;
        for _ in 0..100 {
            // Polled once, so it is queued, then dropped: the watcher left.
            let left = budget.acquire(Lane::First("caller".into()));
            assert!(tokio::time::timeout(Duration::from_millis(1), left).await.is_err());
        }
        let start = Instant::now();
        budget.acquire(Lane::Periodic).await;
        assert!(start.elapsed() <= Duration::from_millis(100), "waited {:?}", start.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn first_polls_go_before_periodic_ones() {
        let budget = Arc::new(PollBudget::new(10.0, Coordination::solo().slots));
        budget.acquire(Lane::Periodic).await;
        let periodic: Vec<_> = (0..50)
            .map(|_| {
                let budget = Arc::clone(&budget);
                tokio::spawn(async move { budget.acquire(Lane::Periodic).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = Instant::now();
        budget.acquire(Lane::First("caller".into())).await;
        assert!(start.elapsed() <= Duration::from_millis(200), "waited {:?}", start.elapsed());
        for waiter in periodic {
            waiter.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_flood_of_first_polls_slows_periodic_polls_without_stopping_them() {
        let budget = Arc::new(PollBudget::new(10.0, Coordination::solo().slots));
        budget.acquire(Lane::Periodic).await;
        let flood: Vec<_> = (0..100)
            .map(|_| {
                let budget = Arc::clone(&budget);
                tokio::spawn(async move { budget.acquire(Lane::First("caller".into())).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let start = Instant::now();
        budget.acquire(Lane::Periodic).await;
        let waited = start.elapsed();
        assert!(waited <= Duration::from_millis(400) + Duration::from_millis(100), "waited {waited:?}");
        for waiter in flood {
            waiter.abort();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_polls_take_turns_between_callers() {
        let budget = Arc::new(PollBudget::new(10.0, Coordination::solo().slots));
        budget.acquire(Lane::Periodic).await;
        // One caller floods the lane with sixty first polls (watches of unknown ids, say)...
        let flood: Vec<_> = (0..60)
            .map(|_| {
                let budget = Arc::clone(&budget);
                tokio::spawn(async move { budget.acquire(Lane::First("flooder".into())).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1)).await;
        // ...and another caller's first poll is served within two grants, not sixty.
        let start = Instant::now();
        budget.acquire(Lane::First("patient".into())).await;
        assert!(start.elapsed() <= Duration::from_millis(200), "waited {:?}", start.elapsed());
        for waiter in flood {
            waiter.abort();
        }
    }

    /// A shared budget (a GCRA, as the fleet's) that books up to four slots a call, and counts
    /// its calls.
    #[derive(Debug, Default)]
    struct FourAtATime {
        calls: AtomicUsize,
        next_slot: Mutex<Option<Instant>>,
    }

    #[tonic::async_trait]
    impl SlotBooker for FourAtATime {
        async fn book(&self, period: Duration, wanted: u32) -> Booking {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let (now, count) = (Instant::now(), wanted.min(4));
            let mut next_slot = self.next_slot.lock().expect("not poisoned");
            let first = next_slot.map_or(now, |slot| slot.max(now));
            *next_slot = Some(first + period * count);
            Booking::In { first_in: first - now, count, spacing: period }
        }

        fn share(&self, _rate_limit: RateLimit) {}

        fn pause(&self, _duration: Duration) {}
    }

    #[tokio::test(start_paused = true)]
    async fn slots_booked_together_are_granted_a_period_apart() {
        let booker = Arc::new(FourAtATime::default());
        let budget = Arc::new(PollBudget::new(10.0, Arc::clone(&booker) as Arc<dyn SlotBooker>));
        let start = Instant::now();
        let waiters: Vec<_> = (0..8)
            .map(|_| {
                let budget = Arc::clone(&budget);
                tokio::spawn(async move {
                    budget.acquire(Lane::Periodic).await;
                    start.elapsed()
                })
            })
            .collect();
        let mut granted = Vec::new();
        for waiter in waiters {
            granted.push(waiter.await.expect("granted"));
        }
        granted.sort();
        let expected: Vec<Duration> = (0..8).map(|slot| Duration::from_millis(100) * slot).collect();
        assert_eq!(granted, expected);
        assert_eq!(booker.calls.load(Ordering::Relaxed), 2, "eight slots in two bookings");
    }

    #[test]
    fn spacing_spreads_the_remaining_window_over_the_pollers() {
        let budget = PollBudget::new(10.0, Coordination::solo().slots);
        let _a = budget.enlist();
        let _b = budget.enlist();
        let reset = Utc::now() + chrono::Duration::seconds(30);
        budget.record(Some(RateLimit { limit: 60, remaining: 50, reset }));
        assert_eq!(budget.rate_limit_spacing(), Duration::ZERO);
        budget.record(Some(RateLimit { limit: 60, remaining: 10, reset }));
        let spacing = budget.rate_limit_spacing();
        assert!(spacing > Duration::from_secs(5) && spacing <= Duration::from_secs(6), "{spacing:?}");
        budget.record(Some(RateLimit { limit: 60, remaining: 0, reset }));
        assert!(budget.rate_limit_spacing() > Duration::from_secs(29));
    }
}
