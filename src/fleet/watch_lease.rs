//! The hub's fleet mode: one poller per task for all the replicas that share a Redis.
//!
//! Per task, two keys in one hash-tag slot: `lease` (the id of the replica that polls it, with
//! a short lease that it renews while it polls, with all its other leases: see `renewals`)
//! and `view` (a hash: `seq`, the latest observation as `data`, `final` once the task ended).
//! `seq` only grows, even across a view that expired (a task polled less often than its view
//! lives, under a budget that binds) or a Redis that restarted empty: each write takes Redis's
//! clock in µs, or one more than the last `seq` if that is later. A follower relays a view
//! whose `seq` is above its own, so a `seq` that started again from 1 would hide every change
//! from followers that had seen the first ones. The leader's renewals keep the view alive too.
//! The replica that holds the lease polls Stream, writes each observation to `view` and
//! announces it (see `changes`); the others follow: when a change is announced (or, unheard,
//! every follow interval), and when the lease would run out, they read `view`, relay what is
//! new to their watchers, and take the lease when it is free (its holder died, or stopped
//! because its last watcher left, which it announces too). A final observation stays for the
//! retention period, so that no replica polls a finished task again.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use chrono::{DateTime, Utc};
use prost::Message;
use tonic::Status;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{
    changes::Changes,
    connection::{Redis, millis},
    follows::Follows,
    lease::{Lease, with_lease},
    members::Members,
    renewals::Renewals,
    script::FleetScript,
};
use crate::{
    contract::task::timestamp,
    proto::Task,
    task_watch::{
        coordination::{Followed, PollCoordinator, SharedView, Unreachable, Urgency},
        view::{Observation, TaskView},
    },
};

/// Writes an observation if this replica leads (claiming a free lease: after a Redis restart
/// the first replica to write leads), and announces it on the channel `ARGV[6]` (the task id,
/// `ARGV[7]`). Returns its `seq`, or 0 if another replica leads.
static PUBLISH: LazyLock<FleetScript> = LazyLock::new(|| {
    with_lease(
        "EVALSHA watch.publish",
        r"
if lease_claim(KEYS[1], ARGV[1], ARGV[2]) ~= ARGV[1] then return 0 end
local t = redis.call('TIME')
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0') + 1
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > seq then seq = now end
redis.call('HSET', KEYS[2], 'seq', string.format('%.0f', seq), 'data', ARGV[3])
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], 'final', '1')
  lease_release(KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[6], string.format('%.0f', seq) .. ' ' .. string.len(ARGV[7]) .. ' ' .. ARGV[7] .. ARGV[3])
return seq
",
    )
});

/// Lets the lease go if this replica holds it, and announces it on the channel `ARGV[2]` (the
/// task id, `ARGV[3]`), so that a follower with watchers takes the poll over at once.
static RELEASE: LazyLock<FleetScript> = LazyLock::new(|| {
    with_lease(
        "EVALSHA watch.release",
        r"
if lease_release(KEYS[1], ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], '0 ' .. string.len(ARGV[3]) .. ' ' .. ARGV[3])
end
return 0
",
    )
});

/// The longest a follower waits between reads of a task's view when changes are announced:
/// the safety net for a missed announcement.
const READ_AT_LEAST_EVERY: Duration = Duration::from_secs(5);

/// How long a task's latest (not final) observation is kept after its last write: long enough
/// for a poller at the longest interval to write again, short enough that a late watcher of a
/// task nobody polled for a while waits for a fresh poll instead of an old snapshot.
const VIEW_TTL_FACTOR: u32 = 3;

/// How many times a lease is renewed within its TTL: a renewal that Redis misses leaves time
/// for the next.
const RENEWALS_PER_LEASE: u32 = 3;

