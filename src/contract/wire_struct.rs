//! `google.protobuf.Struct` as the generated messages hold it: parsed, or already in protobuf
//! wire form.
//!
//! A record read from an export file is transcoded from its JSON text straight into the bytes of
//! a `Struct` ([`transcode`], [`StructSeed`]): no tree of maps, strings and values is built,
//! encoded and dropped for every record (the `Struct` encoding of ReadExport spent about half
//! its time on that). Every other `Struct`, and every one a client decodes, is a parsed
//! [`prost_types::Struct`]. On the wire the two are the same message; `build.rs` maps
//! `google.protobuf.Struct` to [`WireStruct`].

use std::{borrow::Cow, fmt};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::{
    DecodeError, Message,
    encoding::{DecodeContext, WireType, encode_varint, encoded_len_varint},
};
use prost_types::Struct;
use serde::{
    Deserialize, Deserializer,
    de::{DeserializeSeed, MapAccess, SeqAccess, Visitor},
};

/// A `google.protobuf.Struct` field of a generated message.
#[derive(Clone)]
pub struct WireStruct(Repr);

#[derive(Clone)]
enum Repr {
    Parsed(Struct),
    /// The message's encoded fields (what `Struct::encode_raw` writes, map entries in the JSON's
    /// order rather than sorted: protobuf leaves map order to the encoder).
    Encoded(Bytes),
}

impl WireStruct {
    /// A struct already encoded: `fields` is the body of a `Struct` message, as [`transcode`]
    /// writes it.
    pub fn encoded(fields: Bytes) -> Self {
        Self(Repr::Encoded(fields))
    }

    /// The struct, decoded if it is held encoded (a received message's is always parsed).
    pub fn to_struct(&self) -> Result<Cow<'_, Struct>, DecodeError> {
        match &self.0 {
            Repr::Parsed(parsed) => Ok(Cow::Borrowed(parsed)),
            Repr::Encoded(fields) => Struct::decode(fields.clone()).map(Cow::Owned),
        }
    }
}

impl From<Struct> for WireStruct {
    fn from(parsed: Struct) -> Self {
        Self(Repr::Parsed(parsed))
    }
}

impl Default for WireStruct {
    fn default() -> Self {
        Self(Repr::Parsed(Struct::default()))
    }
}

/// Equal when they decode to the same struct (map order aside).
impl PartialEq for WireStruct {
    fn eq(&self, other: &Self) -> bool {
        match (self.to_struct(), other.to_struct()) {
            (Ok(one), Ok(other)) => one == other,
            _ => false,
        }
    }
}

impl fmt::Debug for WireStruct {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Parsed(parsed) => parsed.fmt(formatter),
            Repr::Encoded(fields) => write!(formatter, "Struct({} encoded bytes)", fields.len()),
        }
    }
}

impl Message for WireStruct {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match &self.0 {
            Repr::Parsed(parsed) => parsed.encode_raw(buf),
            Repr::Encoded(fields) => buf.put_slice(fields),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if let Repr::Parsed(parsed) = &mut self.0 {
            return parsed.merge_field(tag, wire_type, buf, ctx);
        }
        let mut parsed = self.to_struct()?.into_owned();
        let merged = parsed.merge_field(tag, wire_type, buf, ctx);
        self.0 = Repr::Parsed(parsed);
        merged
    }

    fn encoded_len(&self) -> usize {
        match &self.0 {
            Repr::Parsed(parsed) => parsed.encoded_len(),
            Repr::Encoded(fields) => fields.len(),
        }
    }

    fn clear(&mut self) {
        self.0 = Repr::Parsed(Struct::default());
    }
}

/// Parses the JSON object `json` and appends it to `out` as the body of a `Struct` message:
/// what [`super::json::struct_from_slice`] then encoding would give (numbers as doubles, the
/// last of repeated keys wins), in one pass and without allocating.
pub fn transcode(json: &[u8], out: &mut BytesMut) -> serde_json::Result<()> {
    let start = out.len();
    let parsed = deserialize_whole(json, StructSeed(&mut *out));
    if parsed.is_err() {
        out.truncate(start);
    }
    parsed
}

/// Deserializes `json` with `seed`, which must take all of it (trailing characters other than
/// whitespace are an error, as `serde_json::from_slice` has it for a plain `Deserialize`).
pub fn deserialize_whole<'de, S: DeserializeSeed<'de>>(json: &'de [u8], seed: S) -> serde_json::Result<S::Value> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Deserializes a JSON object into `Struct` wire bytes appended to the buffer (nothing appended
/// if it fails); for a `Struct` inside a larger document, such as a JSON-lines record's `item`.
pub struct StructSeed<'o>(pub &'o mut BytesMut);

impl<'de> DeserializeSeed<'de> for StructSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let start = self.0.len();
        let written = deserializer.deserialize_map(FieldsVisitor(&mut *self.0));
        if written.is_err() {
            self.0.truncate(start);
        }
        written
    }
}

