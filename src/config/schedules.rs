//! The export schedules group: the loop's tick, the catch-up and the caps, into
//! [`ScheduleSettings`] (whose `Default` holds every default).

use super::{ConfigError, FlagDuration, positive_counts, positive_durations};
use crate::jobs::schedules::ScheduleSettings;

/// The least `--schedule-max-backfill`: a month of daily windows can always be caught up.
const LEAST_BACKFILL: u64 = 30;

/// Flags of export schedules.
#[derive(clap::Args, Debug)]
pub struct ScheduleArgs {
    /// Export schedules: how often due windows are looked for (a window's job starts within
    /// about this long after its end and lag).
    #[arg(long, env = "STREAM_EXPORT_SCHEDULE_TICK", default_value_t = FlagDuration(ScheduleSettings::default().tick))]
    pub schedule_tick: FlagDuration,

    /// Export schedules: most jobs of one schedule running at once; after downtime, the missed
    /// windows run this many at a time, in window order.
    #[arg(long, env = "STREAM_EXPORT_SCHEDULE_CATCH_UP", default_value_t = ScheduleSettings::default().catch_up)]
    pub schedule_catch_up: usize,

    /// Export schedules: most windows a new schedule may find already due (a `start_time` in
    /// the past: a backfill), at least 30.
    #[arg(long, env = "STREAM_EXPORT_SCHEDULE_MAX_BACKFILL", default_value_t = ScheduleSettings::default().max_backfill)]
    pub schedule_max_backfill: u64,

    /// Export schedules: most schedules one caller owns.
    #[arg(long, env = "STREAM_EXPORT_SCHEDULE_MAX_PER_CALLER", default_value_t = ScheduleSettings::default().max_per_caller)]
    pub schedule_max_per_caller: usize,

    /// Export schedules: most schedules in all.
    #[arg(long, env = "STREAM_EXPORT_SCHEDULE_MAX", default_value_t = ScheduleSettings::default().max_total)]
    pub schedule_max: usize,
}

impl ScheduleArgs {
    /// Rejects ticks and caps that cannot work.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_durations(&[(self.schedule_tick, "STREAM_EXPORT_SCHEDULE_TICK (--schedule-tick)")])?;
        positive_counts(&[
            (self.schedule_catch_up as u64, "STREAM_EXPORT_SCHEDULE_CATCH_UP (--schedule-catch-up)"),
            (self.schedule_max_per_caller as u64, "STREAM_EXPORT_SCHEDULE_MAX_PER_CALLER (--schedule-max-per-caller)"),
            (self.schedule_max as u64, "STREAM_EXPORT_SCHEDULE_MAX (--schedule-max)"),
        ])?;
        if self.schedule_max_backfill < LEAST_BACKFILL {
            return Err(ConfigError::invalid(
                "STREAM_EXPORT_SCHEDULE_MAX_BACKFILL (--schedule-max-backfill)",
                format!("must be at least {LEAST_BACKFILL} windows"),
            ));
        }
        Ok(())
    }

    pub(super) fn into_settings(self) -> ScheduleSettings {
        ScheduleSettings {
            tick: self.schedule_tick.0,
            catch_up: self.schedule_catch_up,
            max_backfill: self.schedule_max_backfill,
            max_per_caller: self.schedule_max_per_caller,
            max_total: self.schedule_max,
        }
    }
}
