//! JSON renderings of tasks, events and records for the client's output.

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;
use serde_json::{Value, json};

use tonic_types::RpcStatusExt;

use crate::proto::{
    ArchiveMismatch, CreateExportJobRequest, ExportJob, ExportJobEvent, ExportJobState, ExportJobTask, ExportSchedule,
    Task, TaskEvent, TaskState, VerifyExportJobResponse, archive_mismatch::Problem,
    create_export_job_request::Selector, task_event::EventType,
};

/// A state without its `TASK_STATE_` prefix: `RUNNING`, `COMPLETED`…
pub fn state_name(state: TaskState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("TASK_STATE_").unwrap_or(name)
}

/// An event type without its `EVENT_TYPE_` prefix.
pub fn event_type_name(kind: EventType) -> &'static str {
    let name = kind.as_str_name();
    name.strip_prefix("EVENT_TYPE_").unwrap_or(name)
}

/// A job state without its `EXPORT_JOB_STATE_` prefix: `RUNNING`, `SUCCEEDED`…
pub fn job_state_name(state: ExportJobState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("EXPORT_JOB_STATE_").unwrap_or(name)
}

/// A protobuf timestamp as a UTC instant.
pub fn instant(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).unwrap_or(0))
}

/// A protobuf timestamp in RFC 3339, or null.
pub fn time_json(timestamp: Option<&Timestamp>) -> Value {
    timestamp.and_then(instant).map_or(Value::Null, |t| json!(t.to_rfc3339_opts(SecondsFormat::Millis, true)))
}