/// Field numbers and wire types of `Struct`, its map entries, `Value` and `ListValue`, as the
/// one-byte keys that precede each field.
mod key {
    const fn key(field: u8, wire_type: u8) -> u8 {
        (field << 3) | wire_type
    }
    const VARINT: u8 = 0;
    const FIXED64: u8 = 1;
    const LENGTH_DELIMITED: u8 = 2;

    /// `Struct.fields` (one map entry) and `ListValue.values` (one value).
    pub const ENTRY_OR_ELEMENT: u8 = key(1, LENGTH_DELIMITED);
    /// A map entry's key and value.
    pub const ENTRY_KEY: u8 = key(1, LENGTH_DELIMITED);
    pub const ENTRY_VALUE: u8 = key(2, LENGTH_DELIMITED);
    /// `Value.kind`.
    pub const NULL: u8 = key(1, VARINT);
    pub const NUMBER: u8 = key(2, FIXED64);
    pub const STRING: u8 = key(3, LENGTH_DELIMITED);
    pub const BOOL: u8 = key(4, VARINT);
    pub const STRUCT: u8 = key(5, LENGTH_DELIMITED);
    pub const LIST: u8 = key(6, LENGTH_DELIMITED);
}

/// Writes a JSON object's members as `Struct.fields` map entries.
struct FieldsVisitor<'o>(&'o mut BytesMut);

impl<'de> Visitor<'de> for FieldsVisitor<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(MemberName(name)) = map.next_key()? {
            map.next_value_seed(ValueSeed { out: &mut *self.0, slot: Slot::Entry(name) })?;
        }
        Ok(())
    }
}

