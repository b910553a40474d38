//! Announcements of new watch observations, by Redis pub/sub: the replica that polls a task
//! publishes each observation it writes on the deployment's channel (with the task id and
//! its `seq`; the task id alone when it lets the lease go), and every replica keeps one
//! subscription to that channel, which hands the observation to the replica's follower of
//! that task and wakes it at once. Followers then relay a change without reading Redis, and
//! read a task's view only when the lease may have changed hands.
//!
//! A message can be missed (a reconnect, a slow subscriber): followers still read each view
//! at least once a lease (when a dead leader's lease would run out; see
//! `watch_lease::FleetView::follow`), and on each (re)subscription every follower reads its
//! view again. Without a subscription (connecting, or resubscribing), followers read every
//! follow interval, as without announcements. On a Redis Cluster the subscription is to one
//! node (the next one after a failure): a message published on any node reaches them all.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::StreamExt;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::connection::{CALL_TIMEOUT, Redis};

/// The announcements this replica hears. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether the subscription is up: only then may followers wait for announcements.
    live: AtomicBool,
    /// The followers of this replica, by task (one per task; gone when its follower is).
    followers: Mutex<HashMap<String, Weak<Notify>>>,
    /// The newest observation announced of each followed task, not yet taken by its follower:
    /// its `seq` and stored view.
    announced: Mutex<HashMap<String, (i64, Vec<u8>)>>,
}

impl Changes {
    /// Subscribes to `channel` on `redis` until `shutdown`, resubscribing after each loss.
    pub fn start(redis: &Redis, channel: String, shutdown: CancellationToken) -> Self {
        let changes = Self::default();
        tokio::spawn(subscribe(redis.subscribers(), channel, Arc::downgrade(&changes.inner), shutdown));
        changes
    }

    /// Whether announcements are heard now.
    pub fn live(&self) -> bool {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// What the follower of `task_id` waits on: notified when a change is announced (a permit
    /// is kept if it is not waiting at that moment).
    pub fn follower(&self, task_id: &str) -> Arc<Notify> {
        let mut followers = lock(&self.inner.followers);
        if let Some(notify) = followers.get(task_id).and_then(Weak::upgrade) {
            return notify;
        }
        let notify = Arc::new(Notify::new());
        followers.insert(task_id.to_owned(), Arc::downgrade(&notify));
        notify
    }

    /// The newest observation of `task_id` announced since the last take, if any: its `seq`
    /// and stored view.
    pub fn take_announced(&self, task_id: &str) -> Option<(i64, Vec<u8>)> {
        lock(&self.inner.announced).remove(task_id)
    }
}

/// The task id, `seq` and stored view of an announcement (`<seq> <task id's length> <task
/// id><stored view>`, written by `watch_lease`'s scripts; `seq` 0 and no view: the lease was
/// let go); `None` if it is not one.
fn parse(words: &[u8]) -> Option<(&str, i64, &[u8])> {
    let (seq, rest) = split_word(words)?;
    let (length, rest) = split_word(rest)?;
    let length: usize = length.parse().ok()?;
    let task_id = std::str::from_utf8(rest.get(..length)?).ok()?;
    Some((task_id, seq.parse().ok()?, rest.get(length..)?))
}

fn split_word(words: &[u8]) -> Option<(&str, &[u8])> {
    let space = words.iter().position(|&byte| byte == b' ')?;
    Some((std::str::from_utf8(&words[..space]).ok()?, &words[space + 1..]))
}

impl Inner {
    fn announced(&self, task_id: &str, seq: i64, view: &[u8]) {
        let mut followers = lock(&self.followers);
        match followers.get(task_id).map(Weak::upgrade) {
            Some(Some(notify)) => {
                if seq > 0 {
                    lock(&self.announced).insert(task_id.to_owned(), (seq, view.to_vec()));
                }
                notify.notify_one();
            }
            Some(None) => {
                followers.remove(task_id);
                lock(&self.announced).remove(task_id);
            }
            None => {}
        }
    }

    /// Wakes every follower (to read its view again), and forgets those that are gone.
    fn wake_all(&self) {
        lock(&self.announced).clear();
        lock(&self.followers).retain(|_, follower| match follower.upgrade() {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        });
    }
}

/// Keeps one subscription to `channel` until `shutdown` (or the [`Changes`] are dropped),
/// with each of `clients` in turn while the last one fails.
async fn subscribe(clients: Arc<[redis::Client]>, channel: String, changes: Weak<Inner>, shutdown: CancellationToken) {
    let mut delays = reconnect_delays();
    for turn in 0.. {
        let Some(client) = clients.get(turn % clients.len().max(1)) else { return };
        let subscribed = tokio::time::timeout(CALL_TIMEOUT, async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            redis::RedisResult::Ok(pubsub)
        })
        .await;
        match subscribed {
            Ok(Ok(pubsub)) => {
                delays = reconnect_delays();
                let Some(inner) = changes.upgrade() else { return };
                inner.live.store(true, Ordering::Relaxed);
                // Whatever was announced while not subscribed: every follower reads again.
                inner.wake_all();
                drop(inner);
                let mut messages = pubsub.into_on_message();
                loop {
                    tokio::select! {
                        message = messages.next() => {
                            let Some(message) = message else { break };
                            let Some(inner) = changes.upgrade() else { return };
                            if let Some((task_id, seq, view)) = parse(message.get_payload_bytes()) {
                                inner.announced(task_id, seq, view);
                            }
                        }
                        () = shutdown.cancelled() => return,
                    }
                }
                let Some(inner) = changes.upgrade() else { return };
                inner.live.store(false, Ordering::Relaxed);
                lock(&inner.announced).clear();
                tracing::debug!("the fleet's change announcements were lost; resubscribing");
            }
            Ok(Err(error)) => {
                tracing::debug!(error = ?error.kind(), "cannot subscribe to the fleet's change announcements")
            }
            Err(_) => tracing::debug!("subscribing to the fleet's change announcements timed out"),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// The delays between attempts to subscribe: from 100 ms, doubling, up to 5 s, with jitter.
fn reconnect_delays() -> backon::ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An announcement's words: `<seq> <task id's length> <task id><stored view>` (`seq` 0 and no
    /// view: the lease was let go).
    fn announcement(seq: i64, task_id: &str, view: &[u8]) -> Vec<u8> {
        let mut words = format!("{seq} {} {task_id}", task_id.len()).into_bytes();
        words.extend_from_slice(view);
        words
    }

    #[test]
    fn announcements_name_their_task_whatever_its_id_holds() {
        let words = announcement(7, "a b}{:9 x", b"\x00 view 12 ");
        assert_eq!(parse(&words), Some(("a b}{:9 x", 7, &b"\x00 view 12 "[..])));
        assert_eq!(parse(&announcement(0, "t", b"")), Some(("t", 0, &b""[..])));
        assert_eq!(parse(b"7 99 short"), None);
        assert_eq!(parse(b"garbage"), None);
    }
}
