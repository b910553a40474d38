//! The state group: where the stores keep their records (the state directory, memory, or the
//! fleet's Redis) and how many and how long, into [`IdempotencySettings`], [`StateSettings`]
//! and the fleet's [`RedisSettings`].

use std::{path::PathBuf, time::Duration};

use secrecy::SecretString;

use super::{ConfigError, FlagDuration, parse_secret, positive_counts, positive_durations};
use crate::{fleet::RedisSettings, store::embedded::DEFAULT_STATE_DIR};

/// Flags of the stores.
#[derive(clap::Args, Debug)]
pub struct StateArgs {
    /// How long a `request_id` is remembered for idempotent submits.
    #[arg(long, env = "STREAM_EXPORT_IDEMPOTENCY_TTL", default_value_t = FlagDuration(IdempotencySettings::default().ttl))]
    pub idempotency_ttl: FlagDuration,

    /// Most `request_id`s remembered (the least recently used go first).
    #[arg(long, env = "STREAM_EXPORT_IDEMPOTENCY_CAPACITY", default_value_t = IdempotencySettings::default().capacity)]
    pub idempotency_capacity: u64,

    /// Fleet mode: the Redis (or Valkey) that the replicas share, `redis://[user:password@]host:port`
    /// or `rediss://` for TLS. Idempotent submits then hold across replicas. Unset: one process,
    /// nothing else needed. Unreachable at start: the service starts anyway and says so.
    #[arg(long, env = "STREAM_EXPORT_REDIS_URL", hide_env_values = true, value_parser = parse_secret)]
    pub redis_url: Option<SecretString>,

    /// Put before every Redis key, to share one Redis between deployments.
    #[arg(long, env = "STREAM_EXPORT_REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,

    /// Most tasks kept in the task registry (ListTasks, task owners); the oldest go first, and
    /// owner-based policies then no longer let their owners read them. Default: 2,000,000 in
    /// the state directory, 100,000 in memory or Redis.
    #[arg(long, env = "STREAM_EXPORT_TASK_REGISTRY_CAPACITY")]
    pub task_registry_capacity: Option<usize>,

    /// Where this process keeps its state (the task registry, idempotent submits), so that a
    /// restart forgets nothing: created if missing, one process per directory (a second one
    /// exits with code 2). Relative to the working directory. Not used in fleet mode (Redis).
    #[arg(long, env = "STREAM_EXPORT_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,

    /// Keep the state in memory only, instead of --state-dir: a restart forgets every task's
    /// owner (owner-based policies then refuse their owners) and every request_id. For tests
    /// and read-only filesystems.
    #[arg(long, env = "STREAM_EXPORT_MEMORY_STATE", conflicts_with = "state_dir")]
    pub memory_state: bool,
}

/// Settings of the idempotent-submit store.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencySettings {
    /// How long a `request_id` is remembered.
    pub ttl: Duration,
    /// Most `request_id`s remembered.
    pub capacity: u64,
}

impl Default for IdempotencySettings {
    fn default() -> Self {
        Self { ttl: Duration::from_secs(3600), capacity: 100_000 }
    }
}

/// Where a single process keeps its state (fleet mode keeps it in Redis).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateSettings {
    /// In this state directory, on disk.
    Dir(PathBuf),
    /// In memory only: lost at exit.
    Memory,
}

impl StateArgs {
    /// Rejects a zero TTL or capacity, and an empty state directory.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_durations(&[(self.idempotency_ttl, "STREAM_EXPORT_IDEMPOTENCY_TTL (--idempotency-ttl)")])?;
        positive_counts(&[
            (self.idempotency_capacity, "STREAM_EXPORT_IDEMPOTENCY_CAPACITY (--idempotency-capacity)"),
            (
                self.task_registry_capacity.map_or(1, |capacity| capacity as u64),
                "STREAM_EXPORT_TASK_REGISTRY_CAPACITY (--task-registry-capacity)",
            ),
        ])?;
        if !self.memory_state && self.state_dir.as_os_str().is_empty() {
            return Err(ConfigError(
                "STREAM_EXPORT_STATE_DIR (--state-dir) must name a directory (or pass --memory-state)".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn idempotency(&self) -> IdempotencySettings {
        IdempotencySettings { ttl: self.idempotency_ttl.0, capacity: self.idempotency_capacity }
    }

    /// The fleet's Redis, if one is set.
    pub(super) fn redis(&self) -> Option<RedisSettings> {
        let key_prefix = &self.redis_key_prefix;
        self.redis_url.clone().map(|url| RedisSettings { url, key_prefix: key_prefix.clone() })
    }

    pub(super) fn into_state(self) -> StateSettings {
        if self.memory_state { StateSettings::Memory } else { StateSettings::Dir(self.state_dir) }
    }
}
