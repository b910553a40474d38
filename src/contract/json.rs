//! JSON and `google.protobuf.Struct`, both ways: the one conversion the service (upstream
//! records into messages), the CLI (messages back into JSON) and the tests share.

use std::{collections::BTreeMap, fmt};

use prost_types::{ListValue, Struct, Value, value::Kind};
use serde::{
    Deserialize, Deserializer,
    de::{MapAccess, SeqAccess, Visitor},
};
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

/// Parses a JSON object straight into a `Struct`, with no `serde_json::Value` in between (half
/// the allocations of parsing then converting; the ReadExport hot path).
pub fn struct_from_slice(json: &[u8]) -> serde_json::Result<Struct> {
    serde_json::from_slice::<JsonStruct>(json).map(|parsed| parsed.0)
}

/// A `Struct` as a serde target: deserializes from a JSON object only.
struct JsonStruct(Struct);

impl<'de> Deserialize<'de> for JsonStruct {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(StructVisitor).map(JsonStruct)
    }
}

/// Any JSON value as a `google.protobuf.Value`.
struct JsonValue(Value);

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor).map(|kind| JsonValue(Value { kind: Some(kind) }))
    }
}

struct StructVisitor;

impl<'de> Visitor<'de> for StructVisitor {
    type Value = Struct;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Struct, A::Error> {
        let mut fields = BTreeMap::new();
        while let Some((key, JsonValue(value))) = map.next_entry::<String, JsonValue>()? {
            fields.insert(key, value);
        }
        Ok(Struct { fields })
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Kind;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Kind, E> {
        Ok(Kind::NullValue(0))
    }

    fn visit_bool<E>(self, value: bool) -> Result<Kind, E> {
        Ok(Kind::BoolValue(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Kind, E> {
        Ok(Kind::NumberValue(value as f64))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Kind, E> {
        Ok(Kind::NumberValue(value as f64))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Kind, E> {
        Ok(Kind::NumberValue(value))
    }

    fn visit_str<E>(self, value: &str) -> Result<Kind, E> {
        Ok(Kind::StringValue(value.to_owned()))
    }

    fn visit_string<E>(self, value: String) -> Result<Kind, E> {
        Ok(Kind::StringValue(value))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Kind, A::Error> {
        let mut values = Vec::with_capacity(items.size_hint().unwrap_or(0));
        while let Some(JsonValue(value)) = items.next_element()? {
            values.push(value);
        }
        Ok(Kind::ListValue(ListValue { values }))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Kind, A::Error> {
        StructVisitor.visit_map(map).map(Kind::StructValue)
    }
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
    fn parsing_straight_into_a_struct_equals_parsing_then_converting() {
        let text = r#"{"id": "u", "n": 3, "big": 18446744073709551615, "neg": -7, "x": 1.5,
            "tags": ["a", null, false, [], {}], "meta": {"deep": {"er": "\u00e9"}}, "id": "last"}"#;
        let via_value: serde_json::Value = serde_json::from_str(text).unwrap();
        let expected = to_struct(via_value.as_object().cloned().unwrap());
        assert_eq!(struct_from_slice(text.as_bytes()).unwrap(), expected);
        for not_an_object in ["[1]", "\"s\"", "3", "null", "{\"a\": }"] {
            assert!(struct_from_slice(not_an_object.as_bytes()).is_err(), "{not_an_object}");
        }
    }

    #[test]
    fn whole_numbers_stay_integers_on_the_way_back() {
        let original = json!({"n": 3, "x": 1.5, "s": "a", "l": [1, null, true], "o": {"k": -2}});
        let item = to_struct(original.as_object().cloned().unwrap_or_default());
        assert_eq!(from_struct(&item), original);
    }
}
