//! What an export file holds, and protobuf `Struct`s back to JSON, for comparing records.

use serde_json::{Value, json};
use stream_export::contract::wire_struct::WireStruct;

/// The records a file should give, computed from the whole file (fine for test sizes).
pub fn expected_records(body: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let trimmed = body.trim_start();
    let first: Result<Value, _> = serde_json::Deserializer::from_str(trimmed).into_iter::<Value>().next().unwrap();
    if first.as_ref().is_ok_and(|v| v.get("type").is_some() && v.get("item").is_some()) {
        for line in body.lines().filter(|l| !l.trim().is_empty()) {
            let value: Value = serde_json::from_str(line).unwrap();
            out.push((value["type"].as_str().unwrap().to_owned(), value["item"].clone()));
        }
        return out;
    }
    let document: Value = serde_json::from_str(body).unwrap();
    for block in document["channels"].as_array().unwrap() {
        out.push(("channel".into(), block["channel"].clone()));
        for member in block["members"].as_array().into_iter().flatten() {
            out.push(("member".into(), member.clone()));
        }
        for message in block["messages"].as_array().into_iter().flatten() {
            out.push(("message".into(), message.clone()));
            for reaction in message["latest_reactions"].as_array().into_iter().flatten() {
                out.push(("reaction".into(), reaction.clone()));
            }
        }
    }
    for user in document["users"].as_array().into_iter().flatten() {
        out.push(("user".into(), user.clone()));
    }
    out
}

/// A `Struct` back to JSON (the crate's one conversion), numbers as doubles so that it
/// compares with [`normalised`] JSON.
pub fn json_of(value: &WireStruct) -> Value {
    normalised(&stream_export::contract::json::from_struct(&value.to_struct().expect("a received Struct")))
}

/// Numbers as doubles, as they are after a trip through `Struct`.
pub fn normalised(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(items) => Value::Array(items.iter().map(normalised).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), normalised(v))).collect()),
        other => other.clone(),
    }
}
