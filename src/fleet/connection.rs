//! The connection to the fleet's Redis (7.x, or Valkey), through redis-rs's connection
//! manager (reconnects by itself, TLS with `rediss://`) or its Redis Cluster client, and the
//! namespace of this deployment's keys. Scripts run through [`super::script`], the one way
//! the fleet calls Redis.
//!
//! The service starts without Redis and keeps serving what does not need it: the first
//! connection is made on first use, in the background (one attempt at a time, at most
//! [`CALL_TIMEOUT`] long), and no call waits longer than [`CALL_TIMEOUT`] in all, the wait for
//! a connection included. While Redis is unreachable every call fails at once with
//! [`FleetError::Unavailable`]. The outage is logged once, and its end once, not per call; the
//! `stream_export_fleet_store_up` gauge says which it is. A command Redis refuses (`MOVED`,
//! `OOM`, `WRONGTYPE`…) fails its call but is no outage. The first connection checks that
//! Redis will not evict the fleet's keys.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use redis::{
    ErrorKind, RedisError, RedisFuture, ServerErrorKind, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use tokio::{sync::watch, time::Instant};
use tracing::Instrument;

use crate::{
    store::{self, StoreError},
    task_watch::coordination::Unreachable,
    telemetry::otel,
};

/// Why a call to the fleet's Redis failed; the words never hold the URL.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FleetError {
    /// Redis could not be reached or did not answer in time: an outage (logged once, and the
    /// [`FLEET_STORE_UP`] gauge says so).
    #[error("the fleet store is unavailable: {0}")]
    Unavailable(String),
    /// Redis answered with an error (`MOVED`, `CROSSSLOT`, `OOM`, `WRONGTYPE`…): this call
    /// failed, but Redis is up.
    #[error("the fleet store is unavailable: {0}")]
    Refused(String),
}

/// A store sees either failure as its store being unavailable (the submit is not sent).
impl From<FleetError> for store::Unavailable {
    fn from(error: FleetError) -> Self {
        Self(error.to_string())
    }
}

impl From<FleetError> for StoreError {
    fn from(error: FleetError) -> Self {
        Self::Unavailable(error.into())
    }
}

/// A poller sees either failure as the fleet being unreachable (it carries on alone).
impl From<FleetError> for Unreachable {
    fn from(error: FleetError) -> Self {
        match error {
            FleetError::Unavailable(why) | FleetError::Refused(why) => Self(why),
        }
    }
}

/// The longest one Redis call may take, waiting for a connection included: well inside any
/// caller's deadline, so that an unreachable Redis costs a call little.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// How often one kind of refused command is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where the fleet's Redis is and how its keys are named.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS), user and password in the URL; a Redis Cluster as
    /// `redis+cluster://` (`rediss+cluster://`) with one or more nodes, comma-separated
    /// (`redis+cluster://:pw@h1:6379,h2:6379`), or any URL with several nodes. Secret: it may
    /// hold a password.
    pub url: SecretString,
    /// Put before every key, to share one Redis between deployments (may be empty).
    pub key_prefix: String,
}

