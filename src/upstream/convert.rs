//! Stream's answers as contract messages: a task status as a `Task`, a user export as an
//! `ExportUserResponse`.

use chrono::{DateTime, Utc};

use super::wire::{TaskStatus, UserExport};
use crate::contract::{
    json::to_struct,
    proto::{ExportUserResponse, Task, TaskError, TaskResult, TaskState},
    task::timestamp,
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

/// Builds the `ExportUser` response, keeping every field upstream sent.
pub fn user_export(export: UserExport) -> ExportUserResponse {
    ExportUserResponse {
        user: export.user.map(|user| to_struct(user).into()),
        messages: export.messages.into_iter().map(|message| to_struct(message).into()).collect(),
        reactions: export.reactions.into_iter().map(|reaction| to_struct(reaction).into()).collect(),
    }
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
}
