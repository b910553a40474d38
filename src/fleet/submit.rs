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
//! A claim's lease lasts the upstream timeout and a margin (at least [`CLAIM_LEASE`]), and is
//! renewed meanwhile: a submit is bounded by the upstream timeout, so its claim cannot run out
//! while it runs, even when Redis stalls and no renewal gets through. A replica also keeps its
//! own running submits ([`RedisSubmitStore`]'s `running`), so that a repeat that reaches it
//! joins the submit without asking Redis. `done` is written once: a submit that ends after
//! another one recorded its task for the key (Redis lost the claim) answers with the recorded
//! task, so that one `request_id` never gets two task ids, and logs the conflict.
//!
//! On one Redis, a submit's task registry record is written by the script that writes its
//! `done` ([`RedisSubmitStore::recording_into`]): no moment when a caller holds a task id whose
//! owner the registry does not know, and one script call fewer per submit. On a Redis Cluster
//! the registry's keys are in other slots, and the record is written after `done`.
//!
//! The cases Stream's API makes unavoidable, since it has no idempotency key of its own: Stream
//! created the task, the answer was lost, and the holder died before recording it (its lease
//! runs out and a retry starts a second export); or Redis lost the claim (a restart without
//! persistence) and a repeat on another replica started a second export.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex, PoisonError},
    time::Duration,
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use super::{
    connection::{Redis, millis},
    lease::{Claimed, Lease, with_lease},
    registry::{RECORD_LUA, RecordParts, RedisRegistry},
    script::FleetScript,
};
use crate::{
    proto::TaskRecord,
    store::{Fingerprint, StoreError, SubmitStore, Submitted},
    upstream::UpstreamError,
};

/// The shortest a claim lasts unless its holder renews it: a replica that dies mid-submit
/// blocks retries of its key for about the claim's lease (see [`RedisSubmitStore::new`]).
pub const CLAIM_LEASE: Duration = Duration::from_secs(5);

/// What a claim's lease adds to the upstream timeout: the Redis calls around the submit (the
/// claim before it, recording the task after it), each up to a second.
pub const CLAIM_MARGIN: Duration = Duration::from_secs(3);

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

/// Records the task unless a task is recorded already, and lets go of the claim (if still
/// held). Returns what `done` holds now.
static FINISH: LazyLock<FleetScript> = LazyLock::new(|| {
    with_lease(
        "EVALSHA submit.finish",
        r"
local done = redis.call('GET', KEYS[1])
if not done then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  done = ARGV[2]
end
lease_release(KEYS[2], ARGV[1])
return done
",
    )
});

/// [`FINISH`], and the task's registry record written with `done` (keys 3–6 and arguments 4–7
/// as `registry_record` takes them). Returns what `done` holds now, and whether the record went
/// with it.
static FINISH_RECORDING: LazyLock<FleetScript> = LazyLock::new(|| {
    with_lease(
        "EVALSHA submit.finish_recording",
        &format!(
            "{RECORD_LUA}{}",
            r"
local done = redis.call('GET', KEYS[1])
local recorded = 0
if not done then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  done = ARGV[2]
  registry_record({KEYS[3], KEYS[4], KEYS[5], KEYS[6]}, {ARGV[4], ARGV[5], ARGV[6], ARGV[7]})
  recorded = 1
end
lease_release(KEYS[2], ARGV[1])
return {done, recorded}
"
        ),
    )
});

/// The outcome of a running submit (its task id, and whether its registry record was written
/// with it), shared by every caller of this replica waiting for it.
type SharedOutcome = Shared<BoxFuture<'static, Result<(String, bool), StoreError>>>;

/// A submit this replica runs, and what it asked for.
#[derive(Clone)]
struct Running {
    fingerprint: Fingerprint,
    outcome: SharedOutcome,
}

/// This replica's running submits, by the digest of their idempotency key. Bounded by what
/// runs at once: a submit leaves it when it ends, within the upstream timeout.
type RunningSubmits = Arc<Mutex<HashMap<String, Running>>>;

/// The [`SubmitStore`] of a fleet, in Redis.
pub struct RedisSubmitStore {
    redis: Redis,
    ttl: Duration,
    claim_lease: Duration,
    running: RunningSubmits,
    /// The registry whose records go with `done`, on one Redis.
    registry: Option<Arc<RedisRegistry>>,
}