/// A lazily connected, self-healing connection to Redis, with the namespace of this
/// deployment's keys. Cheap to clone.
#[derive(Clone)]
pub struct Redis {
    client: Client,
    /// The state of the connection. Only ever locked for a moment (never across an await):
    /// connecting happens in a task of its own, so calls never queue behind a connect.
    link: Arc<watch::Sender<Link>>,
    namespace: Arc<str>,
    health: Arc<Health>,
    /// Where a subscription may connect, in turn: the one Redis, or each node of a Cluster.
    subscribers: Arc<[redis::Client]>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

/// The connection's state.
#[derive(Clone)]
enum Link {
    /// Not connected; the next attempt may start at `retry_at` (at once if `None`), and until
    /// then calls fail at once for the reason `why`.
    Idle { retry_at: Option<Instant>, why: String },
    /// An attempt is under way (one at a time).
    Connecting,
    /// Connected (the manager reconnects by itself from now on).
    Connected(Handle),
}

/// One Redis, or a Redis Cluster.
#[derive(Clone)]
#[expect(clippy::large_enum_variant, reason = "one per process, cloned only to connect")]
enum Client {
    Single(redis::Client),
    Cluster(ClusterClient),
}

/// A connection to one Redis (its manager), or to a Redis Cluster (which follows `MOVED` and
/// `ASK`, and reconnects by itself). Cheap to clone.
#[derive(Clone)]
enum Handle {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// What the calls taught about Redis: whether it is out, and when each kind of refused
/// command was last logged.
#[derive(Default)]
struct Health {
    down: AtomicBool,
    /// Set once the start-up checks (eviction policy) have run.
    checked: AtomicBool,
    refusals_logged: std::sync::Mutex<HashMap<String, Instant>>,
    /// Whether the URL asks for TLS (`rediss://`): then a failed connect may be a handshake.
    tls: bool,
    /// The URL's password, kept out of the words of errors.
    password: Option<String>,
}

impl Redis {
    /// Checks the URL (it is not connected to yet). Keys are namespaced by `key_prefix` and a
    /// digest of the Stream API key, so that two deployments for two Stream apps can share one
    /// Redis without mixing their data.
    pub fn new(settings: &RedisSettings, api_key: &str) -> Result<Self, String> {
        let url = settings.url.expose_secret();
        let invalid = |error: RedisError| format!("invalid Redis URL ({:?})", error.kind());
        let (client, first, subscribers) = match cluster_nodes(url) {
            None => {
                let client = redis::Client::open(url).map_err(invalid)?;
                let first = client.get_connection_info().clone();
                (Client::Single(client.clone()), first, vec![client])
            }
            Some(nodes) => {
                let Some(node) = nodes.first() else { return Err("invalid Redis URL (no cluster node)".to_owned()) };
                let first = redis::IntoConnectionInfo::into_connection_info(node.as_str()).map_err(invalid)?;
                let subscribers: Vec<redis::Client> = nodes
                    .iter()
                    .map(|node| redis::Client::open(node.as_str()))
                    .collect::<Result<_, _>>()
                    .map_err(invalid)?;
                let client = ClusterClient::builder(nodes)
                    .connection_timeout(CALL_TIMEOUT)
                    .response_timeout(CALL_TIMEOUT)
                    .build()
                    .map_err(invalid)?;
                (Client::Cluster(client), first, subscribers)
            }
        };
        let password = first.redis_settings().password().filter(|password| !password.is_empty()).map(str::to_owned);
        let tls = url.starts_with("rediss");
        let app = hex::encode(&Sha256::digest(api_key.as_bytes())[..8]);
        Ok(Self {
            client,
            link: Arc::new(watch::Sender::new(Link::Idle { retry_at: None, why: String::new() })),
            namespace: format!("{}stream-export:{app}", settings.key_prefix).into(),
            health: Arc::new(Health { tls, password, ..Health::default() }),
            subscribers: subscribers.into(),
        })
    }

    /// The full name of a key of this deployment. `tagged` goes inside a hash tag, so that
    /// keys sharing it sit in one Redis Cluster slot (scripts may then use them together).
    pub fn key(&self, family: &str, tagged: &str, suffix: &str) -> String {
        format!("{}:{family}:{{{}}}:{suffix}", self.namespace, hash_tag(tagged))
    }

    /// The full name of a pub/sub channel of this deployment.
    pub fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.namespace)
    }

    /// Whether this is a Redis Cluster (whose scripts may only use the keys of one slot).
    pub fn is_cluster(&self) -> bool {
        matches!(self.client, Client::Cluster(_))
    }

    /// The clients a subscription connects with, one after another while they fail: the one
    /// Redis, or each node of a Cluster (where a message published on any node reaches the
    /// subscribers of every node).
    pub fn subscribers(&self) -> Arc<[redis::Client]> {
        Arc::clone(&self.subscribers)
    }

    /// The Redis Cluster slot of `key` (of its hash tag, if it has one), where a script may use
    /// it together with the other keys of that slot; `None` for one Redis, where any keys go
    /// together.
    pub fn slot(&self, key: &str) -> Option<u16> {
        match self.client {
            Client::Single(_) => None,
            Client::Cluster(_) => Some(cluster_slot(key.as_bytes())),
        }
    }

    /// A connection for one call: connected now if there is none yet, and at most
    /// [`CALL_TIMEOUT`] for the wait and the commands sent on it together. After a failed
    /// attempt the next one waits [`CALL_TIMEOUT`]: meanwhile calls fail at once.
    pub async fn connection(&self) -> Result<Connection, FleetError> {
        let deadline = Instant::now() + CALL_TIMEOUT;
        let handle = self.connected_by(deadline).await?;
        Ok(Connection { handle, deadline })
    }

