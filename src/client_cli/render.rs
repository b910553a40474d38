//! JSON renderings of tasks, events and records for the client's output.

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;
use serde_json::{Value, json};

use crate::proto::{Task, TaskEvent, TaskState, task_event::EventType};

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

/// A protobuf timestamp as a UTC instant.
pub fn instant(timestamp: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).unwrap_or(0))
}

/// A protobuf timestamp in RFC 3339, or null.
fn time_json(timestamp: Option<&Timestamp>) -> Value {
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