/// How the replicas of a fleet share their tasks' polls, through Redis.
#[derive(Clone, Debug)]
pub struct FleetView {
    redis: Redis,
    members: Members,
    lease: Duration,
    /// How often a follower reads the shared view.
    follow_interval: Duration,
    /// The leases this replica holds, renewed together.
    renewals: Arc<Renewals>,
    /// The reads of the tasks this replica follows, made together.
    follows: Arc<Follows>,
    /// The changes announced by the replicas that poll, and the channel they are announced on.
    changes: Changes,
    channel: String,
}

/// The wire form of a [`TaskView`] in Redis.
#[derive(Clone, PartialEq, Message)]
struct StoredView {
    #[prost(message, optional, tag = "1")]
    task: Option<Task>,
    #[prost(message, optional, tag = "2")]
    polled_at: Option<prost_types::Timestamp>,
    /// The gRPC code of an ended watch (0: not ended).
    #[prost(int32, tag = "3")]
    status_code: i32,
    #[prost(string, tag = "4")]
    status_message: String,
    #[prost(bytes = "vec", tag = "5")]
    status_details: Vec<u8>,
}

impl FleetView {
    /// Shares polls through `redis`, as the replica `members` names. A replica that dies while
    /// polling is replaced after `lease` at most (plus a follow interval).
    /// Changes are announced by pub/sub, heard until `shutdown`.
    pub fn new(
        redis: Redis,
        members: Members,
        lease: Duration,
        follow_interval: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let every = lease / RENEWALS_PER_LEASE;
        let renewals = Renewals::new(redis.clone(), members.id().to_owned(), millis(lease), every);
        let follows = Follows::new(redis.clone(), members.id().to_owned(), millis(lease), follow_interval);
        let channel = redis.channel("watch:changed");
        let changes = Changes::start(&redis, channel.clone(), shutdown);
        let (renewals, follows) = (Arc::new(renewals), Arc::new(follows));
        Self { redis, members, lease, follow_interval, renewals, follows, changes, channel }
    }

    /// This replica's lease on polling `task_id`, and the key of the task's shared view (in
    /// the lease's hash-tag slot).
    fn keys(&self, task_id: &str) -> (Lease, String) {
        let lease =
            Lease::new(self.redis.clone(), self.redis.key("watch", task_id, "lease"), self.members.id(), self.lease);
        (lease, self.redis.key("watch", task_id, "view"))
    }
}

#[tonic::async_trait]
impl PollCoordinator for FleetView {
    fn leads_at_once(&self) -> bool {
        false
    }

    fn announcements(&self, task_id: &str) -> Option<Arc<Notify>> {
        Some(self.changes.follower(task_id))
    }

    fn renew_interval(&self) -> Option<Duration> {
        Some(self.lease / RENEWALS_PER_LEASE)
    }

    async fn follow(&self, task_id: &str, seq: i64, urgency: Urgency) -> Result<Followed, Unreachable> {
        // An announced observation is relayed as it is: its leader just wrote it under a lease
        // renewed by that write, so there is nothing to take over until that lease runs out.
        if let Some((announced, data)) = self.changes.take_announced(task_id)
            && announced > seq
            && let Some(view) = decode(&data)
        {
            let read_again_in = self.lease.clamp(self.follow_interval, READ_AT_LEAST_EVERY);
            return Ok(Followed { leading: false, update: Some(SharedView { seq: announced, view }), read_again_in });
        }
        let (lease, view) = self.keys(task_id);
        let read = self.follows.read(lease.key().to_owned(), view, seq, urgency).await?;
        let (seq, lease_left) = (read.seq, read.lease_left_ms);
        let update = (!read.data.is_empty()).then(|| decode(&read.data)).flatten().map(|view| SharedView { seq, view });
        // Announced changes wake the follower; otherwise it reads again when the leader's lease
        // would run out (were the leader dead, it takes over then), and at least every few
        // seconds. Unannounced (or with no lease), it reads in the replica's next batch of
        // reads, one follow interval away at most.
        let read_again_in = match u64::try_from(lease_left) {
            Ok(left) if self.changes.live() => {
                Duration::from_millis(left).clamp(self.follow_interval, READ_AT_LEAST_EVERY)
            }
            _ => Duration::ZERO,
        };
        Ok(Followed { leading: read.leading, update, read_again_in })
    }