    /// The connection manager, waiting for a connect under way (or starting one) until
    /// `deadline` at most.
    async fn connected_by(&self, deadline: Instant) -> Result<Handle, FleetError> {
        let mut changes = self.link.subscribe();
        loop {
            let failed_for = match &*changes.borrow_and_update() {
                Link::Connected(handle) => return Ok(handle.clone()),
                Link::Connecting => None,
                Link::Idle { retry_at, why } => retry_at.filter(|at| Instant::now() < *at).map(|_| why.clone()),
            };
            if let Some(why) = failed_for {
                return Err(FleetError::Unavailable(why));
            }
            self.start_connecting();
            if tokio::time::timeout_at(deadline, changes.changed()).await.is_err() {
                return Err(FleetError::Unavailable("connecting to Redis timed out".into()));
            }
        }
    }

    /// Starts a connect attempt in the background unless one is under way or not yet due.
    fn start_connecting(&self) {
        let started = self.link.send_if_modified(|link| match link {
            Link::Idle { retry_at, .. } if retry_at.is_none_or(|at| at <= Instant::now()) => {
                *link = Link::Connecting;
                true
            }
            _ => false,
        });
        if started {
            tokio::spawn(self.clone().connect());
        }
    }

    /// One connect attempt, at most [`CALL_TIMEOUT`] long.
    async fn connect(self) {
        let deadline = Instant::now() + CALL_TIMEOUT;
        // The manager connects lazily: a PING makes the connection (and its TLS handshake and
        // authentication) now, so that a failure is seen here, not by the calls.
        let connect = async {
            let handle = match &self.client {
                Client::Single(client) => {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(CALL_TIMEOUT))
                        .set_response_timeout(Some(CALL_TIMEOUT))
                        .set_number_of_retries(1);
                    Handle::Single(ConnectionManager::new_with_config(client.clone(), config).await?)
                }
                Client::Cluster(client) => Handle::Cluster(client.get_async_connection().await?),
            };
            let mut connection = Connection { handle, deadline };
            redis::cmd("PING").query_async::<()>(&mut connection).await?;
            Ok(connection.handle)
        };
        let connected = tokio::time::timeout_at(deadline, connect)
            .await
            .unwrap_or_else(|_| Err(timed_out("connecting to Redis timed out")));
        match connected {
            Ok(handle) => {
                self.link.send_replace(Link::Connected(handle.clone()));
                if !self.health.checked.swap(true, Ordering::Relaxed) {
                    tokio::spawn(check_eviction_policy(handle));
                }
            }
            Err(error) => {
                let why = self.unreachable(&self.describe_connect_failure(&error));
                let retry_at = Some(Instant::now() + CALL_TIMEOUT);
                self.link.send_replace(Link::Idle { retry_at, why });
            }
        }
    }

    /// Runs one Redis command (`call`) in a client span named `operation` (see
    /// [`otel::redis_span`]) and notes its outcome (see [`Redis::observe`]).
    pub(super) async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, FleetError> {
        let span = otel::redis_span(operation);
        let outcome = call.instrument(span.clone()).await;
        if let Err(error) = &outcome {
            otel::redis_span_failed(&span, &format!("{:?}", error.kind()));
        }
        self.observe(outcome)
    }

    /// Notes the outcome of a call: logs the start and the end of an outage once each. A
    /// refused command (an error answer: `MOVED`, `OOM`, `WRONGTYPE`…) fails its call but is
    /// no outage: Redis answered. It is logged at most once a minute per kind.
    pub(super) fn observe<T>(&self, outcome: redis::RedisResult<T>) -> Result<T, FleetError> {
        match outcome {
            Ok(value) => {
                self.answered();
                Ok(value)
            }
            Err(error) if is_outage(&error) => Err(FleetError::Unavailable(self.unreachable(&describe(&error)))),
            Err(error) => {
                self.answered();
                Err(FleetError::Refused(self.refused(&error)))
            }
        }
    }

    /// Redis answered: ends an outage, if there was one.
    fn answered(&self) {
        if self.health.down.swap(false, Ordering::Relaxed) {
            tracing::info!("the fleet store (Redis) answers again");
            metrics::gauge!(FLEET_STORE_UP).set(1.0);
        }
    }

    /// Redis cannot be reached (`why`): starts an outage, if there was none. Returns `why`.
    fn unreachable(&self, why: &str) -> String {
        if !self.health.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %why, "the fleet store (Redis) is unavailable");
            metrics::gauge!(FLEET_STORE_UP).set(0.0);
        }
        why.to_owned()
    }

    /// Logs a refused command (at most once a minute per kind) and says why it was refused.
    fn refused(&self, error: &RedisError) -> String {
        let kind = error.code().map_or_else(|| format!("{:?}", error.kind()), str::to_owned);
        let why = format!("Redis refused the command ({kind}): {}", error.detail().unwrap_or_default());
        let now = Instant::now();
        let log = {
            let mut logged = self.health.refusals_logged.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if logged.len() >= 64 {
                logged.clear(); // bounded: Redis's error codes are few, a flood of new ones is not
            }
            match logged.get(&kind) {
                Some(at) if now.duration_since(*at) < REFUSAL_LOG_EVERY => false,
                _ => {
                    logged.insert(kind.clone(), now);
                    true
                }
            }
        };
        if log {
            tracing::warn!(kind = %kind, error = %why, "Redis refused a command of the fleet store (logged once a minute per kind)");
        }
        why
    }

    /// A failed connect in words that never hold the URL: a TLS handshake that failed says so.
    fn describe_connect_failure(&self, error: &RedisError) -> String {
        if self.health.tls && error.kind() == ErrorKind::Io && is_tls_failure(error) {
            return format!(
                "TLS handshake with Redis failed: {}",
                scrub(&error.to_string(), self.health.password.as_deref())
            );
        }
        match error.kind() {
            ErrorKind::AuthenticationFailed => "Redis refused the credentials".to_owned(),
            ErrorKind::Io if error.is_timeout() => "connecting to Redis timed out".to_owned(),
            _ => describe(error),
        }
    }
}

