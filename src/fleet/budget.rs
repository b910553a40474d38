//! The upstream budget of a fleet: one rate for all the replicas that share a Redis.
//!
//! A GCRA in Redis, on Redis's clock: one key holds the fleet's theoretical arrival time (the
//! earliest moment the next status request may go), and each replica books the next slot when
//! it has polls waiting, then waits for them. Slots are one budget period apart, so over any
//! one-second window the fleet sends at most the budget plus one. A replica books several
//! slots in one call (one call per poll would cost Redis as much as the polls), but no more
//! than its share of [`HORIZON`] and no more than it has polls waiting, then books again when
//! they are used: so the replicas take turns, none books far ahead of what it can use, and a
//! first poll anywhere waits behind at most about a horizon of other polls. Stream's
//! rate-limit window is shared through the same keys: a replica that sees it exhausted (or a
//! 429) pushes the fleet's next slot to the reset, and one that sees it low spreads what is
//! left over the window for everyone.

use std::{
    sync::{LazyLock, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    connection::{FleetError, Redis, millis},
    members::Members,
    script::FleetScript,
};
use crate::{
    task_watch::coordination::{Booking, SlotBooker},
    upstream::RateLimit,
};

/// Books the next `ARGV[2]` slots, `ARGV[1]` µs apart (or more while the fleet slows down);
/// returns how long to wait for the first (µs) and the time between them (µs).
static RESERVE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA budget.reserve",
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local step = tonumber(ARGV[1])
local slower = tonumber(redis.call('GET', KEYS[2]) or '0')
if slower > step then step = slower end
local next = tat + step * tonumber(ARGV[2])
redis.call('SET', KEYS[1], string.format('%.0f', next), 'PX', math.floor((next - now) / 1000) + 1000)
return {tat - now, step}
",
    )
});

/// No slot before `now + ARGV[1]` µs.
static PAUSE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA budget.pause",
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local resume = now + tonumber(ARGV[1])
if resume > tonumber(redis.call('GET', KEYS[1]) or '0') then
  redis.call('SET', KEYS[1], string.format('%.0f', resume), 'PX', math.floor(tonumber(ARGV[1]) / 1000) + 1000)
end
return 1
",
    )
});

/// Slots at least `ARGV[1]` µs apart for the next `ARGV[2]` ms.
static SLOW_DOWN: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new("EVALSHA budget.slow_down", "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1")
});

/// How far ahead of now the slots that the replicas book in one call reach together: each
/// books at most its share of it (at least one slot).
pub const HORIZON: Duration = Duration::from_millis(250);

/// Below this share of Stream's window left, the fleet spreads what is left over the window.
const LOW_REMAINING_SHARE: f64 = 0.5;

/// How long a replica paces on its own after Redis failed to book a slot: a partitioned Redis
/// would otherwise cost every grant a call timeout.
const ALONE_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The fleet's upstream budget in Redis.
#[derive(Debug)]
pub struct FleetBudget {
    redis: Redis,
    members: Members,
    next_slot: String,
    spacing: String,
    /// Until when Redis is left alone after a failed booking.
    alone_until: Mutex<Option<Instant>>,
}

impl FleetBudget {
    /// The poll budget of the fleet that `members` belongs to, kept in `redis`.
    pub fn new(redis: Redis, members: Members) -> Self {
        Self::named(redis, members, "polls")
    }

    /// The budget `name` (`polls`, `exports`) of the fleet that `members` belongs to.
    pub fn named(redis: Redis, members: Members, name: &str) -> Self {
        let next_slot = redis.key("budget", name, "next_slot");
        let spacing = redis.key("budget", name, "spacing");
        Self { redis, members, next_slot, spacing, alone_until: Mutex::new(None) }
    }

    /// Books the fleet's next `count` slots, the first one `period` after the last one booked;
    /// returns how long to wait for the first, and the time between them.
    pub async fn reserve(&self, period: Duration, count: u32) -> Result<(Duration, Duration), FleetError> {
        let reserve = RESERVE.call().key(&self.next_slot).key(&self.spacing).arg(micros(period)).arg(count.max(1));
        let (wait, spacing): (i64, i64) = reserve.quiet().run(&self.redis).await?;
        let micros = |value: i64| Duration::from_micros(u64::try_from(value).unwrap_or(0));
        Ok((micros(wait), micros(spacing)))
    }

    /// How many slots this replica books at most in one call: its share of [`HORIZON`].
    fn most_per_booking(&self, period: Duration) -> u32 {
        let replicas = u32::try_from(self.members.last_seen_alive()).unwrap_or(u32::MAX).max(1);
        let share = HORIZON.as_secs_f64() / period.as_secs_f64().max(f64::EPSILON) / f64::from(replicas);
        (share as u32).max(1)
    }
}

#[tonic::async_trait]
impl SlotBooker for FleetBudget {
    /// Books the fleet's next slots (up to `wanted`, and this replica's share of the horizon);
    /// while Redis is unreachable (and for a while after it failed to answer), paces alone at
    /// this replica's share of the budget.
    async fn book(&self, period: Duration, wanted: u32) -> Booking {
        let now = Instant::now();
        let mut alone_until = self.alone_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if alone_until.is_none_or(|until| now >= until) {
            let count = wanted.clamp(1, self.most_per_booking(period));
            match self.reserve(period, count).await {
                Ok((first_in, spacing)) => return Booking::In { first_in, count, spacing },
                Err(_) => alone_until = Some(Instant::now() + ALONE_AFTER_FAILURE),
            }
        }
        *self.alone_until.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = alone_until;
        Booking::Alone { replicas: u32::try_from(self.members.last_seen_alive()).unwrap_or(u32::MAX) }
    }

    /// Exhausted, nobody polls before the reset; low, the fleet's polls are spread over what is
    /// left. Nothing while plenty is left.
    fn share(&self, rate_limit: RateLimit) {
        let until_reset = rate_limit.until_reset();
        if until_reset.is_zero() || (rate_limit.remaining as f64) >= (rate_limit.limit as f64) * LOW_REMAINING_SHARE {
            return;
        }
        if rate_limit.remaining == 0 {
            return self.pause(until_reset);
        }
        let spacing = until_reset / u32::try_from(rate_limit.remaining).unwrap_or(u32::MAX);
        let (redis, key) = (self.redis.clone(), self.spacing.clone());
        tokio::spawn(async move {
            let slow_down = SLOW_DOWN.call().key(&key).arg(micros(spacing)).arg(millis(until_reset).max(1));
            let _ = slow_down.run::<i64>(&redis).await;
        });
    }

    fn pause(&self, duration: Duration) {
        let (redis, key) = (self.redis.clone(), self.next_slot.clone());
        tokio::spawn(async move {
            let _ = PAUSE.call().key(&key).arg(micros(duration)).run::<i64>(&redis).await;
        });
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
