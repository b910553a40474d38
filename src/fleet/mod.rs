//! Fleet mode: every Redis implementation of the service's seams, for replicas that share a
//! Redis (or a Redis Cluster). `startup` builds these when `--redis-url` is set, and the
//! single-process backends otherwise; nothing else knows which it has.
//!
//! - [`connection`]: the connection to Redis, its outages and refusals ([`FleetError`]), and
//!   the namespace of this deployment's keys (with hash tags).
//! - [`script`]: the one way the fleet runs a Lua script; [`lease`]: the one lease (claim,
//!   renew, release) that submits and watches hold.
//! - [`members`]: the replicas alive, by heartbeat.
//! - [`submit`] and [`registry`]: the stores (`store::SubmitStore`, `store::TaskRegistry`);
//!   [`jobs`]: export jobs (`store::jobs::JobStore`) and the lease by which one replica runs
//!   each job (`jobs::JobClaims`); `schedules`: export schedules
//!   (`store::schedules::ScheduleStore`) on the same type, whose fire creates a job.
//! - [`watch_lease`] and [`budget`]: the watch hub's coordination (`task_watch::coordination`:
//!   who polls each task, and the fleet's one upstream budget); `renewals`: a replica's
//!   watch leases, renewed together in one call per interval; `follows`: the reads of the
//!   tasks a replica follows, made together; `changes`: new observations announced by
//!   pub/sub, so that followers read a view when it changed.

pub mod budget;
mod changes;
pub mod connection;
mod follows;
pub mod jobs;
pub mod lease;
pub mod members;
pub mod registry;
mod renewals;
mod schedules;
pub mod script;
pub mod submit;
pub mod watch_lease;

pub use connection::{CALL_TIMEOUT, FLEET_STORE_UP, FleetError, Redis, RedisSettings, millis};
