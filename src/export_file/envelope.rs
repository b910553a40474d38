//! A JSON-lines record's `{"type": ..., "item": {...}}`, read the way each encoding needs it:
//! checked only ([`EnvelopeShape`], for JSON records passed on as they are), or with the item
//! transcoded into `Struct` wire bytes ([`EnvelopeSeed`]).

use std::fmt;

use bytes::BytesMut;
use serde::{
    Deserialize,
    de::{DeserializeSeed, Error, IgnoredAny, MapAccess, Visitor},
};

use crate::contract::wire_struct::StructSeed;

/// A JSON-lines record, checked the way [`Encoding::Json`](super::Encoding::Json) checks it:
/// `type` a string, `item` an object; nothing is built or copied.
#[derive(Deserialize)]
pub(super) struct EnvelopeShape<'a> {
    #[serde(rename = "type", borrow)]
    _kind: std::borrow::Cow<'a, str>,
    #[serde(rename = "item")]
    _item: AnObject,
}

/// Any JSON object, checked and thrown away (what `serde::de::IgnoredAny` is for any value).
pub(super) struct AnObject;

impl<'de> Deserialize<'de> for AnObject {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = AnObject;

            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnObject, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnObject)
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

/// A JSON-lines record read for [`Encoding::Struct`](super::Encoding::Struct): gives its `type`
/// and appends its `item` to the buffer as `Struct` wire bytes. Other members are ignored;
/// a missing or repeated `type` or `item` is an error.
pub(super) struct EnvelopeSeed<'o>(pub &'o mut BytesMut);

/// The members of a record.
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum Member {
    Type,
    Item,
    #[serde(other)]
    Other,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed<'_> {
    type Value = String;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<String, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for EnvelopeSeed<'_> {
    type Value = String;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a {type, item} object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<String, A::Error> {
        let (mut kind, mut item) = (None, false);
        while let Some(member) = map.next_key()? {
            match member {
                Member::Type if kind.is_some() => return Err(A::Error::duplicate_field("type")),
                Member::Type => kind = Some(map.next_value::<String>()?),
                Member::Item if item => return Err(A::Error::duplicate_field("item")),
                Member::Item => {
                    map.next_value_seed(StructSeed(&mut *self.0))?;
                    item = true;
                }
                Member::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if !item {
            return Err(A::Error::missing_field("item"));
        }
        kind.ok_or_else(|| A::Error::missing_field("type"))
    }
}
