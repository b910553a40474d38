//! Idempotent submits for the whole fleet: a repeat of a `request_id` on any replica finds the
//! first submit, running or done.
//!
//! Per idempotency key, two keys in one hash-tag slot: `claim` (`<holder>|<fingerprint>`, with a
//! short lease that its holder renews while the submit runs) and `done`
//! (`<fingerprint>|<task id>`, kept for the idempotency TTL). A caller that finds `done` returns
//! it; one that takes the free claim runs the submit; one that finds a claim with another
//! fingerprint is told so (the request id was reused); one that finds a claim with its own
//! fingerprint waits until `done` appears, or the claim goes (the submit failed: its holder
//! released the claim; or the holder died: the lease ran out) and then claims it itself.
//!
//! The one case Stream's API makes unavoidable: Stream created the task, the answer was lost,
//! and the holder died before recording it. Its lease runs out and a retry starts a second
//! export; Stream has no idempotency key of its own to prevent it.

use std::{sync::LazyLock, time::Duration};

use futures::{FutureExt, future::BoxFuture};

use super::{
    connection::{Redis, millis},
    lease::{Lease, with_lease},
    script::FleetScript,
};
use crate::{
    store::{Fingerprint, StoreError, SubmitStore, Submitted},
    upstream::UpstreamError,
};

/// How long a claim lasts unless its holder renews it: a replica that dies mid-submit blocks
/// retries of its key for at most this long.
pub const CLAIM_LEASE: Duration = Duration::from_secs(5);

/// How often a waiter looks for the outcome of a submit another caller is running.
const WAIT_POLL: Duration = Duration::from_millis(50);

/// Returns `done`, or claims the lease, or returns the claim's holder.
static CLAIM: LazyLock<FleetScript> = LazyLock::new(|| {
    with_lease(
        "EVALSHA submit.claim",
        r"
local done = redis.call('GET', KEYS[1])
if done then return {'done', done} end
local holder = lease_claim(KEYS[2], ARGV[1], ARGV[2])
if holder == ARGV[1] then return {'claimed', ''} end
return {'held', holder}
",
    )
});

/// Records the task and lets go of the claim (if still held).
static FINISH: LazyLock<FleetScript> = LazyLock::new(|| {
    with_lease(
        "EVALSHA submit.finish",
        r"
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
lease_release(KEYS[2], ARGV[1])
return 1
",
    )
});

/// The [`SubmitStore`] of a fleet, in Redis.
#[derive(Debug)]
pub struct RedisSubmitStore {
    redis: Redis,
    ttl: Duration,
}

impl RedisSubmitStore {
    /// A store that keeps each submit's task id for `ttl`.
    pub fn new(redis: Redis, ttl: Duration) -> Self {
        Self { redis, ttl }
    }

    /// Runs `submit` on its own task, holding (and renewing) the `claim` until it ends, then
    /// records its task in `done` or releases the claim. On its own task so that a caller that
    /// leaves never abandons a submit Stream may already have (see [`SubmitStore`]).
    fn run_detached(
        &self,
        done: String,
        claim: Lease,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
    ) -> impl Future<Output = Result<String, StoreError>> + use<> {
        let (redis, ttl) = (self.redis.clone(), self.ttl);
        let task = tokio::spawn(async move {
            let renewal = tokio::spawn(renew_claim(claim.clone()));
            let outcome = submit.await;
            renewal.abort();
            match outcome {
                Ok(task_id) => {
                    let finish = FINISH
                        .call()
                        .key(&done)
                        .key(claim.key())
                        .arg(claim.owner())
                        .arg(format!("{}|{task_id}", fingerprint.to_hex()))
                        .arg(millis(ttl));
                    if let Err(error) = finish.run::<i64>(&redis).await {
                        // The caller gets its task; a repeat after the lease may not find it.
                        tracing::warn!(%error, %task_id, "a submit's task could not be recorded in the fleet store");
                    }
                    Ok(task_id)
                }
                Err(error) => {
                    let _ = claim.release().await;
                    Err(StoreError::Submit(error))
                }
            }
        });
        task.map(|joined| joined.unwrap_or(Err(StoreError::Aborted)))
    }
}

/// Extends the claim's lease every third of a lease, until aborted.
async fn renew_claim(claim: Lease) {
    loop {
        tokio::time::sleep(CLAIM_LEASE / 3).await;
        let _ = claim.renew().await;
    }
}

#[tonic::async_trait]
impl SubmitStore for RedisSubmitStore {
    async fn get_or_submit(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
    ) -> Result<Submitted, StoreError> {
        let digest = Fingerprint::of("key", &key).to_hex();
        let done = self.redis.key("submit", &digest, "done");
        let holder = format!("{}|{}", uuid::Uuid::new_v4(), fingerprint.to_hex());
        let claim = Lease::new(self.redis.clone(), self.redis.key("submit", &digest, "claim"), holder, CLAIM_LEASE);
        let mut submit = Some(submit);
        loop {
            let attempt = CLAIM.call().key(&done).key(claim.key()).arg(claim.owner()).arg(claim.ttl_millis());
            let (state, value): (String, String) = attempt.run(&self.redis).await?;
            match state.as_str() {
                "done" => return recorded(&value),
                "claimed" => {
                    let Some(submit) = submit.take() else { return Err(StoreError::Aborted) };
                    let task_id = self.run_detached(done, claim, fingerprint, submit).await?;
                    return Ok(Submitted { fingerprint, task_id });
                }
                _ => {
                    let theirs = value.rsplit('|').next().and_then(Fingerprint::from_hex);
                    if let Some(theirs) = theirs.filter(|theirs| *theirs != fingerprint) {
                        // Reused for another request: the caller is told, whatever the task.
                        return Ok(Submitted { fingerprint: theirs, task_id: String::new() });
                    }
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
        }
    }
}

/// Reads a `done` value: `<fingerprint>|<task id>`.
fn recorded(value: &str) -> Result<Submitted, StoreError> {
    let (fingerprint, task_id) = value.split_once('|').ok_or(StoreError::Aborted)?;
    let fingerprint = Fingerprint::from_hex(fingerprint).ok_or(StoreError::Aborted)?;
    Ok(Submitted { fingerprint, task_id: task_id.to_owned() })
}