/// The connection of one call (see [`Redis::connection`]): the commands sent on it fail once
/// the call's deadline has passed.
pub struct Connection {
    handle: Handle,
    deadline: Instant,
}

impl Connection {
    async fn by_deadline<T>(
        deadline: Instant,
        command: impl Future<Output = redis::RedisResult<T>>,
    ) -> redis::RedisResult<T> {
        tokio::time::timeout_at(deadline, command)
            .await
            .unwrap_or_else(|_| Err(timed_out("Redis did not answer in time")))
    }
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, command: &'a redis::Cmd) -> RedisFuture<'a, Value> {
        let answer = match &mut self.handle {
            Handle::Single(manager) => manager.req_packed_command(command),
            Handle::Cluster(cluster) => cluster.req_packed_command(command),
        };
        Box::pin(Self::by_deadline(self.deadline, answer))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let answers = match &mut self.handle {
            Handle::Single(manager) => manager.req_packed_commands(pipeline, offset, count),
            Handle::Cluster(cluster) => cluster.req_packed_commands(pipeline, offset, count),
        };
        Box::pin(Self::by_deadline(self.deadline, answers))
    }

    fn get_db(&self) -> i64 {
        match &self.handle {
            Handle::Single(manager) => manager.get_db(),
            Handle::Cluster(cluster) => cluster.get_db(),
        }
    }
}

/// Warns when Redis may evict the fleet's keys: a lease, a claim or a registry record that
/// vanishes under memory pressure breaks the promises they keep (one export per
/// `request_id`, one poller per task). Managed Redis often disables `CONFIG`: then it is said
/// that the policy could not be checked.
async fn check_eviction_policy(handle: Handle) {
    let mut connection = Connection { handle, deadline: Instant::now() + CALL_TIMEOUT };
    let answer = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async::<HashMap<String, String>>(&mut connection)
        .await;
    match answer.map(|mut settings| settings.remove("maxmemory-policy")) {
        Ok(Some(policy)) if policy == "noeviction" => {}
        Ok(Some(policy)) => tracing::warn!(
            %policy,
            "Redis may evict the fleet's keys (maxmemory-policy is not noeviction): leases, claims and the task \
             registry can vanish under memory pressure; set maxmemory-policy noeviction"
        ),
        Ok(None) => tracing::warn!(
            "Redis's maxmemory-policy could not be checked (CONFIG GET answered nothing); it must be noeviction"
        ),
        Err(error) => tracing::warn!(
            error = %describe(&error),
            "Redis's maxmemory-policy could not be checked (CONFIG may be disabled, as on managed Redis); it must be noeviction"
        ),
    }
}

