//! Conversions between Stream's JSON and the protobuf messages.

use chrono::{DateTime, Utc};
use prost_types::{ListValue, Struct, Timestamp, Value, value::Kind};
use serde_json::Map;

use crate::{
    proto::{ExportUserResponse, Task, TaskError, TaskResult, TaskState},
    upstream::wire::{TaskStatus, UserExport},
};

/// How long Stream's signed result URLs stay valid.
pub const RESULT_URL_LIFETIME: chrono::Duration = chrono::Duration::hours(24);

/// Maps upstream's status string; an unknown one maps to UNSPECIFIED (the string is kept).
pub fn task_state(status: &str) -> TaskState {
    match status {
        "waiting" => TaskState::Waiting,
        "pending" => TaskState::Pending,
        "running" => TaskState::Running,
        "completed" => TaskState::Completed,
        "failed" => TaskState::Failed,
        "canceled" | "cancelled" => TaskState::Canceled,
        _ => TaskState::Unspecified,
    }
}

/// Builds the `Task` message. `observed_at` is when the status was read: upstream re-signs the
/// result URL on every read, so its expiry is counted from then unless the URL states it.
pub fn task(status: TaskStatus, observed_at: DateTime<Utc>) -> Task {
    let result = status.result.and_then(|result| {
        let url = result.url?;
        let expires = url_expiry(&url).unwrap_or(observed_at + RESULT_URL_LIFETIME);
        Some(TaskResult { url, path: result.path.unwrap_or_default(), url_expire_time: Some(timestamp(expires)) })
    });
    Task {
        state: task_state(&status.status) as i32,
        task_id: status.task_id,
        upstream_status: status.status,
        create_time: status.created_at.map(timestamp),
        update_time: status.updated_at.map(timestamp),
        result,
        error: status.error.map(|error| TaskError { r#type: error.error_type, description: error.description }),
    }
}

/// Reads the expiry a presigned URL states: S3 query-string auth v2 (`Expires=<unix>`) or v4
/// (`X-Amz-Date` + `X-Amz-Expires`).
fn url_expiry(url: &str) -> Option<DateTime<Utc>> {
    let url = url::Url::parse(url).ok()?;
    let param = |name: &str| url.query_pairs().find(|(key, _)| key == name).map(|(_, value)| value.into_owned());
    if let Some(expires) = param("Expires") {
        return DateTime::from_timestamp(expires.parse().ok()?, 0);
    }
    let signed = chrono::NaiveDateTime::parse_from_str(&param("X-Amz-Date")?, "%Y%m%dT%H%M%SZ").ok()?.and_utc();
    signed.checked_add_signed(chrono::Duration::try_seconds(param("X-Amz-Expires")?.parse().ok()?)?)
}

/// Converts an instant to a protobuf timestamp.
pub fn timestamp(instant: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: instant.timestamp(), nanos: instant.timestamp_subsec_nanos() as i32 }
}

/// Builds the `ExportUser` response, keeping every field upstream sent.
pub fn user_export(export: UserExport) -> ExportUserResponse {
    ExportUserResponse {
        user: export.user.map(to_struct),
        messages: export.messages.into_iter().map(to_struct).collect(),
        reactions: export.reactions.into_iter().map(to_struct).collect(),
    }
}

/// Converts a JSON object to a `google.protobuf.Struct`. Numbers become doubles, as the
/// protobuf JSON mapping defines; integers up to 2^53 survive exactly.
pub fn to_struct(object: Map<String, serde_json::Value>) -> Struct {
    Struct { fields: object.into_iter().map(|(key, value)| (key, to_value(value))).collect() }
}

fn to_value(value: serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => {
            Kind::ListValue(ListValue { values: items.into_iter().map(to_value).collect() })
        }
        serde_json::Value::Object(object) => Kind::StructValue(to_struct(object)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_status_is_kept_verbatim() {
        let status = TaskStatus {
            task_id: "t".into(),
            status: "paused".into(),
            created_at: None,
            updated_at: None,
            result: None,
            error: None,
        };
        let task = task(status, Utc::now());
        assert_eq!((task.state(), task.upstream_status.as_str()), (TaskState::Unspecified, "paused"));
    }

    #[test]
    fn url_expiry_is_read_from_presigned_urls() {
        let v2 = url_expiry("https://b.s3.amazonaws.com/f.json?Expires=1700000000&Signature=x").unwrap();
        assert_eq!(v2.timestamp(), 1_700_000_000);
        let v4 = url_expiry("https://h/f?X-Amz-Date=20231114T221320Z&X-Amz-Expires=86400&X-Amz-Signature=x").unwrap();
        assert_eq!(v4.timestamp(), 1_700_000_000 + 86_400);
        assert_eq!(url_expiry("https://h/f?sig=x"), None);
    }

    #[test]
    fn nested_json_survives_the_struct_conversion() {
        let json = serde_json::json!({"id": "u", "n": 3, "tags": ["a", null], "meta": {"deep": true}});
        let serde_json::Value::Object(object) = json else { unreachable!() };
        let converted = to_struct(object);
        let Some(Kind::StructValue(meta)) = &converted.fields["meta"].kind else { panic!("meta is not a struct") };
        assert_eq!(meta.fields["deep"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(converted.fields["n"].kind, Some(Kind::NumberValue(3.0)));
    }
}
