//! The fleet's shared engine: Redis (7.x, or Valkey), reached through redis-rs's connection
//! manager (reconnects by itself, TLS with `rediss://`, scripts). The stores and the watch hub
//! keep their fleet state in it; [`members`] counts the replicas that share it.
//!
//! The service starts without Redis and keeps serving what does not need it: the first
//! connection is made on first use, and while Redis is unreachable every call fails at once
//! with [`Unavailable`] (after at most [`CALL_TIMEOUT`]). The outage is logged once, and its
//! end once, not per call; the `stream_export_fleet_store_up` gauge says which it is.

pub mod members;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::{sync::Mutex, time::Instant};
use tracing::Instrument;

use crate::telemetry::otel;

/// Redis could not be reached or did not answer in time; the words never hold the URL.
#[derive(Clone, Debug, thiserror::Error)]
#[error("the fleet store is unavailable: {0}")]
pub struct Unavailable(pub String);

/// The longest one Redis call may take: well inside any caller's deadline, so that an
/// unreachable Redis costs a call little.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the fleet's Redis is and how its keys are named.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), user and password in the URL. Secret: it may hold a
    /// password.
    pub url: SecretString,
    /// Put before every key, to share one Redis between deployments (may be empty).
    pub key_prefix: String,
}

/// A lazily connected, self-healing connection to Redis, with the namespace of this
/// deployment's keys. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    connection: Arc<Mutex<Connection>>,
    namespace: Arc<str>,
    down: Arc<AtomicBool>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl Redis {
    /// Checks the URL (it is not connected to yet). Keys are namespaced by `key_prefix` and a
    /// digest of the Stream API key, so that two deployments for two Stream apps can share one
    /// Redis without mixing their data.
    pub fn new(settings: &RedisSettings, api_key: &str) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.expose_secret())
            .map_err(|error| format!("invalid Redis URL ({:?})", error.kind()))?;
        let app = hex::encode(&Sha256::digest(api_key.as_bytes())[..8]);
        Ok(Self {
            client,
            connection: Arc::default(),
            namespace: format!("{}stream-export:{app}", settings.key_prefix).into(),
            down: Arc::default(),
        })
    }

    /// The full name of a key of this deployment. `tagged` goes inside a hash tag, so that
    /// keys sharing it sit in one Redis Cluster slot (scripts may then use them together).
    pub fn key(&self, family: &str, tagged: &str, suffix: &str) -> String {
        format!("{}:{family}:{{{tagged}}}:{suffix}", self.namespace)
    }

    /// A connection, made now if there is none yet. After a failed attempt the next one waits
    /// [`CALL_TIMEOUT`]: meanwhile calls fail at once instead of queueing behind connects.
    pub async fn connection(&self) -> Result<ConnectionManager, Unavailable> {
        let mut state = self.connection.lock().await;
        if let Some(connected) = state.manager.as_ref() {
            return Ok(connected.clone());
        }
        if state.retry_at.is_some_and(|at| Instant::now() < at) {
            return Err(Unavailable("cannot reach Redis".into()));
        }
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1);
        let connected =
            tokio::time::timeout(CALL_TIMEOUT * 2, ConnectionManager::new_with_config(self.client.clone(), config))
                .await
                .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connecting timed out")))
                .and_then(|outcome| outcome)
                .map_err(|error| {
                    state.retry_at = Some(Instant::now() + CALL_TIMEOUT);
                    self.failed(&error)
                })?;
        state.manager = Some(connected.clone());
        Ok(connected)
    }

    /// Runs one Redis command (`call`) in a client span named `operation` (see
    /// [`otel::redis_span`]) and notes its outcome (see [`Redis::observe`]).
    pub async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Unavailable> {
        let span = otel::redis_span(operation);
        let outcome = call.instrument(span.clone()).await;
        if let Err(error) = &outcome {
            otel::redis_span_failed(&span, &format!("{:?}", error.kind()));
        }
        self.observe(outcome)
    }

    /// Runs a Lua script (`invocation`) as [`Redis::call`] does, connecting first if needed.
    pub async fn eval<T: redis::FromRedisValue>(
        &self,
        operation: &'static str,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut connection = self.connection().await?;
        self.call(operation, invocation.invoke_async(&mut connection)).await
    }

    /// Runs a Lua script without a span: for the periodic calls every replica makes in the
    /// background (heartbeats, follows, lease renewals, budget bookings), which would otherwise
    /// be hundreds of root spans per second with no caller to attach them to.
    pub async fn eval_quiet<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, Unavailable> {
        let mut connection = self.connection().await?;
        self.observe(invocation.invoke_async(&mut connection).await)
    }

    /// Notes the outcome of a call: logs the start and the end of an outage once each.
    pub fn observe<T>(&self, outcome: redis::RedisResult<T>) -> Result<T, Unavailable> {
        match outcome {
            Ok(value) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!("the fleet store (Redis) answers again");
                    metrics::gauge!(FLEET_STORE_UP).set(1.0);
                }
                Ok(value)
            }
            Err(error) => Err(self.failed(&error)),
        }
    }

    fn failed(&self, error: &redis::RedisError) -> Unavailable {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %describe(error), "the fleet store (Redis) is unavailable");
            metrics::gauge!(FLEET_STORE_UP).set(0.0);
        }
        Unavailable(describe(error))
    }
}

/// The connection manager once connected, and when to try connecting again after a failure.
#[derive(Default)]
struct Connection {
    manager: Option<ConnectionManager>,
    retry_at: Option<Instant>,
}

/// The gauge that says whether the fleet store answers (1) or not (0).
pub const FLEET_STORE_UP: &str = "stream_export_fleet_store_up";

/// Whole milliseconds, as Redis takes them (`PX`, `PEXPIRE`).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A Redis error in words that never hold the URL (nor its password).
fn describe(error: &redis::RedisError) -> String {
    match error.kind() {
        redis::ErrorKind::Io => "cannot reach Redis".to_owned(),
        kind => format!("Redis error ({kind:?}): {}", error.detail().unwrap_or_default()),
    }
}
