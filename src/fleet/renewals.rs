//! A replica's watch leases, renewed together: one script call per renew interval keeps every
//! lease the replica's pollers hold (on a Redis Cluster, one call per slot, since a script
//! may only use the keys of one slot), instead of one call per task.
//!
//! Each leading poller asks for the next renewal of its lease ([`Renewals::next`]); a
//! background task, started at the first ask, renews all the leases asked for once per
//! interval and tells each poller whether its lease was kept. A lease lost (taken by another
//! replica after it ran out during a partition, or the task became final) is thus noticed
//! within one interval, as when each poller renewed its own.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use futures::future::join_all;
use tokio::sync::oneshot;

use super::{connection::Redis, lease::with_lease, script::FleetScript};
use crate::task_watch::coordination::Unreachable;

/// Claims each lease (extends it, or takes it if free) unless its task is final, and keeps the
/// task's view at least as long (a task polled less often than its view lives, under a budget
/// that binds, keeps its latest observation for late watchers). `KEYS`: each task's lease then
/// view; returns one 1 (kept) or 0 (another replica leads, or the task is final) per task.
static RENEW_ALL: std::sync::LazyLock<FleetScript> = std::sync::LazyLock::new(|| {
    with_lease(
        "EVALSHA watch.renew_all",
        r"
local kept = {}
for i = 1, #KEYS, 2 do
  local ok = 0
  if redis.call('HEXISTS', KEYS[i + 1], 'final') == 0 and lease_claim(KEYS[i], ARGV[1], ARGV[2]) == ARGV[1] then
    ok = 1
    local left = redis.call('PTTL', KEYS[i + 1])
    if left >= 0 and left < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[i + 1], ARGV[2]) end
  end
  kept[#kept + 1] = ok
end
return kept
",
    )
});

/// What a renewal tells a poller: whether its lease was kept (`Err`: Redis did not answer).
type Renewed = Result<bool, Unreachable>;

/// The pollers waiting for the next renewal, by task: each task's lease key, view key, and
/// the pollers to tell.
#[derive(Default)]
struct Waiting {
    tasks: HashMap<String, Asked>,
}

struct Asked {
    lease: String,
    view: String,
    tell: Vec<oneshot::Sender<Renewed>>,
}

/// The renewals of one replica's watch leases.
pub(super) struct Renewals {
    redis: Redis,
    owner: String,
    ttl_millis: u64,
    every: Duration,
    waiting: Arc<Mutex<Waiting>>,
    /// Whether the background task runs (started at the first ask, in the runtime).
    started: std::sync::Once,
}

impl std::fmt::Debug for Renewals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renewals").field("every", &self.every).finish_non_exhaustive()
    }
}

impl Renewals {
    /// The renewals of the leases `owner` holds, each lasting `ttl_millis`, every `every`.
    pub(super) fn new(redis: Redis, owner: String, ttl_millis: u64, every: Duration) -> Self {
        Self { redis, owner, ttl_millis, every, waiting: Arc::default(), started: std::sync::Once::new() }
    }

    /// Waits for the next renewal of this replica's leases, and says whether the lease of
    /// `task_id` (its key `lease`, its view `view`) was kept.
    pub(super) async fn next(&self, task_id: &str, lease: String, view: String) -> Renewed {
        self.started.call_once(|| {
            tokio::spawn(renew_every(self.redis.clone(), self.owner.clone(), self.ttl_millis, self.every, {
                Arc::downgrade(&self.waiting)
            }));
        });
        let (tell, told) = oneshot::channel();
        {
            let mut waiting = lock(&self.waiting);
            let asked =
                waiting.tasks.entry(task_id.to_owned()).or_insert_with(|| Asked { lease, view, tell: Vec::new() });
            asked.tell.push(tell);
        }
        told.await.unwrap_or_else(|_| Err(Unreachable("the lease renewals stopped".to_owned())))
    }

    /// Forgets the pending renewal of `task_id` (its lease is being released).
    pub(super) fn forget(&self, task_id: &str) {
        lock(&self.waiting).tasks.remove(task_id);
    }
}

/// Every `every`, renews the leases asked for since the last renewal, in one call per slot,
/// until the [`Renewals`] are dropped.
async fn renew_every(redis: Redis, owner: String, ttl_millis: u64, every: Duration, waiting: Weak<Mutex<Waiting>>) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(waiting) = waiting.upgrade() else { return };
        let asked = std::mem::take(&mut lock(&waiting).tasks);
        drop(waiting);
        // A poller that stopped waiting (it stopped leading) no longer holds its lease.
        let asked: Vec<Asked> = asked
            .into_values()
            .filter_map(|mut asked| {
                asked.tell.retain(|tell| !tell.is_closed());
                (!asked.tell.is_empty()).then_some(asked)
            })
            .collect();
        if asked.is_empty() {
            continue;
        }
        let mut by_slot: HashMap<Option<u16>, Vec<Asked>> = HashMap::new();
        for asked in asked {
            by_slot.entry(redis.slot(&asked.lease)).or_default().push(asked);
        }
        join_all(by_slot.into_values().map(|group| renew(&redis, &owner, ttl_millis, group))).await;
    }
}

/// Renews one slot's leases in one call, and tells their pollers.
async fn renew(redis: &Redis, owner: &str, ttl_millis: u64, group: Vec<Asked>) {
    let mut call = RENEW_ALL.call().quiet();
    for asked in &group {
        call = call.key(&asked.lease).key(&asked.view);
    }
    let kept: Result<Vec<i64>, Unreachable> =
        call.arg(owner).arg(ttl_millis).run(redis).await.map_err(Unreachable::from);
    for (at, asked) in group.into_iter().enumerate() {
        let renewed = match &kept {
            Ok(kept) => Ok(kept.get(at) == Some(&1)),
            Err(error) => Err(error.clone()),
        };
        for tell in asked.tell {
            let _ = tell.send(renewed.clone());
        }
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