impl std::fmt::Debug for RedisSubmitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSubmitStore").field("claim_lease", &self.claim_lease).finish_non_exhaustive()
    }
}

impl RedisSubmitStore {
    /// A store that keeps each submit's task id for `ttl`. A claim lasts `upstream_timeout`
    /// (which bounds a submit) and [`CLAIM_MARGIN`], at least [`CLAIM_LEASE`].
    pub fn new(redis: Redis, ttl: Duration, upstream_timeout: Duration) -> Self {
        let claim_lease = (upstream_timeout + CLAIM_MARGIN).max(CLAIM_LEASE);
        Self { redis, ttl, claim_lease, running: Arc::default(), registry: None }
    }

    /// The same store, writing a submit's registry record (`get_or_submit_recording`) in the
    /// script that writes its `done`, when the two can go together: on one Redis, not on a
    /// Cluster (other slots).
    pub fn recording_into(mut self, registry: Arc<RedisRegistry>) -> Self {
        if !self.redis.is_cluster() {
            self.registry = Some(registry);
        }
        self
    }

    /// The submit of `digest` this replica runs, if any.
    fn running(&self, digest: &str) -> Option<Running> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).get(digest).cloned()
    }

    /// Runs `submit` on its own task, holding (and renewing) the `claim` until it ends, then
    /// records its task in `done` or releases the claim; meanwhile it is in `running` under
    /// `digest`. On its own task so that a caller that leaves never abandons a submit Stream
    /// may already have (see [`SubmitStore`]).
    fn start(
        &self,
        digest: String,
        done: String,
        claim: Lease,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
        record: Option<TaskRecord>,
    ) -> Running {
        let (redis, ttl, running) = (self.redis.clone(), self.ttl, Arc::clone(&self.running));
        let registry = self.registry.clone();
        let key = digest.clone();
        // Locked until the submit is in `running`, so that it cannot leave before it is there.
        let mut submits = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let task = tokio::spawn(async move {
            let renewal = tokio::spawn(renew_claim(claim.clone()));
            let outcome = submit.await;
            renewal.abort();
            let outcome = match outcome {
                Ok(task_id) => Ok(finish(&redis, &done, &claim, fingerprint, task_id, ttl, record.zip(registry)).await),
                Err(error) => {
                    let _ = claim.release().await;
                    Err(StoreError::Submit(error))
                }
            };
            running.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
            outcome
        });
        let outcome = task.map(|joined| joined.unwrap_or(Err(StoreError::Aborted))).boxed().shared();
        let started = Running { fingerprint, outcome };
        submits.insert(digest, started.clone());
        started
    }
}

/// Records `task_id` as the submit's task, unless a task is recorded already, and returns the
/// task recorded: the one every caller of the key gets; with `record` (the task's registry
/// record, its task id filled in here), also whether that record was written with it.
async fn finish(
    redis: &Redis,
    done: &str,
    claim: &Lease,
    fingerprint: Fingerprint,
    task_id: String,
    ttl: Duration,
    record: Option<(TaskRecord, Arc<RedisRegistry>)>,
) -> (String, bool) {
    let ours = format!("{}|{task_id}", fingerprint.to_hex());
    let finish = || FINISH.call().key(done).key(claim.key()).arg(claim.owner()).arg(&ours).arg(millis(ttl));
    let answer = match record {
        None => finish().run::<String>(redis).await.map(|current| (current, false)),
        Some((record, registry)) => {
            let record = TaskRecord { task_id: task_id.clone(), ..record };
            let RecordParts { keys: [index, records, owner, observed], args } = registry.parts_of(&record);
            let finish = FINISH_RECORDING.call().key(done).key(claim.key()).key(index).key(records).key(owner);
            let finish = finish.key(observed).arg(claim.owner()).arg(&ours).arg(millis(ttl));
            let finish = finish.arg(args.0).arg(args.1).arg(args.2).arg(args.3);
            finish.run::<(String, i64)>(redis).await.map(|(current, written)| (current, written == 1))
        }
    };
    match answer {
        Ok((current, written)) if current == ours => (task_id, written),
        Ok((current, _)) => match recorded(&current) {
            Ok(first) if first.fingerprint == fingerprint => {
                tracing::warn!(
                    task_id = %first.task_id,
                    duplicate_task_id = %task_id,
                    "a second export was started for one request_id (the fleet store lost the first submit's \
                     claim: Redis restarted without persistence, or evicted it); callers get the task recorded \
                     first"
                );
                (first.task_id, false)
            }
            _ => {
                tracing::warn!(%task_id, "a submit's request_id was recorded for another request meanwhile");
                (task_id, false)
            }
        },
        Err(error) => {
            // The caller gets its task; a repeat elsewhere after the lease may not find it.
            tracing::warn!(%error, %task_id, "a submit's task could not be recorded in the fleet store");
            (task_id, false)
        }
    }
}

