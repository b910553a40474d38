//! Request and response bodies of the export endpoints, as Stream puts them on the wire.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Body of `POST /export_channels`.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct ExportChannelsBody {
    /// The channels to export.
    pub channels: Vec<ChannelExport>,
    /// Also export messages hidden by a truncation.
    #[serde(skip_serializing_if = "is_false")]
    pub include_truncated_messages: bool,
    /// Also export soft-deleted channels.
    #[serde(skip_serializing_if = "is_false")]
    pub include_soft_deleted_channels: bool,
    /// Clear the text of deleted messages.
    #[serde(skip_serializing_if = "is_false")]
    pub clear_deleted_message_text: bool,
    /// Also export the channels' users.
    #[serde(skip_serializing_if = "is_false")]
    pub export_users: bool,
    /// `"v1"` or `"v2"`; left out for upstream's default (v1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'static str>,
}

/// One channel of an export request.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ChannelExport {
    /// The channel type.
    #[serde(rename = "type")]
    pub channel_type: String,
    /// The channel id.
    pub id: String,
    /// Only messages after this instant.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339_micros")]
    pub messages_since: Option<DateTime<Utc>>,
    /// Only messages before this instant.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "rfc3339_micros")]
    pub messages_until: Option<DateTime<Utc>>,
}

/// Body of `POST /channels` (QueryChannels) as a lister sends it: channel rows only, no state,
/// no watch, no presence (what Stream's docs advise for background work).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QueryChannelsBody {
    /// Stream's MongoDB-style `filter_conditions`.
    pub filter_conditions: serde_json::Value,
    /// The order of the rows.
    pub sort: Vec<SortParam>,
    /// Rows per page (at most 30).
    pub limit: u32,
    /// Always false: the lister needs the channel rows only.
    pub state: bool,
    /// Always false.
    pub watch: bool,
    /// Always false.
    pub presence: bool,
}

/// One sort key of QueryChannels.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SortParam {
    /// The field.
    pub field: &'static str,
    /// 1 ascending, -1 descending.
    pub direction: i8,
}

/// Answer of `POST /channels`.
#[derive(Clone, Debug, Deserialize)]
pub struct QueriedChannels {
    /// The page's rows.
    pub channels: Vec<QueriedChannel>,
}

/// One row of QueryChannels' answer; only what a lister reads.
#[derive(Clone, Debug, Deserialize)]
pub struct QueriedChannel {
    /// The channel.
    pub channel: ChannelSummary,
}

/// The fields of a channel a lister reads.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ChannelSummary {
    /// `type:id`.
    pub cid: String,
    /// The channel type.
    #[serde(rename = "type")]
    pub channel_type: String,
    /// The channel id.
    pub id: String,
    /// When the channel was created, as Stream wrote it (sent back verbatim in the next page's
    /// filter, so that no rounding can skip or repeat a row).
    pub created_at: String,
}

/// Body of `POST /export/users`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ExportUsersBody {
    /// The users to export.
    pub user_ids: Vec<String>,
}

/// Response of the submit calls.
#[derive(Clone, Debug, Deserialize)]
pub struct TaskCreated {
    /// The new task's id.
    pub task_id: String,
}

/// Response of `GET /tasks/{id}` (and of the older `GET /export_channels/{id}`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TaskStatus {
    /// The task id.
    pub task_id: String,
    /// `waiting`, `pending`, `running`, `completed`, `failed`, or a value unknown to us.
    pub status: String,
    /// When the task was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
    /// When the task last changed.
    #[serde(default)]
    pub updated_at: Option<DateTime<Utc>>,
    /// Present once completed.
    #[serde(default)]
    pub result: Option<TaskResult>,
    /// Present once failed.
    #[serde(default)]
    pub error: Option<TaskError>,
}

/// Where a completed export can be downloaded.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TaskResult {
    /// The signed download URL (valid 24 h from signing).
    #[serde(default)]
    pub url: Option<String>,
    /// The storage path of the file.
    #[serde(default)]
    pub path: Option<String>,
}

/// Why a task failed.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct TaskError {
    /// The error type.
    #[serde(rename = "type", default)]
    pub error_type: String,
    /// A description.
    #[serde(default)]
    pub description: String,
}

/// Response of `GET /users/{id}/export`. The entities stay untyped JSON so that nothing
/// (custom fields included) is lost on the way to the client.
#[derive(Clone, Debug, Deserialize)]
pub struct UserExport {
    /// The user object.
    #[serde(default)]
    pub user: Option<serde_json::Map<String, serde_json::Value>>,
    /// The user's messages.
    #[serde(default)]
    pub messages: Vec<serde_json::Map<String, serde_json::Value>>,
    /// The user's reactions.
    #[serde(default)]
    pub reactions: Vec<serde_json::Map<String, serde_json::Value>>,
}

/// Stream's error body (`APIError`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct ApiErrorBody {
    /// The Stream error code (4 input, 9 rate limit, 16 not found, ...).
    pub code: i64,
    /// `"<Operation> failed with error: \"<detail>\""`.
    #[serde(default)]
    pub message: String,
    /// Per-field input errors.
    #[serde(default)]
    pub exception_fields: BTreeMap<String, String>,
}

fn is_false(value: &bool) -> bool {
    !value
}

/// Writes an instant as RFC 3339 UTC with microseconds, the precision Stream keeps.
fn rfc3339_micros<S: serde::Serializer>(value: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(instant) => serializer.serialize_str(&instant.to_rfc3339_opts(SecondsFormat::Micros, true)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn export_channels_body_leaves_unset_options_out() {
        let body = ExportChannelsBody {
            channels: vec![ChannelExport {
                channel_type: "messaging".into(),
                id: "general".into(),
                messages_since: DateTime::from_timestamp(1_605_000_600, 123_456_000),
                messages_until: None,
            }],
            include_truncated_messages: true,
            version: Some("v2"),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "channels": [{"type": "messaging", "id": "general", "messages_since": "2020-11-10T09:30:00.123456Z"}],
                "include_truncated_messages": true,
                "version": "v2"
            })
        );
    }

    #[test]
    fn task_status_accepts_any_rfc3339_form_and_unknown_fields() {
        let status: TaskStatus = serde_json::from_value(serde_json::json!({
            "task_id": "t", "status": "completed", "duration": "1.00ms",
            "created_at": "2021-02-17T08:17:49.745857Z", "updated_at": "2021-02-17T10:17:49+02:00",
            "result": {"url": "https://x/y", "path": "y", "s3_bucket_name": "b"}
        }))
        .unwrap();
        assert_eq!(status.updated_at.unwrap().to_rfc3339(), "2021-02-17T08:17:49+00:00");
        assert_eq!(status.result.unwrap().url.as_deref(), Some("https://x/y"));
    }
}
