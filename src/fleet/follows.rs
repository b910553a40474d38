//! A replica's reads of the tasks it follows, made together: one script call reads the shared
//! views of every task whose follower asked since the last call (on a Redis Cluster, one call
//! per slot), instead of one call per follower.
//!
//! A follower asks either [`Urgency::Now`] (it has nothing to relay yet, or a change was
//! announced that it must read: the call goes at once, with whatever else is asked meanwhile)
//! or [`Urgency::Soon`] (its periodic check that the leader's lease still holds: it waits for
//! the next call, at most one follow interval away). A replica thus makes at most one call per
//! follow interval for its checks, however many tasks it follows, and reads what is urgent
//! within one round trip.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use futures::future::join_all;
use tokio::sync::{Notify, oneshot};

use super::{connection::Redis, lease::with_lease, script::FleetScript};
use crate::task_watch::coordination::{Unreachable, Urgency};

/// For each task (`KEYS`: its lease then its view; `ARGV[2 + n]`: the `seq` its follower has),
/// claims the lease unless the task is final, and reads the view unless it is still at that
/// `seq`. Returns four values per task: leading (1/0), `seq`, the stored view (empty if
/// unchanged) and how long the lease has left in ms (negative: none).
static FOLLOW_ALL: std::sync::LazyLock<FleetScript> = std::sync::LazyLock::new(|| {
    with_lease(
        "EVALSHA watch.follow_all",
        r"
local read = {}
for i = 1, #KEYS, 2 do
  local lease, view = KEYS[i], KEYS[i + 1]
  local leading = 0
  if redis.call('HEXISTS', view, 'final') == 0 and lease_claim(lease, ARGV[1], ARGV[2]) == ARGV[1] then
    leading = 1
  end
  local seq = tonumber(redis.call('HGET', view, 'seq') or '0')
  local data = ''
  if seq ~= tonumber(ARGV[2 + (i + 1) / 2]) then data = redis.call('HGET', view, 'data') or '' end
  read[#read + 1] = leading
  read[#read + 1] = seq
  read[#read + 1] = data
  read[#read + 1] = redis.call('PTTL', lease)
end
return read
",
    )
});

/// What one task's read found.
pub(super) struct FollowRead {
    /// Whether this replica holds the task's lease now.
    pub leading: bool,
    /// The shared view's `seq`.
    pub seq: i64,
    /// The stored view, empty if still at the follower's `seq`.
    pub data: Vec<u8>,
    /// How long the lease has left, in ms (negative: there is none).
    pub lease_left_ms: i64,
}

type Told = Result<FollowRead, Unreachable>;

/// One follower's read, waiting for the next call.
struct Asked {
    lease: String,
    view: String,
    seq: i64,
    tell: oneshot::Sender<Told>,
}

/// The reads of one replica's followers.
pub(super) struct Follows {
    redis: Redis,
    owner: String,
    ttl_millis: u64,
    /// The longest a [`Urgency::Soon`] read waits for its call.
    every: Duration,
    asked: Arc<Mutex<Vec<Asked>>>,
    /// Notified when a read is asked [`Urgency::Now`].
    urgent: Arc<Notify>,
    /// Whether the background task runs (started at the first ask, in the runtime).
    started: std::sync::Once,
}

impl std::fmt::Debug for Follows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follows").field("every", &self.every).finish_non_exhaustive()
    }
}

impl Follows {
    /// The reads of the followers of the replica `owner`, whose leases last `ttl_millis` when
    /// it takes them; checks wait at most `every` for their call.
    pub(super) fn new(redis: Redis, owner: String, ttl_millis: u64, every: Duration) -> Self {
        Self {
            redis,
            owner,
            ttl_millis,
            every,
            asked: Arc::default(),
            urgent: Arc::default(),
            started: std::sync::Once::new(),
        }
    }

    /// Reads one task's view (key `view`, the follower at `seq`), taking its lease (`lease`)
    /// if it is free, in the next call.
    pub(super) async fn read(&self, lease: String, view: String, seq: i64, urgency: Urgency) -> Told {
        self.started.call_once(|| {
            let (asked, urgent) = (Arc::downgrade(&self.asked), Arc::clone(&self.urgent));
            let call = Call { redis: self.redis.clone(), owner: self.owner.clone(), ttl_millis: self.ttl_millis };
            tokio::spawn(read_when_asked(call, self.every, asked, urgent));
        });
        let (tell, told) = oneshot::channel();
        lock(&self.asked).push(Asked { lease, view, seq, tell });
        if urgency == Urgency::Now {
            self.urgent.notify_one();
        }
        told.await.unwrap_or_else(|_| Err(Unreachable("the follows' reads stopped".to_owned())))
    }
}

/// What every call of one replica shares.
struct Call {
    redis: Redis,
    owner: String,
    ttl_millis: u64,
}

/// Makes a call when a read is urgent, or `every` at the latest while reads wait, until the
/// [`Follows`] are dropped. Reads asked during a call go in the next.
async fn read_when_asked(call: Call, every: Duration, asked: Weak<Mutex<Vec<Asked>>>, urgent: Arc<Notify>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = urgent.notified() => {}
        }
        let Some(asked) = asked.upgrade() else { return };
        let reads = std::mem::take(&mut *lock(&asked));
        drop(asked);
        // A follower that stopped waiting (its watchers left) needs no read.
        let reads: Vec<Asked> = reads.into_iter().filter(|read| !read.tell.is_closed()).collect();
        if reads.is_empty() {
            continue;
        }
        let mut by_slot: HashMap<Option<u16>, Vec<Asked>> = HashMap::new();
        for read in reads {
            by_slot.entry(call.redis.slot(&read.lease)).or_default().push(read);
        }
        join_all(by_slot.into_values().map(|group| call.read(group))).await;
    }
}

impl Call {
    /// Reads one slot's views in one call, and tells their followers.
    async fn read(&self, group: Vec<Asked>) {
        let mut script = FOLLOW_ALL.call().quiet();
        for read in &group {
            script = script.key(&read.lease).key(&read.view);
        }
        script = script.arg(&self.owner).arg(self.ttl_millis);
        for read in &group {
            script = script.arg(read.seq);
        }
        let answer: Result<Vec<redis::Value>, Unreachable> = script.run(&self.redis).await.map_err(Unreachable::from);
        let mut values = answer.map(Vec::into_iter);
        for read in group {
            let told = match &mut values {
                Ok(values) => parse(values),
                Err(error) => Err(error.clone()),
            };
            let _ = read.tell.send(told);
        }
    }
}

/// The next task's four values of a [`FOLLOW_ALL`] answer.
fn parse(values: &mut impl Iterator<Item = redis::Value>) -> Told {
    let leading: i64 = next(values)?;
    Ok(FollowRead { leading: leading == 1, seq: next(values)?, data: next(values)?, lease_left_ms: next(values)? })
}

fn next<T: redis::FromRedisValue>(values: &mut impl Iterator<Item = redis::Value>) -> Result<T, Unreachable> {
    let value = values.next().ok_or_else(|| Unreachable("a short answer to the follows' read".to_owned()))?;
    redis::from_redis_value(value)
        .map_err(|error| Unreachable(format!("an unexpected answer to the follows' read: {error}")))
}

fn lock(asked: &Mutex<Vec<Asked>>) -> std::sync::MutexGuard<'_, Vec<Asked>> {
    asked.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
