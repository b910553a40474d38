//! JSON and `google.protobuf.Struct`, both ways: the one conversion the service (upstream
//! records into messages), the CLI (messages back into JSON) and the tests share.

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde_json::Map;

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

/// A `Struct` as JSON. Whole numbers within ±2^53 are written as integers, as the export files
/// have them (a `Struct` carries every number as a double).
pub fn from_struct(value: &Struct) -> serde_json::Value {
    serde_json::Value::Object(value.fields.iter().map(|(k, v)| (k.clone(), from_value(v))).collect::<Map<_, _>>())
}

fn from_value(value: &Value) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) if n.fract() == 0.0 && n.abs() < EXACT => serde_json::json!(*n as i64),
        Some(Kind::NumberValue(n)) => serde_json::json!(n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(list)) => serde_json::Value::Array(list.values.iter().map(from_value).collect()),
        Some(Kind::StructValue(s)) => from_struct(s),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nested_json_survives_the_struct_conversion() {
        let json = json!({"id": "u", "n": 3, "tags": ["a", null], "meta": {"deep": true}});
        let serde_json::Value::Object(object) = json else { unreachable!() };
        let converted = to_struct(object);
        let Some(Kind::StructValue(meta)) = &converted.fields["meta"].kind else { panic!("meta is not a struct") };
        assert_eq!(meta.fields["deep"].kind, Some(Kind::BoolValue(true)));
        assert_eq!(converted.fields["n"].kind, Some(Kind::NumberValue(3.0)));
    }

    #[test]
    fn whole_numbers_stay_integers_on_the_way_back() {
        let original = json!({"n": 3, "x": 1.5, "s": "a", "l": [1, null, true], "o": {"k": -2}});
        let item = to_struct(original.as_object().cloned().unwrap_or_default());
        assert_eq!(from_struct(&item), original);
    }
}
