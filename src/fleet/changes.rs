//! Announcements of new watch observations, by Redis pub/sub: the replica that polls a task
//! publishes its id on the deployment's channel with each observation it writes (and when it
//! lets the lease go), and every replica keeps one subscription to that channel, which wakes
//! the replica's follower of that task at once. Followers then read a task's view when it
//! changed, not every follow interval.
//!
//! A message can be missed (a reconnect, a slow subscriber): followers still read each view
//! at least once a lease (when a dead leader's lease would run out; see
//! `watch_lease::FleetView::follow`), and on each (re)subscription every follower reads its
//! view again. Without a subscription (connecting, or on a Redis Cluster, where this is not
//! implemented), followers read every follow interval, as without announcements.

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
}

impl Changes {
    /// Subscribes to `channel` on `redis` (one Redis; on a Cluster nothing is heard) until
    /// `shutdown`, resubscribing after each loss.
    pub fn start(redis: &Redis, channel: String, shutdown: CancellationToken) -> Self {
        let changes = Self::default();
        if let Some(client) = redis.single_client() {
            tokio::spawn(subscribe(client, channel, Arc::downgrade(&changes.inner), shutdown));
        }
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
}

impl Inner {
    fn announced(&self, task_id: &str) {
        let mut followers = lock(&self.followers);
        match followers.get(task_id).map(Weak::upgrade) {
            Some(Some(notify)) => notify.notify_one(),
            Some(None) => {
                followers.remove(task_id);
            }
            None => {}
        }
    }

    /// Wakes every follower (to read its view again), and forgets those that are gone.
    fn wake_all(&self) {
        lock(&self.followers).retain(|_, follower| match follower.upgrade() {
            Some(notify) => {
                notify.notify_one();
                true
            }
            None => false,
        });
    }
}

/// Keeps one subscription to `channel` until `shutdown` (or the [`Changes`] are dropped).
async fn subscribe(client: redis::Client, channel: String, changes: Weak<Inner>, shutdown: CancellationToken) {
    let mut delays = reconnect_delays();
    loop {
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
                            if let Ok(task_id) = message.get_payload::<String>() {
                                inner.announced(&task_id);
                            }
                        }
                        () = shutdown.cancelled() => return,
                    }
                }
                let Some(inner) = changes.upgrade() else { return };
                inner.live.store(false, Ordering::Relaxed);
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