/// An object member's name, borrowed from the input unless it had escapes.
struct MemberName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for MemberName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = MemberName<'de>;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, name: &'de str) -> Result<MemberName<'de>, E> {
                Ok(MemberName(Cow::Borrowed(name)))
            }

            fn visit_str<E>(self, name: &str) -> Result<MemberName<'de>, E> {
                Ok(MemberName(Cow::Owned(name.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// Where a value goes: a map entry under its member name, or an element of a list.
enum Slot<'de> {
    Entry(Cow<'de, str>),
    Element,
}

/// A JSON value other than an object or array, as the body of a `Value`.
enum Scalar<'a> {
    Null,
    Bool(bool),
    Number(f64),
    String(&'a str),
}

impl Scalar<'_> {
    fn encoded_len(&self) -> usize {
        match self {
            Scalar::Null | Scalar::Bool(_) => 2,
            Scalar::Number(_) => 9,
            Scalar::String(text) => delimited_len(text.len()),
        }
    }

    fn encode(&self, out: &mut BytesMut) {
        match self {
            Scalar::Null => out.put_slice(&[key::NULL, 0]),
            Scalar::Bool(value) => out.put_slice(&[key::BOOL, u8::from(*value)]),
            Scalar::Number(value) => {
                out.put_u8(key::NUMBER);
                out.put_f64_le(*value);
            }
            Scalar::String(text) => put_delimited(out, key::STRING, text.as_bytes()),
        }
    }
}

/// The length of a length-delimited field with a one-byte key and `len` bytes of contents.
fn delimited_len(len: usize) -> usize {
    1 + encoded_len_varint(len as u64) + len
}

fn put_delimited(out: &mut BytesMut, key: u8, contents: &[u8]) {
    out.put_u8(key);
    encode_varint(contents.len() as u64, out);
    out.put_slice(contents);
}

/// Writes a length-delimited field whose contents `write` produces, their length unknown until
/// written: the length goes in front of them once known (only objects and arrays get here).
fn nested<E>(out: &mut BytesMut, key: u8, write: impl FnOnce(&mut BytesMut) -> Result<(), E>) -> Result<(), E> {
    out.put_u8(key);
    let start = out.len();
    write(out)?;
    let len = out.len() - start;
    let prefix = encoded_len_varint(len as u64);
    out.put_bytes(0, prefix);
    out.copy_within(start..start + len, start + prefix);
    encode_varint(len as u64, &mut &mut out[start..start + prefix]);
    Ok(())
}

impl Slot<'_> {
    /// Writes a scalar value in this slot: every length is known up front.
    fn put_scalar(&self, out: &mut BytesMut, scalar: Scalar) {
        let value_len = scalar.encoded_len();
        match self {
            Slot::Entry(name) => {
                out.put_u8(key::ENTRY_OR_ELEMENT);
                encode_varint((delimited_len(name.len()) + delimited_len(value_len)) as u64, out);
                put_delimited(out, key::ENTRY_KEY, name.as_bytes());
                out.put_u8(key::ENTRY_VALUE);
            }
            Slot::Element => out.put_u8(key::ENTRY_OR_ELEMENT),
        }
        encode_varint(value_len as u64, out);
        scalar.encode(out);
    }

    /// Writes a `Value` holding a struct or list (`kind`) whose contents `write` produces.
    fn put_nested<E>(
        &self,
        out: &mut BytesMut,
        kind: u8,
        write: impl FnOnce(&mut BytesMut) -> Result<(), E>,
    ) -> Result<(), E> {
        match self {
            Slot::Entry(name) => nested(out, key::ENTRY_OR_ELEMENT, |out| {
                put_delimited(out, key::ENTRY_KEY, name.as_bytes());
                nested(out, key::ENTRY_VALUE, |out| nested(out, kind, write))
            }),
            Slot::Element => nested(out, key::ENTRY_OR_ELEMENT, |out| nested(out, kind, write)),
        }
    }
}

/// Writes any JSON value into its slot.
struct ValueSeed<'o, 'de> {
    out: &'o mut BytesMut,
    slot: Slot<'de>,
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_, 'de> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.slot.put_scalar(self.out, Scalar::Null);
        Ok(())
    }

    fn visit_bool<E>(self, value: bool) -> Result<(), E> {
        self.slot.put_scalar(self.out, Scalar::Bool(value));
        Ok(())
    }

    fn visit_i64<E>(self, value: i64) -> Result<(), E> {
        self.slot.put_scalar(self.out, Scalar::Number(value as f64));
        Ok(())
    }

    fn visit_u64<E>(self, value: u64) -> Result<(), E> {
        self.slot.put_scalar(self.out, Scalar::Number(value as f64));
        Ok(())
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        self.slot.put_scalar(self.out, Scalar::Number(value));
        Ok(())
    }

    fn visit_str<E>(self, value: &str) -> Result<(), E> {
        self.slot.put_scalar(self.out, Scalar::String(value));
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<(), A::Error> {
        self.slot.put_nested(self.out, key::LIST, |out| {
            while items.next_element_seed(ValueSeed { out: &mut *out, slot: Slot::Element })?.is_some() {}
            Ok(())
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        self.slot.put_nested(self.out, key::STRUCT, |out| FieldsVisitor(out).visit_map(map))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::contract::json::struct_from_slice;

    fn transcoded(json: &str) -> serde_json::Result<Struct> {
        let mut out = BytesMut::from(&b"kept"[..]);
        transcode(json.as_bytes(), &mut out)?;
        assert_eq!(&out[..4], b"kept", "appends to what the buffer holds");
        Ok(Struct::decode(&out[4..]).expect("transcoded bytes decode as a Struct"))
    }

    #[test]
    fn transcoding_equals_parsing_then_encoding() {
        let text = r#"{"id": "u", "n": 3, "big": 18446744073709551615, "neg": -7, "x": 1.5, "e": "",
            "": 0, "tags": ["a", null, false, true, [], {}, [[1]], {"k": [2]}], "esc": "\"\u00e9\n",
            "meta": {"deep": {"er": "\u00e9", "es\"caped": 1}}, "id": "last", "long": "LONG"}"#
            .replace("LONG", &"x".repeat(300));
        let expected = struct_from_slice(text.as_bytes()).expect("valid JSON");
        assert_eq!(transcoded(&text).expect("valid JSON"), expected);
        assert_eq!(transcoded("{}").expect("an empty object"), Struct::default());
    }

    #[test]
    fn transcoding_rejects_what_parsing_rejects_and_appends_nothing() {
        for bad in ["[1]", "\"s\"", "3", "null", "{\"a\": }", "{\"a\": [1, {\"b\": tru}]}", "{} x", "{\"a\":\"\\q\"}"] {
            let mut out = BytesMut::from(&b"kept"[..]);
            assert!(transcode(bad.as_bytes(), &mut out).is_err(), "{bad}");
            assert!(struct_from_slice(bad.as_bytes()).is_err(), "{bad}");
            assert_eq!(&out[..], b"kept", "{bad}: nothing appended");
        }
        assert!(transcode(b"{\"a\": \"\xff\"}", &mut BytesMut::new()).is_err(), "not UTF-8");
    }

    #[test]
    fn an_encoded_struct_goes_on_the_wire_as_the_parsed_one_would() {
        let json = json!({"text": "hi", "n": [1, 2.5, {"d": null}]});
        let mut out = BytesMut::new();
        transcode(json.to_string().as_bytes(), &mut out).expect("valid JSON");
        let encoded = WireStruct::encoded(out.freeze());
        let parsed = WireStruct::from(struct_from_slice(json.to_string().as_bytes()).expect("valid JSON"));
        assert_eq!(encoded, parsed);
        assert_eq!(encoded.encoded_len(), encoded.encode_to_vec().len());
        let decoded = WireStruct::decode(encoded.encode_to_vec().as_slice()).expect("decodes");
        assert_eq!(decoded.to_struct().expect("parsed").as_ref(), parsed.to_struct().expect("parsed").as_ref());
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_filter("finite", |x| x.is_finite()).prop_map(serde_json::Value::from),
            ".{0,200}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::from),
                prop::collection::btree_map(".{0,8}", inner, 0..8)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_object_transcodes_as_it_parses(
            fields in prop::collection::btree_map(".{0,8}", json_value(), 0..8)
        ) {
            let text = serde_json::Value::Object(fields.into_iter().collect()).to_string();
            prop_assert_eq!(transcoded(&text).expect("valid JSON"), struct_from_slice(text.as_bytes()).expect("valid JSON"));
        }
    }
}
