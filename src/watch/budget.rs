//! The upstream request budget shared by every poller of a replica.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;

use crate::stream::RateLimit;

/// Below this share of Stream's window left, pollers spread what is left over the window.
const LOW_REMAINING_SHARE: f64 = 0.5;

/// Paces the status polls of all pollers to at most a fixed rate, first come first served.
///
/// A poller reserves the next free slot and sleeps until it. Each poller holds at most one
/// reservation at a time, so when the budget is saturated every watched task gets one poll
/// per round: a thousand tasks degrade freshness evenly instead of tripping Stream's limit.
/// (A token bucket such as `governor` caps the rate too, but waiters race for tokens instead
/// of queueing, so a busy task could starve a quiet one.)
#[derive(Debug)]
pub struct PollBudget {
    period: Duration,
    next_slot: Mutex<Instant>,
    last_rate_limit: Mutex<Option<RateLimit>>,
    pollers: AtomicUsize,
}

impl PollBudget {
    /// A budget of `per_second` upstream status requests per second.
    pub fn new(per_second: f64) -> Self {
        Self {
            period: Duration::from_secs_f64(1.0 / per_second.max(0.001)),
            next_slot: Mutex::new(Instant::now()),
            last_rate_limit: Mutex::new(None),
            pollers: AtomicUsize::new(0),
        }
    }

    /// Waits for this poller's turn to send one request.
    pub async fn acquire(&self) {
        let slot = {
            let mut next = self.next_slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + self.period;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    /// Records the rate-limit window that Stream reported on a status request.
    pub fn record(&self, rate_limit: Option<RateLimit>) {
        if let Some(rate_limit) = rate_limit {
            *self.last_rate_limit.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(rate_limit);
        }
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

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_by_the_period() {
        let budget = PollBudget::new(10.0);
        let start = Instant::now();
        for _ in 0..5 {
            budget.acquire().await;
        }
        assert_eq!(start.elapsed(), Duration::from_millis(400));
    }

    #[test]
    fn spacing_spreads_the_remaining_window_over_the_pollers() {
        let budget = PollBudget::new(10.0);
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
