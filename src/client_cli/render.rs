//! JSON renderings of tasks, events and records for the client's output.

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::{Struct, Timestamp, value::Kind};
use serde_json::{Map, Value, json};

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

/// A `Struct` as JSON. Whole numbers within ±2^53 are written as integers, as the export files
/// have them (a `Struct` carries every number as a double).
pub fn struct_json(value: &Struct) -> Value {
    Value::Object(value.fields.iter().map(|(k, v)| (k.clone(), value_json(v))).collect::<Map<_, _>>())
}

fn value_json(value: &prost_types::Value) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => json!(b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < EXACT => json!(*n as i64),
        Some(Kind::NumberValue(n)) => json!(n),
        Some(Kind::StringValue(s)) => json!(s),
        Some(Kind::ListValue(list)) => Value::Array(list.values.iter().map(value_json).collect()),
        Some(Kind::StructValue(s)) => struct_json(s),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_numbers_stay_integers() {
        let item = crate::service::convert::to_struct(
            json!({"n": 3, "x": 1.5, "s": "a", "l": [1, null, true], "o": {"k": -2}}).as_object().cloned().unwrap(),
        );
        assert_eq!(struct_json(&item), json!({"n": 3, "x": 1.5, "s": "a", "l": [1, null, true], "o": {"k": -2}}));
    }
}
