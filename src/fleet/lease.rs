//! The fleet's one lease: a key that names its holder (an owner token) for a TTL unless the
//! holder renews it. A submit holds one on its idempotency key while it runs, a replica one on
//! each task it polls; a holder that dies loses its lease when the TTL runs out, and another
//! takes it.
//!
//! A lease is claimed, renewed and released by [`Lease`], or, when a script must do more in the
//! same atomic step (read a task's shared view, record a submit's task), by the Lua functions
//! that [`with_lease`] puts before the script's own text: `lease_claim(key, owner, ttl_ms)`
//! (takes the lease if free, extends it if `owner` holds it; returns the holder),
//! `lease_renew(key, owner, ttl_ms)` (1 if `owner` holds it and it was extended) and
//! `lease_release(key, owner)` (1 if `owner` held it and let it go).

use std::{sync::LazyLock, time::Duration};

use super::{
    connection::{FleetError, Redis, millis},
    script::FleetScript,
};

/// The lease's Lua functions, the only place its shape is written.
const LEASE_LUA: &str = r"
local function lease_claim(key, owner, ttl)
  local holder = redis.call('GET', key)
  if holder and holder ~= owner then return holder end
  redis.call('SET', key, owner, 'PX', ttl)
  return owner
end
local function lease_renew(key, owner, ttl)
  if redis.call('GET', key) == owner then return redis.call('PEXPIRE', key, ttl) end
  return 0
end
local function lease_release(key, owner)
  if redis.call('GET', key) == owner then return redis.call('DEL', key) end
  return 0
end
";

/// A script that may call the lease's Lua functions (see the module's documentation).
pub fn with_lease(operation: &'static str, body: &str) -> FleetScript {
    FleetScript::new(operation, &format!("{LEASE_LUA}{body}"))
}

static CLAIM: LazyLock<FleetScript> =
    LazyLock::new(|| with_lease("EVALSHA lease.claim", "return lease_claim(KEYS[1], ARGV[1], ARGV[2])"));

static RENEW: LazyLock<FleetScript> =
    LazyLock::new(|| with_lease("EVALSHA lease.renew", "return lease_renew(KEYS[1], ARGV[1], ARGV[2])"));

static RELEASE: LazyLock<FleetScript> =
    LazyLock::new(|| with_lease("EVALSHA lease.release", "return lease_release(KEYS[1], ARGV[1])"));

/// One lease: its key, its would-be holder's token, and how long it lasts unless renewed.
#[derive(Clone, Debug)]
pub struct Lease {
    redis: Redis,
    key: String,
    owner: String,
    ttl: Duration,
}

/// Who holds a lease after a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// This owner (taken now, or extended).
    Ours,
    /// Another owner, named by its token.
    Theirs(String),
}

impl Lease {
    /// The lease of `key`, for `owner` (a token unique to the holder), lasting `ttl`.
    pub fn new(redis: Redis, key: String, owner: impl Into<String>, ttl: Duration) -> Self {
        Self { redis, key, owner: owner.into(), ttl }
    }

    /// Its key (for scripts that claim it with more in the same step).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token of its would-be holder.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// How long it lasts unless renewed, as a script takes it (`ttl_ms`).
    pub fn ttl_millis(&self) -> u64 {
        millis(self.ttl)
    }

    /// Takes the lease if it is free, or extends it if this owner holds it.
    pub async fn claim(&self) -> Result<Claimed, FleetError> {
        let holder: String =
            CLAIM.call().key(&self.key).arg(&self.owner).arg(self.ttl_millis()).run(&self.redis).await?;
        Ok(if holder == self.owner { Claimed::Ours } else { Claimed::Theirs(holder) })
    }

    /// Keeps the lease: extends it, or takes it again if it is free (Redis lost it, or it ran
    /// out while Redis did not answer). Not traced, as [`Lease::renew`].
    pub async fn keep(&self) -> Result<Claimed, FleetError> {
        let claim = CLAIM.call().key(&self.key).arg(&self.owner).arg(self.ttl_millis()).quiet();
        let holder: String = claim.run(&self.redis).await?;
        Ok(if holder == self.owner { Claimed::Ours } else { Claimed::Theirs(holder) })
    }

    /// Extends the lease if this owner still holds it; `false` if it does not (it ran out, or
    /// another owner took it). Not traced: renewals are periodic background calls.
    pub async fn renew(&self) -> Result<bool, FleetError> {
        let renewed: i64 =
            RENEW.call().key(&self.key).arg(&self.owner).arg(self.ttl_millis()).quiet().run(&self.redis).await?;
        Ok(renewed == 1)
    }

    /// Lets the lease go if this owner holds it, so that another may take it at once.
    pub async fn release(&self) -> Result<bool, FleetError> {
        let released: i64 = RELEASE.call().key(&self.key).arg(&self.owner).run(&self.redis).await?;
        Ok(released == 1)
    }
}
