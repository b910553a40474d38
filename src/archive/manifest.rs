//! An archived job's manifest, `PREFIX/JOB_ID/manifest.json`: what the job was and every file
//! it archived with its size and SHA-256, written last and create-only, so that its presence
//! says the archive is whole; and `SHA256SUMS` beside it, for `sha256sum -c`. The README
//! documents the format; a field is added, never renamed.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    contract::json::from_struct,
    proto::{
        ChannelRef, CreateExportJobRequest, ExportFormatVersion, ExportJob, ExportJobTask,
        create_export_job_request::Selector,
    },
};

/// The manifest format this service writes.
pub const FORMAT: &str = "stream-export.manifest.v1";

/// The manifest's file name, in the job's folder.
pub const MANIFEST: &str = "manifest.json";

/// The checksum list's file name, in the job's folder.
pub const SHA256SUMS: &str = "SHA256SUMS";

/// A job's manifest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    /// The job.
    pub job: ManifestJob,
    /// Every archived file, in shard order.
    pub files: Vec<ManifestFile>,
    /// The shards that failed on their every attempt (a FAILED job's).
    #[serde(default)]
    pub failed_shards: Vec<FailedShard>,
    /// When the job was created (RFC 3339 UTC, µs).
    pub start_time: String,
    /// When the manifest was written.
    pub end_time: String,
}

/// What the job exported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestJob {
    /// The job id.
    pub job_id: String,
    /// Who created it.
    pub owner: String,
    /// `{"channels": N}`, `{"channel_query": FILTER}` or `{"users": N}`.
    pub selector: Value,
    /// The job's window, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_since: Option<String>,
    /// The job's window, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages_until: Option<String>,
    /// The export's options, by their request field names.
    pub options: Value,
    /// `v1` or `v2` for channel jobs, `users` for user jobs.
    pub version: String,
}

/// One archived file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// The object's key in its bucket.
    pub key: String,
    /// Its size.
    pub bytes: u64,
    /// Its SHA-256, lower-case hex.
    pub sha256: String,
    /// The shard it holds.
    pub shard: u32,
    /// The Stream task that made it.
    pub task_id: String,
    /// When Stream created that task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_create_time: Option<String>,
    /// Its channels (`type:id`, with the window each was exported with), for channel jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<Value>,
    /// Its users, for user jobs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// A shard that failed on its every attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FailedShard {
    /// The shard.
    pub shard: u32,
    /// Its tasks, oldest first.
    pub task_ids: Vec<String>,
    /// Why its last attempt failed.
    pub error: String,
}

/// One shard as the manifest needs it.
#[derive(Debug)]
pub struct ShardFacts<'a> {
    /// The shard as callers see it (its archive set once copied).
    pub task: &'a ExportJobTask,
    /// When Stream created its task.
    pub task_created: Option<DateTime<Utc>>,
    /// Why its last attempt failed, if it failed for good.
    pub failed: Option<&'a str>,
}

impl Manifest {
    /// The manifest of `job` (whose request is `request`), with `shards`, written `now`.
    pub fn new(
        job: &ExportJob,
        request: &CreateExportJobRequest,
        shards: &[ShardFacts<'_>],
        now: DateTime<Utc>,
    ) -> Self {
        let files = shards
            .iter()
            .filter_map(|shard| {
                let archive = shard.task.archive.as_ref()?;
                Some(ManifestFile {
                    key: archive.key.clone(),
                    bytes: archive.bytes,
                    sha256: archive.sha256.clone(),
                    shard: shard.task.shard,
                    task_id: shard.task.task_id.clone(),
                    task_create_time: shard.task_created.map(rfc3339),
                    channels: shard.task.channels.iter().map(channel).collect(),
                    users: shard.task.user_ids.clone(),
                })
            })
            .collect();
        let failed_shards = shards
            .iter()
            .filter_map(|shard| {
                let error = shard.failed?;
                let mut task_ids = shard.task.earlier_task_ids.clone();
                task_ids.extend((!shard.task.task_id.is_empty()).then(|| shard.task.task_id.clone()));
                Some(FailedShard { shard: shard.task.shard, task_ids, error: error.to_owned() })
            })
            .collect();
        Self {
            format: FORMAT.to_owned(),
            job: ManifestJob::new(job, request),
            files,
            failed_shards,
            start_time: job.create_time.as_ref().map(timestamp_text).unwrap_or_default(),
            end_time: rfc3339(now),
        }
    }

    /// `SHA256SUMS`: one line per file, its name relative to the manifest's folder.
    pub fn sha256sums(&self) -> String {
        self.files
            .iter()
            .map(|file| format!("{}  {}\n", file.sha256, file.key.rsplit('/').next().unwrap_or(&file.key)))
            .collect()
    }

    /// Whether `other` lists the same files (a manifest written by an earlier try of this job).
    pub fn same_files(&self, other: &Self) -> bool {
        let files = |manifest: &Self| {
            manifest.files.iter().map(|file| (file.key.clone(), file.sha256.clone())).collect::<Vec<_>>()
        };
        self.job.job_id == other.job.job_id && files(self) == files(other)
    }
}

impl ManifestJob {
    fn new(job: &ExportJob, request: &CreateExportJobRequest) -> Self {
        let progress = job.progress.unwrap_or_default();
        let (selector, version) = match &request.selector {
            Some(Selector::ChannelQuery(query)) => {
                let filter = query.filter.as_ref().and_then(|filter| filter.to_struct().ok());
                (json!({"channel_query": filter.map(|filter| from_struct(&filter))}), version(request.version()))
            }
            Some(Selector::Users(_)) => (json!({"users": progress.users_total}), "users"),
            _ => (json!({"channels": progress.channels_total}), version(request.version())),
        };
        Self {
            job_id: job.job_id.clone(),
            owner: job.owner.clone(),
            selector,
            messages_since: request.messages_since.as_ref().map(timestamp_text),
            messages_until: request.messages_until.as_ref().map(timestamp_text),
            options: json!({
                "include_truncated_messages": request.include_truncated_messages,
                "include_soft_deleted_channels": request.include_soft_deleted_channels,
                "clear_deleted_message_text": request.clear_deleted_message_text,
                "export_users": request.export_users,
            }),
            version: version.to_owned(),
        }
    }
}

fn version(version: ExportFormatVersion) -> &'static str {
    match version {
        ExportFormatVersion::V2 => "v2",
        _ => "v1",
    }
}

fn channel(channel: &ChannelRef) -> Value {
    let mut value = json!({"cid": format!("{}:{}", channel.r#type, channel.id)});
    if let Some(since) = &channel.messages_since {
        value["messages_since"] = Value::String(timestamp_text(since));
    }
    if let Some(until) = &channel.messages_until {
        value["messages_until"] = Value::String(timestamp_text(until));
    }
    value
}

fn timestamp_text(at: &prost_types::Timestamp) -> String {
    DateTime::from_timestamp(at.seconds, u32::try_from(at.nanos).unwrap_or(0)).map(rfc3339).unwrap_or_default()
}

fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}