    async fn publish(
        &self,
        task_id: &str,
        view: &TaskView,
        last: Option<Duration>,
        poll_interval_max: Duration,
    ) -> Result<Option<i64>, Unreachable> {
        let (lease, key) = self.keys(task_id);
        // Not final: at least a lease, so that the leader's renewals keep it (see `renewals`).
        let ttl = last.unwrap_or((poll_interval_max * VIEW_TTL_FACTOR).max(self.lease)).max(Duration::from_millis(1));
        let publish = PUBLISH
            .call()
            .key(lease.key())
            .key(&key)
            .arg(lease.owner())
            .arg(lease.ttl_millis())
            .arg(encode(view))
            .arg(if last.is_some() { "1" } else { "0" })
            .arg(millis(ttl))
            .arg(&self.channel)
            .arg(task_id);
        let seq: i64 = publish.run(&self.redis).await?;
        Ok((seq > 0).then_some(seq))
    }

    async fn renew(&self, task_id: &str) -> Result<bool, Unreachable> {
        let (lease, view) = self.keys(task_id);
        self.renewals.next(task_id, lease.key().to_owned(), view).await
    }

    fn release(&self, task_id: &str) {
        let (lease, _) = self.keys(task_id);
        self.renewals.forget(task_id);
        let (redis, channel, task_id) = (self.redis.clone(), self.channel.clone(), task_id.to_owned());
        tokio::spawn(async move {
            let release = RELEASE.call().key(lease.key()).arg(lease.owner()).arg(channel).arg(task_id);
            let _ = release.run::<i64>(&redis).await;
        });
    }
}

fn encode(view: &TaskView) -> Vec<u8> {
    let mut stored = StoredView { polled_at: view.polled_at.map(timestamp), ..StoredView::default() };
    match &view.observation {
        Observation::Pending => {}
        Observation::Task(task) => stored.task = Some(Task::clone(task)),
        Observation::Ended(status) => {
            stored.status_code = status.code() as i32;
            stored.status_message = status.message().to_owned();
            stored.status_details = status.details().to_vec();
        }
    }
    stored.encode_to_vec()
}

/// Reads a stored view; `None` if it is not one (written by an incompatible version).
fn decode(data: &[u8]) -> Option<TaskView> {
    let stored = StoredView::decode(data).ok()?;
    let polled_at = stored
        .polled_at
        .and_then(|at| DateTime::<Utc>::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap_or(0)));
    let observation = match (stored.task, stored.status_code) {
        (_, code) if code != 0 => Observation::Ended(Status::with_details(
            tonic::Code::from_i32(code),
            stored.status_message,
            stored.status_details.into(),
        )),
        (Some(task), _) => Observation::Task(Box::new(task)),
        (None, _) => Observation::Pending,
    };
    Some(TaskView { observation, polled_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::TaskState;

    #[test]
    fn views_survive_the_round_trip_through_redis() {
        let polled_at = DateTime::<Utc>::from_timestamp(1_764_000_000, 123_456_000);
        let mut task = Task { task_id: "t-1".into(), ..Task::default() };
        task.set_state(TaskState::Completed);
        let view = TaskView { observation: Observation::Task(Box::new(task.clone())), polled_at };
        let back = decode(&encode(&view)).expect("decodes");
        assert_eq!(back.task(), Some(&task));
        assert_eq!(back.polled_at, polled_at);

        let ended = TaskView {
            observation: Observation::Ended(Status::with_details(
                tonic::Code::NotFound,
                "no such task",
                vec![1, 2].into(),
            )),
            polled_at: None,
        };
        let Observation::Ended(status) = decode(&encode(&ended)).expect("decodes").observation else {
            panic!("not ended")
        };
        assert_eq!(
            (status.code(), status.message(), status.details()),
            (tonic::Code::NotFound, "no such task", &[1u8, 2][..])
        );
    }
}