/// Keeps the claim every third of its lease until aborted: extends it, or takes it again if
/// Redis lost it (so that a repeat elsewhere waits for this submit).
async fn renew_claim(claim: Lease) {
    let every = Duration::from_millis(claim.ttl_millis() / 3);
    loop {
        tokio::time::sleep(every).await;
        if let Ok(Claimed::Theirs(_)) = claim.keep().await {
            tracing::warn!("a running submit's claim was taken by another submit of its request_id");
            return;
        }
    }
}

impl RedisSubmitStore {
    /// [`SubmitStore::get_or_submit`], with the registry `record` written with `done` when this
    /// store was made [`RedisSubmitStore::recording_into`] a registry; whether it was.
    async fn submit_once(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
        record: Option<TaskRecord>,
    ) -> Result<(Submitted, bool), StoreError> {
        let digest = Fingerprint::of("key", &key).to_hex();
        if let Some(running) = self.running(&digest) {
            return joined(running, fingerprint).await;
        }
        let done = self.redis.key("submit", &digest, "done");
        let holder = format!("{}|{}", uuid::Uuid::new_v4(), fingerprint.to_hex());
        let claim =
            Lease::new(self.redis.clone(), self.redis.key("submit", &digest, "claim"), holder, self.claim_lease);
        let mut submit = Some(submit);
        let mut record = record;
        loop {
            let attempt = CLAIM.call().key(&done).key(claim.key()).arg(claim.owner()).arg(claim.ttl_millis());
            let (state, value): (String, String) = attempt.run(&self.redis).await?;
            match state.as_str() {
                "done" => return recorded(&value).map(|submitted| (submitted, false)),
                "claimed" => {
                    let Some(submit) = submit.take() else { return Err(StoreError::Aborted) };
                    let running = self.start(digest, done, claim, fingerprint, submit, record.take());
                    return joined(running, fingerprint).await;
                }
                _ => {
                    let theirs = value.rsplit('|').next().and_then(Fingerprint::from_hex);
                    if let Some(theirs) = theirs.filter(|theirs| *theirs != fingerprint) {
                        // Reused for another request: the caller is told, whatever the task.
                        return Ok((Submitted { fingerprint: theirs, task_id: String::new() }, false));
                    }
                    tokio::time::sleep(WAIT_POLL).await;
                }
            }
        }
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
        Ok(self.submit_once(key, fingerprint, submit, None).await?.0)
    }

    async fn get_or_submit_recording(
        &self,
        key: String,
        fingerprint: Fingerprint,
        submit: BoxFuture<'static, Result<String, UpstreamError>>,
        record: TaskRecord,
    ) -> Result<(Submitted, bool), StoreError> {
        let record = self.registry.is_some().then_some(record);
        self.submit_once(key, fingerprint, submit, record).await
    }
}

/// Waits for a submit this replica runs (and whether its registry record was written with its
/// `done`); a caller that asked for something else is told at once.
async fn joined(running: Running, fingerprint: Fingerprint) -> Result<(Submitted, bool), StoreError> {
    if running.fingerprint != fingerprint {
        return Ok((Submitted { fingerprint: running.fingerprint, task_id: String::new() }, false));
    }
    let (task_id, written) = running.outcome.await?;
    Ok((Submitted { fingerprint, task_id }, written))
}

/// Reads a `done` value: `<fingerprint>|<task id>`.
fn recorded(value: &str) -> Result<Submitted, StoreError> {
    let (fingerprint, task_id) = value.split_once('|').ok_or(StoreError::Aborted)?;
    let fingerprint = Fingerprint::from_hex(fingerprint).ok_or(StoreError::Aborted)?;
    Ok(Submitted { fingerprint, task_id: task_id.to_owned() })
}