/// A task as JSON: id, state, upstream status, times, result and error when set.
pub fn task_json(task: &Task) -> Value {
    let mut value = json!({
        "task_id": task.task_id,
        "state": state_name(task.state()),
        "upstream_status": task.upstream_status,
        "create_time": time_json(task.create_time.as_ref()),
        "update_time": time_json(task.update_time.as_ref()),
    });
    if let Some(result) = &task.result {
        value["result"] = json!({
            "url": result.url,
            "path": result.path,
            "url_expire_time": time_json(result.url_expire_time.as_ref()),
        });
    }
    if let Some(error) = &task.error {
        value["error"] = json!({"type": error.r#type, "description": error.description});
    }
    value
}

/// A `WatchTask` event as one JSON line.
pub fn event_json(event: &TaskEvent) -> Value {
    json!({
        "event": "task_event",
        "sequence": event.sequence,
        "type": event_type_name(event.r#type()),
        "task": event.task.as_ref().map_or(Value::Null, task_json),
        "observe_time": time_json(event.observe_time.as_ref()),
    })
}

/// Why a job failed, in one line: `CODE (REASON): message`.
pub fn job_error_text(error: &tonic_types::pb::Status) -> String {
    let code = super::failure::code_name(tonic::Code::from_i32(error.code));
    match error.get_details_error_info() {
        Some(info) => format!("{code} ({}): {}", info.reason, error.message),
        None => format!("{code}: {}", error.message),
    }
}

/// What a job exports, in a few fields: the selector and its size (never the whole list, which
/// may hold 100,000 channels), a query's filter, and the job's window.
fn job_request_json(job: &ExportJob) -> Value {
    job.request.as_ref().map_or(Value::Null, request_json)
}

/// A job's request (or a schedule's template) in a few fields; see [`job_request_json`].
fn request_json(request: &CreateExportJobRequest) -> Value {
    let mut value = match &request.selector {
        Some(Selector::Channels(list)) => json!({"selector": "channels", "channels": list.channels.len()}),
        Some(Selector::ChannelQuery(query)) => json!({
            "selector": "channel_query",
            "filter": query.filter.as_ref().and_then(|f| f.to_struct().ok()).map_or(Value::Null, |f| {
                crate::contract::json::from_struct(&f)
            }),
        }),
        Some(Selector::Users(list)) => json!({"selector": "users", "users": list.user_ids.len()}),
        None => json!({"selector": null}),
    };
    value["messages_since"] = time_json(request.messages_since.as_ref());
    value["messages_until"] = time_json(request.messages_until.as_ref());
    value["archive_uri"] = if request.archive_uri.is_empty() { Value::Null } else { json!(request.archive_uri) };
    value["verify"] = json!(request.verify);
    value
}

/// Where a job archives its files, if it does.
pub fn archive_uri(job: &ExportJob) -> Option<&str> {
    job.request.as_ref().map(|request| request.archive_uri.as_str()).filter(|uri| !uri.is_empty())
}

/// A job as JSON: id, owner, state, progress, times, what it exports, and its error when set.
pub fn job_json(job: &ExportJob) -> Value {
    let progress = job.progress.unwrap_or_default();
    let mut value = json!({
        "job_id": job.job_id,
        "owner": job.owner,
        "state": job_state_name(job.state()),
        "progress": {
            "channels_total": progress.channels_total,
            "users_total": progress.users_total,
            "tasks_total": progress.tasks_total,
            "tasks_submitted": progress.tasks_submitted,
            "tasks_completed": progress.tasks_completed,
            "tasks_failed": progress.tasks_failed,
            "tasks_archived": progress.tasks_archived,
            "bytes_archived": progress.bytes_archived,
        },
        "request": job_request_json(job),
        "create_time": time_json(job.create_time.as_ref()),
        "update_time": time_json(job.update_time.as_ref()),
        "end_time": time_json(job.end_time.as_ref()),
        "manifest_uri": if job.manifest_uri.is_empty() { Value::Null } else { json!(job.manifest_uri) },
        "schedule_id": if job.schedule_id.is_empty() { Value::Null } else { json!(job.schedule_id) },
    });
    if let Some(error) = &job.error {
        value["error"] = json!({
            "code": super::failure::code_name(tonic::Code::from_i32(error.code)),
            "reason": error.get_details_error_info().map(|info| info.reason),
            "message": error.message,
        });
    }
    value
}

/// A job as one JSON line of its own: `{"event": event, "job_id": …, "job": {…}}`.
pub fn job_line(event: &str, job: &ExportJob) -> Value {
    json!({"event": event, "job_id": job.job_id, "job": job_json(job)})
}

/// A `WatchExportJob` event as one JSON line.
pub fn job_event_json(event: &ExportJobEvent) -> Value {
    json!({
        "event": "job_event",
        "sequence": event.sequence,
        "type": event_type_name(event.r#type()),
        "job": event.job.as_ref().map_or(Value::Null, job_json),
    })
}

/// One shard of a job as JSON (`"event": "job_task"`).
pub fn job_task_json(task: &ExportJobTask) -> Value {
    json!({
        "event": "job_task",
        "shard": task.shard,
        "state": state_name(task.state()),
        "attempts": task.attempts,
        "task_id": task.task_id,
        "earlier_task_ids": task.earlier_task_ids,
        "channels": task.channels.iter().map(|c| format!("{}:{}", c.r#type, c.id)).collect::<Vec<_>>(),
        "user_ids": task.user_ids,
        "archive": task.archive.as_ref().map_or(Value::Null, |archive| json!({
            "key": archive.key,
            "bytes": archive.bytes,
            "sha256": archive.sha256,
        })),
    })
}

/// A mismatch's problem without its `PROBLEM_` prefix: `MISSING`, `SIZE`, `SHA256`.
fn problem_name(problem: Problem) -> &'static str {
    let name = problem.as_str_name();
    name.strip_prefix("PROBLEM_").unwrap_or(name)
}

/// An archived object that does not match the manifest, in one line: `KEY: missing`,
/// `KEY: size 120, manifest says 128` (bytes), `KEY: sha256 differs`.
pub fn mismatch_text(mismatch: &ArchiveMismatch) -> String {
    let key = &mismatch.key;
    match mismatch.problem() {
        Problem::Missing => format!("{key}: missing"),
        Problem::Size => format!("{key}: size {}, manifest says {}", mismatch.actual_bytes, mismatch.expected_bytes),
        Problem::Sha256 => format!("{key}: sha256 differs"),
        Problem::Unspecified => format!("{key}: differs from the manifest"),
    }
}

/// A `VerifyExportJob` answer as JSON: the manifest, what was checked, and each mismatch.
pub fn verification_json(verified: &VerifyExportJobResponse) -> Value {
    let mismatches: Vec<Value> = verified
        .mismatches
        .iter()
        .map(|mismatch| {
            json!({
                "key": mismatch.key,
                "problem": problem_name(mismatch.problem()),
                "expected_bytes": mismatch.expected_bytes,
                "actual_bytes": mismatch.actual_bytes,
                "expected_sha256": mismatch.expected_sha256,
                "actual_sha256": mismatch.actual_sha256,
            })
        })
        .collect();
    json!({
        "manifest_uri": verified.manifest_uri,
        "objects_checked": verified.objects_checked,
        "bytes_checked": verified.bytes_checked,
        "mismatches": mismatches,
    })
}

/// A protobuf duration in seconds, whole when it is (`86400`), with its fraction otherwise; null
/// when unset.
pub fn seconds_json(duration: Option<&prost_types::Duration>) -> Value {
    match duration {
        None => Value::Null,
        Some(duration) if duration.nanos == 0 => json!(duration.seconds),
        Some(duration) => json!(duration.seconds as f64 + f64::from(duration.nanos) / 1e9),
    }
}

/// A schedule as JSON: id, owner, interval and lag (in seconds), its cursor, its jobs, what each
/// window exports (the template, as a job's `request`), and its times.
pub fn schedule_json(schedule: &ExportSchedule) -> Value {
    let job_id = |id: &str| if id.is_empty() { Value::Null } else { json!(id) };
    json!({
        "schedule_id": schedule.schedule_id,
        "owner": schedule.owner,
        "paused": schedule.paused,
        "interval_seconds": seconds_json(schedule.interval.as_ref()),
        "lag_seconds": seconds_json(schedule.lag.as_ref()),
        "full_every": schedule.full_every,
        "start_time": time_json(schedule.start_time.as_ref()),
        "next_window_start": time_json(schedule.next_window_start.as_ref()),
        "windows_started": schedule.windows_started,
        "running_job_ids": schedule.running_job_ids,
        "last_job_id": job_id(&schedule.last_job_id),
        "last_succeeded_job_id": job_id(&schedule.last_succeeded_job_id),
        "last_failed_job_id": job_id(&schedule.last_failed_job_id),
        "last_cancelled_job_id": job_id(&schedule.last_cancelled_job_id),
        "template": schedule.template.as_ref().map_or(Value::Null, request_json),
        "create_time": time_json(schedule.create_time.as_ref()),
        "update_time": time_json(schedule.update_time.as_ref()),
    })
}

/// A schedule as one JSON line of its own: `{"event": event, "schedule_id": …, "schedule": {…}}`.
pub fn schedule_line(event: &str, schedule: &ExportSchedule) -> Value {
    json!({"event": event, "schedule_id": schedule.schedule_id, "schedule": schedule_json(schedule)})
}