/// What goes inside a key's hash tag: `tagged` as it is when it can be, otherwise escaped
/// (`%` → `%25`, `{` → `%7B`, `}` → `%7D`), and `%` for an empty one. A `}` would end the tag
/// early and an empty tag is no tag (Redis Cluster would then hash the whole key, so that a
/// script's keys might sit in different slots). The escape is one-to-one: distinct values
/// stay distinct keys.
fn hash_tag(tagged: &str) -> std::borrow::Cow<'_, str> {
    if tagged.is_empty() {
        return "%".into();
    }
    if !tagged.contains(['%', '{', '}']) {
        return tagged.into();
    }
    let mut escaped = String::with_capacity(tagged.len() + 8);
    for character in tagged.chars() {
        match character {
            '%' => escaped.push_str("%25"),
            '{' => escaped.push_str("%7B"),
            '}' => escaped.push_str("%7D"),
            other => escaped.push(other),
        }
    }
    escaped.into()
}

/// Whether `error` says that Redis cannot be used at all now (unreachable, too slow, loading,
/// a cluster without a quorum), as opposed to a command it refused.
fn is_outage(error: &RedisError) -> bool {
    match error.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
        ErrorKind::Server(kind) => matches!(
            kind,
            ServerErrorKind::BusyLoading
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
        ),
        _ => error.is_timeout() || error.is_connection_dropped() || error.is_connection_refusal(),
    }
}

/// Whether a failed connect over `rediss://` failed in the TLS handshake (rustls's errors,
/// as tokio-rustls reports them; the TCP connect's own errors say nothing of TLS).
fn is_tls_failure(error: &RedisError) -> bool {
    let words = error.to_string().to_lowercase();
    [
        "tls",
        "certificate",
        "handshake",
        "corrupt message",
        "alert",
        "peer is incompatible",
        "peer misbehaved",
        "dns name",
    ]
    .iter()
    .any(|sign| words.contains(sign))
}

/// `words` without the URL's password, should an error ever quote it.
fn scrub(words: &str, password: Option<&str>) -> String {
    match password {
        Some(password) => words.replace(password, "***"),
        None => words.to_owned(),
    }
}

/// The nodes of a Redis Cluster URL, each as a URL of its own (with the user, password and
/// path of the whole); `None` for one Redis. A cluster URL has the scheme `redis+cluster` or
/// `rediss+cluster`, or several comma-separated nodes.
fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let (scheme, marked) = match scheme.strip_suffix("+cluster") {
        Some(scheme) => (scheme, true),
        None => (scheme, false),
    };
    let (authority, path) = rest.find(['/', '?']).map_or((rest, ""), |at| rest.split_at(at));
    let (user, hosts) = authority.rsplit_once('@').map_or(("", authority), |(user, hosts)| (user, hosts));
    if !marked && !hosts.contains(',') {
        return None;
    }
    let user = if user.is_empty() { String::new() } else { format!("{user}@") };
    Some(
        hosts.split(',').filter(|host| !host.is_empty()).map(|host| format!("{scheme}://{user}{host}{path}")).collect(),
    )
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag (the text between the
/// first `{` and the next `}`, if not empty) or of the whole key, modulo 16384.
fn cluster_slot(key: &[u8]) -> u16 {
    let tagged = key
        .iter()
        .position(|&byte| byte == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&byte| byte == b'}').map(|close| &rest[..close])
        })
        .filter(|tag| !tag.is_empty())
        .unwrap_or(key);
    let crc = tagged.iter().fold(0u16, |crc, &byte| {
        (0..8)
            .fold(crc ^ (u16::from(byte) << 8), |crc, _| if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 })
    });
    crc % 16384
}

fn timed_out(what: &'static str) -> RedisError {
    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, what))
}

/// The gauge that says whether the fleet store answers (1) or not (0).
pub const FLEET_STORE_UP: &str = "stream_export_fleet_store_up";

