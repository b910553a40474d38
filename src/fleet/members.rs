//! The replicas that share the fleet's Redis, counted by heartbeat. While Redis is
//! unreachable, each replica polls under its share of the fleet's upstream budget: the budget
//! divided by the number of replicas last seen alive.

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio_util::sync::CancellationToken;

use super::{
    connection::{Redis, millis},
    script::FleetScript,
};

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// A replica not heard from for this long is no longer counted.
pub const ALIVE_FOR: Duration = Duration::from_secs(5);

/// Records this replica's heartbeat (on Redis's clock), forgets the silent ones, and returns
/// how many are alive and the least id among them (the oldest replica, which runs the fleet's
/// singletons, such as the schedules' loop: chosen at no extra call).
static BEAT: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA members.beat",
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
local alive = redis.call('ZRANGE', KEYS[1], 0, -1)
local first = alive[1] or ''
for _, id in ipairs(alive) do if id < first then first = id end end
return {#alive, first}
",
    )
});

/// Leaves the fleet (at shutdown), so that the others' share grows at once.
static LEAVE: LazyLock<FleetScript> =
    LazyLock::new(|| FleetScript::new("EVALSHA members.leave", "return redis.call('ZREM', KEYS[1], ARGV[1])"));

/// This replica's membership of the fleet. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Members {
    id: Arc<str>,
    alive: Arc<AtomicUsize>,
    /// Whether this replica had the least id alive at the last heartbeat Redis answered.
    first: Arc<AtomicBool>,
}

impl Members {
    /// Joins the fleet: beats every [`HEARTBEAT`] until `shutdown`, then leaves.
    pub fn start(redis: Redis, shutdown: CancellationToken) -> Self {
        let members = Self {
            // The start time first: the least id alive is the oldest replica, so a replica that
            // joins does not take the fleet's singletons over from one that runs them.
            id: format!("{:016x}-{}", chrono::Utc::now().timestamp_micros(), uuid::Uuid::new_v4()).into(),
            alive: Arc::new(AtomicUsize::new(1)),
            first: Arc::new(AtomicBool::new(false)),
        };
        tokio::spawn(members.clone().beat(redis, shutdown));
        members
    }

    /// This replica's id in the fleet (its start time and a random part, one per process).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The replicas alive at the last heartbeat that Redis answered, this one included.
    pub fn last_seen_alive(&self) -> usize {
        self.alive.load(Ordering::Relaxed).max(1)
    }

    /// Whether this replica runs the fleet's singletons: it had the least id among the replicas
    /// alive at the last heartbeat. Two replicas may both think so for a heartbeat (or none,
    /// while Redis does not answer): what they run must be safe to run twice.
    pub fn is_first(&self) -> bool {
        self.first.load(Ordering::Relaxed)
    }

    async fn beat(self, redis: Redis, shutdown: CancellationToken) {
        let key = redis.key("members", "fleet", "replicas");
        let mut ticks = tokio::time::interval(HEARTBEAT);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            let beat = BEAT.call().key(&key).arg(&*self.id).arg(millis(ALIVE_FOR)).quiet();
            if let Ok((alive, first)) = beat.run::<(usize, String)>(&redis).await {
                self.alive.store(alive, Ordering::Relaxed);
                self.first.store(first == *self.id, Ordering::Relaxed);
            }
        }
        let _ = LEAVE.call().key(&key).arg(&*self.id).run::<i64>(&redis).await;
    }
}

impl crate::jobs::schedules::LoopLeader for Members {
    fn leads(&self) -> bool {
        self.is_first()
    }
}
