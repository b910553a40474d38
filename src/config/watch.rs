//! The WatchTask group: polling, streams, retention and the fleet's lease, into
//! [`WatchSettings`] (whose `Default` holds every default).

use super::{ConfigError, FlagDuration, positive_counts, positive_durations};
use crate::task_watch::WatchSettings;

/// Flags of WatchTask.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// WatchTask: send a heartbeat after this long without another event.
    #[arg(long, env = "STREAM_EXPORT_WATCH_HEARTBEAT", default_value_t = FlagDuration(WatchSettings::default().heartbeat_interval))]
    pub watch_heartbeat: FlagDuration,

    /// WatchTask: first interval between upstream polls of a task, and the interval after a change.
    #[arg(long, env = "STREAM_EXPORT_WATCH_POLL_MIN", default_value_t = FlagDuration(WatchSettings::default().poll_interval_min))]
    pub watch_poll_min: FlagDuration,

    /// WatchTask: longest interval between upstream polls of an unchanged task.
    #[arg(long, env = "STREAM_EXPORT_WATCH_POLL_MAX", default_value_t = FlagDuration(WatchSettings::default().poll_interval_max))]
    pub watch_poll_max: FlagDuration,

    /// WatchTask: how long upstream may keep failing before watchers get UNAVAILABLE.
    #[arg(long, env = "STREAM_EXPORT_WATCH_FAILURE_BUDGET", default_value_t = FlagDuration(WatchSettings::default().failure_budget))]
    pub watch_failure_budget: FlagDuration,

    /// WatchTask: the longest a stream lives before it ends as interrupted (resumable).
    #[arg(long, env = "STREAM_EXPORT_WATCH_MAX_LIFETIME", default_value_t = FlagDuration(WatchSettings::default().max_stream_lifetime))]
    pub watch_max_lifetime: FlagDuration,

    /// WatchTask: most concurrent watch streams on this replica.
    #[arg(long, env = "STREAM_EXPORT_WATCH_MAX_STREAMS", default_value_t = WatchSettings::default().max_streams)]
    pub watch_max_streams: usize,

    /// WatchTask: most concurrent watch streams of one caller on this replica.
    #[arg(long, env = "STREAM_EXPORT_WATCH_MAX_STREAMS_PER_CALLER", default_value_t = WatchSettings::default().max_streams_per_caller)]
    pub watch_max_streams_per_caller: usize,

    /// WatchTask: how long a finished task's final state is kept for late watchers.
    #[arg(long, env = "STREAM_EXPORT_WATCH_RETENTION", default_value_t = FlagDuration(WatchSettings::default().terminal_retention))]
    pub watch_retention: FlagDuration,

    /// WatchTask: how long upstream's NOT_FOUND for a task id is remembered, so that repeated
    /// watchers of an unknown id do not spend the upstream budget again.
    #[arg(long, env = "STREAM_EXPORT_WATCH_NOT_FOUND_TTL", default_value_t = FlagDuration(WatchSettings::default().not_found_retention))]
    pub watch_not_found_ttl: FlagDuration,

    /// Upstream task-status requests per second, all watched tasks together; in fleet mode,
    /// of all the replicas that share the Redis together.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_POLL_BUDGET", default_value_t = WatchSettings::default().upstream_budget_per_second)]
    pub upstream_poll_budget: f64,

    /// Fleet mode: how long a replica's lease on polling a task lasts unless it renews it (every
    /// third of it); another replica with watchers takes over a dead replica's polls within
    /// about this long plus --watch-fleet-follow-interval.
    #[arg(long, env = "STREAM_EXPORT_WATCH_FLEET_LEASE", default_value_t = FlagDuration(WatchSettings::default().fleet_lease))]
    pub watch_fleet_lease: FlagDuration,

    /// Fleet mode: how often a replica reads the shared state of a task that another replica
    /// polls while changes are not announced (no subscription yet, or a Redis Cluster): then
    /// the delay a change may take to reach its watchers. With announcements (pub/sub on one
    /// Redis) it reads the state when it changes, and at least once a lease.
    #[arg(long, env = "STREAM_EXPORT_WATCH_FLEET_FOLLOW_INTERVAL", default_value_t = FlagDuration(WatchSettings::default().fleet_follow_interval))]
    pub watch_fleet_follow_interval: FlagDuration,
}

impl WatchArgs {
    /// Rejects intervals, counts and budgets that cannot work.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_durations(&[
            (self.watch_heartbeat, "STREAM_EXPORT_WATCH_HEARTBEAT (--watch-heartbeat)"),
            (self.watch_poll_min, "STREAM_EXPORT_WATCH_POLL_MIN (--watch-poll-min)"),
            (self.watch_max_lifetime, "STREAM_EXPORT_WATCH_MAX_LIFETIME (--watch-max-lifetime)"),
            (self.watch_fleet_lease, "STREAM_EXPORT_WATCH_FLEET_LEASE (--watch-fleet-lease)"),
            (
                self.watch_fleet_follow_interval,
                "STREAM_EXPORT_WATCH_FLEET_FOLLOW_INTERVAL (--watch-fleet-follow-interval)",
            ),
        ])?;
        positive_counts(&[
            (self.watch_max_streams as u64, "STREAM_EXPORT_WATCH_MAX_STREAMS (--watch-max-streams)"),
            (
                self.watch_max_streams_per_caller as u64,
                "STREAM_EXPORT_WATCH_MAX_STREAMS_PER_CALLER (--watch-max-streams-per-caller)",
            ),
        ])?;
        if self.watch_poll_max.0 < self.watch_poll_min.0 {
            return Err(ConfigError(
                "STREAM_EXPORT_WATCH_POLL_MAX (--watch-poll-max) must not be shorter than --watch-poll-min".into(),
            ));
        }
        if !(self.upstream_poll_budget.is_finite() && self.upstream_poll_budget > 0.0) {
            return Err(ConfigError(
                "STREAM_EXPORT_UPSTREAM_POLL_BUDGET (--upstream-poll-budget) must be a positive number".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn into_settings(self) -> WatchSettings {
        WatchSettings {
            heartbeat_interval: self.watch_heartbeat.0,
            poll_interval_min: self.watch_poll_min.0,
            poll_interval_max: self.watch_poll_max.0,
            failure_budget: self.watch_failure_budget.0,
            max_stream_lifetime: self.watch_max_lifetime.0,
            max_streams: self.watch_max_streams,
            max_streams_per_caller: self.watch_max_streams_per_caller,
            upstream_budget_per_second: self.upstream_poll_budget,
            terminal_retention: self.watch_retention.0,
            not_found_retention: self.watch_not_found_ttl.0,
            fleet_lease: self.watch_fleet_lease.0,
            fleet_follow_interval: self.watch_fleet_follow_interval.0,
        }
    }
}