/// Whole milliseconds, as Redis takes them (`PX`, `PEXPIRE`).
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A Redis error in words that never hold the URL (nor its password).
fn describe(error: &RedisError) -> String {
    match error.kind() {
        ErrorKind::Io if error.is_timeout() => "Redis did not answer in time".to_owned(),
        ErrorKind::Io => "cannot reach Redis".to_owned(),
        kind => format!("Redis error ({kind:?}): {}", error.detail().unwrap_or_default()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis() -> Redis {
        let settings = RedisSettings { url: SecretString::from("redis://127.0.0.1:1"), key_prefix: String::new() };
        Redis::new(&settings, "key").expect("a valid URL")
    }

    /// The hash tag of a key as Redis Cluster reads it: from the first `{` to the next `}`.
    fn tag_of(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = key[open + 1..].find('}').expect("a closed tag");
        &key[open + 1..open + 1 + close]
    }

    #[test]
    fn a_tagged_part_is_one_whole_non_empty_hash_tag_whatever_it_holds() {
        let redis = redis();
        for tagged in ["", "}", "}abc", "a}b", "{", "{}", "%", "%7D", "task-1"] {
            let key = redis.key("watch", tagged, "lease");
            let tag = tag_of(&key);
            assert!(!tag.is_empty(), "{tagged:?} gave an empty tag in {key}");
            assert!(key.ends_with(&format!("{{{tag}}}:lease")), "{tagged:?} split its tag: {key}");
        }
        // Values without braces or `%` keep their keys (no rename of existing data).
        assert_eq!(redis.key("watch", "task-1", "lease").split(':').nth(3), Some("{task-1}"));
    }

    #[test]
    fn distinct_tagged_parts_make_distinct_keys() {
        let redis = redis();
        let tagged = ["", "%", "}", "%7D", "{", "%7B", "%25", "a}", "a%7D"];
        let keys: std::collections::HashSet<String> =
            tagged.iter().map(|tagged| redis.key("submit", tagged, "done")).collect();
        assert_eq!(keys.len(), tagged.len(), "{keys:?}");
    }

    #[test]
    fn refused_commands_are_told_apart_from_outages() {
        // An error answer as Redis sends it.
        let answer = |line: &str| match redis::parse_redis_value(format!("-{line}\r\n").as_bytes()) {
            Ok(Value::ServerError(error)) => RedisError::from(error),
            other => panic!("not an error answer: {other:?}"),
        };
        assert!(is_outage(&timed_out("slow")));
        assert!(is_outage(&RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset))));
        assert!(is_outage(&answer("LOADING Redis is loading the dataset in memory")));
        assert!(is_outage(&answer("CLUSTERDOWN The cluster is down")));
        for refusal in [
            "MOVED 3999 127.0.0.1:6381",
            "CROSSSLOT Keys in request don't hash to the same slot",
            "NOSCRIPT No matching script",
            "OOM command not allowed when used memory > 'maxmemory'",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "ERR unknown command",
        ] {
            assert!(!is_outage(&answer(refusal)), "{refusal}");
        }
    }

    #[test]
    fn cluster_slots_are_redis_clusters() {
        // Known answers of CLUSTER KEYSLOT.
        assert_eq!(cluster_slot(b"foo"), 12182);
        assert_eq!(cluster_slot(b"123456789"), 12739);
        assert_eq!(cluster_slot(b"a:{foo}:b"), 12182);
        assert_eq!(cluster_slot(b"a:{}:foo"), cluster_slot(b"a:{}:foo"));
        assert_ne!(cluster_slot(b"a:{}:foo"), cluster_slot(b"foo"));
    }

    #[test]
    fn cluster_urls_name_their_nodes_and_other_urls_one_redis() {
        assert_eq!(cluster_nodes("redis://:pw@127.0.0.1:6379/0"), None);
        assert_eq!(cluster_nodes("rediss://redis.internal:6380"), None);
        assert_eq!(
            cluster_nodes("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001"),
            Some(vec!["redis://:pw@10.0.0.1:7000".to_owned(), "redis://:pw@10.0.0.2:7001".to_owned()])
        );
        assert_eq!(
            cluster_nodes("rediss+cluster://user:pw@node:7000"),
            Some(vec!["rediss://user:pw@node:7000".to_owned()])
        );
        assert_eq!(
            cluster_nodes("redis://a:1,b:2/?protocol=resp3"),
            Some(vec!["redis://a:1/?protocol=resp3".to_owned(), "redis://b:2/?protocol=resp3".to_owned()])
        );
        let settings = |url: &str| RedisSettings { url: SecretString::from(url), key_prefix: String::new() };
        assert!(Redis::new(&settings("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001"), "key").is_ok());
        assert!(Redis::new(&settings("redis+cluster://"), "key").is_err());
    }
}
