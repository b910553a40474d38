//! The export jobs group: the export budget, shards, retries and caps, into [`JobSettings`]
//! (whose `Default` holds every default).

use super::{ConfigError, FlagDuration, positive_counts, positive_durations};
use crate::{
    archive::{AllowList, ArchiveSettings, StoreOptions},
    jobs::JobSettings,
};

/// Stream's limit on the channels or users of one export request.
const STREAM_ITEMS_PER_EXPORT: usize = 25;

/// Flags of export jobs.
#[derive(clap::Args, Debug)]
pub struct JobArgs {
    /// Export jobs: export submits per minute, all jobs together (in fleet mode, of this
    /// replica), paced evenly. Stream allows 60 a minute per app, a second's share being 2.
    #[arg(long, env = "STREAM_EXPORT_UPSTREAM_EXPORT_BUDGET", default_value_t = JobSettings::default().export_budget_per_minute)]
    pub upstream_export_budget: u32,

    /// Export jobs: a task not finished this long after its submit is submitted again (once;
    /// the earlier task id is kept in the shard's history).
    #[arg(long, env = "STREAM_EXPORT_JOB_TASK_DEADLINE", default_value_t = FlagDuration(JobSettings::default().task_deadline))]
    pub job_task_deadline: FlagDuration,

    /// Export jobs: how many times a shard's export is submitted before its failure fails the job.
    #[arg(long, env = "STREAM_EXPORT_JOB_TASK_ATTEMPTS", default_value_t = JobSettings::default().task_attempts)]
    pub job_task_attempts: u32,

    /// Export jobs: the wait before a failed task is submitted again; it doubles per attempt.
    #[arg(long, env = "STREAM_EXPORT_JOB_RETRY_DELAY", default_value_t = FlagDuration(JobSettings::default().retry_delay))]
    pub job_retry_delay: FlagDuration,

    /// Export jobs: most channels or users of one task (Stream's limit, 25, at most).
    #[arg(long, env = "STREAM_EXPORT_JOB_SHARD_SIZE", default_value_t = JobSettings::default().shard_size)]
    pub job_shard_size: usize,

    /// Export jobs: most channels or users in one job (a list, or what a channel query lists).
    #[arg(long, env = "STREAM_EXPORT_JOB_MAX_CHANNELS", default_value_t = JobSettings::default().max_channels)]
    pub job_max_channels: usize,

    /// Export jobs: most jobs running at once on this replica, all callers together.
    #[arg(long, env = "STREAM_EXPORT_JOB_MAX_RUNNING", default_value_t = JobSettings::default().max_running)]
    pub job_max_running: usize,

    /// Export jobs: most jobs one caller runs at once on this replica.
    #[arg(long, env = "STREAM_EXPORT_JOB_MAX_RUNNING_PER_CALLER", default_value_t = JobSettings::default().max_running_per_caller)]
    pub job_max_running_per_caller: usize,

    /// Archives: a prefix under which export jobs may write their files (`s3://bucket/prefix`,
    /// `gs://…`, `az://container/…`, `file:///path`); repeat it, or separate with commas.
    /// None: archiving is off. The stores' credentials come from the cloud's own variables
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    #[arg(long, env = "STREAM_EXPORT_ARCHIVE_ALLOW", value_delimiter = ',')]
    pub archive_allow: Vec<String>,
}

impl JobArgs {
    /// Rejects budgets, sizes and durations that cannot work.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_durations(&[
            (self.job_task_deadline, "STREAM_EXPORT_JOB_TASK_DEADLINE (--job-task-deadline)"),
            (self.job_retry_delay, "STREAM_EXPORT_JOB_RETRY_DELAY (--job-retry-delay)"),
        ])?;
        positive_counts(&[
            (u64::from(self.upstream_export_budget), "STREAM_EXPORT_UPSTREAM_EXPORT_BUDGET (--upstream-export-budget)"),
            (u64::from(self.job_task_attempts), "STREAM_EXPORT_JOB_TASK_ATTEMPTS (--job-task-attempts)"),
            (self.job_shard_size as u64, "STREAM_EXPORT_JOB_SHARD_SIZE (--job-shard-size)"),
            (self.job_max_channels as u64, "STREAM_EXPORT_JOB_MAX_CHANNELS (--job-max-channels)"),
            (self.job_max_running as u64, "STREAM_EXPORT_JOB_MAX_RUNNING (--job-max-running)"),
            (
                self.job_max_running_per_caller as u64,
                "STREAM_EXPORT_JOB_MAX_RUNNING_PER_CALLER (--job-max-running-per-caller)",
            ),
        ])?;
        AllowList::new(&self.archive_allow)
            .map_err(|why| ConfigError::invalid("STREAM_EXPORT_ARCHIVE_ALLOW (--archive-allow)", why))?;
        if self.job_shard_size > STREAM_ITEMS_PER_EXPORT {
            return Err(ConfigError::invalid(
                "STREAM_EXPORT_JOB_SHARD_SIZE (--job-shard-size)",
                format!("Stream exports at most {STREAM_ITEMS_PER_EXPORT} channels or users per request"),
            ));
        }
        Ok(())
    }

    /// The archive settings: the allowed prefixes, and the cloud variables of this process.
    pub(super) fn archive_settings(&self) -> ArchiveSettings {
        ArchiveSettings { allow: self.archive_allow.clone(), store_options: StoreOptions::from_env() }
    }

    pub(super) fn into_settings(self) -> JobSettings {
        JobSettings {
            shard_size: self.job_shard_size,
            export_budget_per_minute: self.upstream_export_budget,
            task_deadline: self.job_task_deadline.0,
            task_attempts: self.job_task_attempts,
            retry_delay: self.job_retry_delay.0,
            max_channels: self.job_max_channels,
            max_running: self.job_max_running,
            max_running_per_caller: self.job_max_running_per_caller,
        }
    }
}
