//! V1 exports: one JSON document
//! `{"channels": [{"channel": {...}, "members": [...], "messages": [...]}], "users": [...]}`,
//! parsed incrementally with serde seeds: each entity is handed on as soon as it is parsed,
//! so memory holds one entity at a time whatever the document's size.
//!
//! Records, in document order: a `channel`, each `member`, each `message` followed by a
//! `reaction` per entry of its `latest_reactions` (the message keeps them too), and each
//! `user`. Keys other than these are skipped.

use std::{fmt, io::Read};

use serde::{
    Deserialize,
    de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor},
};
use serde_json::{Map, Value};

use super::{ReadError, Record, Sink};

/// Parses the document in `reader` into `sink` (on the caller's thread: it blocks).
pub fn read(reader: impl Read, sink: &mut Sink) -> Result<(), ReadError> {
    let mut emitter = Emitter { sink, stopped: None };
    let mut deserializer = serde_json::Deserializer::from_reader(reader);
    let parsed = DocumentVisitor(&mut emitter).deserialize(&mut deserializer).and_then(|()| deserializer.end());
    match (parsed, emitter.stopped) {
        (_, Some(stopped)) => Err(stopped),
        (Err(error), None) if error.is_io() => Err(ReadError::Download(error.to_string())),
        (Err(error), None) => Err(ReadError::Parse(error.to_string())),
        (Ok(()), None) => Ok(()),
    }
}

/// Hands records to the sink; remembers why it stopped, since serde errors carry only text.
struct Emitter<'a> {
    sink: &'a mut Sink,
    stopped: Option<ReadError>,
}

impl Emitter<'_> {
    fn emit<E: de::Error>(&mut self, kind: &str, item: Map<String, Value>) -> Result<(), E> {
        self.sink.blocking_send(Record { kind: kind.to_owned(), item }).map_err(|error| {
            self.stopped = Some(error);
            E::custom("reading stopped")
        })
    }
}

/// The top-level object.
struct DocumentVisitor<'a, 'b>(&'a mut Emitter<'b>);

impl<'de> DeserializeSeed<'de> for DocumentVisitor<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for DocumentVisitor<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an export document (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let emitter = self.0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "channels" => map.next_value_seed(List { emitter: &mut *emitter, element: Element::ChannelBlock })?,
                "users" => map.next_value_seed(List { emitter: &mut *emitter, element: Element::Plain("user") })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// What the elements of a list are.
#[derive(Clone, Copy)]
enum Element {
    /// Entities handed on as they are, under this kind.
    Plain(&'static str),
    /// Messages: each handed on, then its reactions.
    Message,
    /// `{"channel", "members", "messages"}` blocks.
    ChannelBlock,
}

/// A JSON array (or `null`) of elements.
struct List<'a, 'b> {
    emitter: &'a mut Emitter<'b>,
    element: Element,
}

impl<'de> DeserializeSeed<'de> for List<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for List<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (emitter, element) = (self.emitter, self.element);
        while seq.next_element_seed(One { emitter: &mut *emitter, element })?.is_some() {}
        Ok(())
    }
}

/// One element of a list.
struct One<'a, 'b> {
    emitter: &'a mut Emitter<'b>,
    element: Element,
}

impl<'de> DeserializeSeed<'de> for One<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        match self.element {
            Element::Plain(kind) => {
                let item = Map::deserialize(deserializer)?;
                self.emitter.emit(kind, item)
            }
            Element::Message => {
                let message = Map::deserialize(deserializer)?;
                let reactions: Vec<Map<String, Value>> = match message.get("latest_reactions") {
                    Some(Value::Array(reactions)) => reactions.iter().filter_map(|r| r.as_object().cloned()).collect(),
                    _ => Vec::new(),
                };
                self.emitter.emit("message", message)?;
                reactions.into_iter().try_for_each(|reaction| self.emitter.emit("reaction", reaction))
            }
            Element::ChannelBlock => deserializer.deserialize_map(ChannelBlock(self.emitter)),
        }
    }
}

/// One `{"channel", "members", "messages"}` block.
struct ChannelBlock<'a, 'b>(&'a mut Emitter<'b>);

impl<'de> Visitor<'de> for ChannelBlock<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a channel block (a JSON object)")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let emitter = self.0;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "channel" => {
                    let channel = map.next_value::<Map<String, Value>>()?;
                    emitter.emit("channel", channel)?;
                }
                "members" => map.next_value_seed(List { emitter: &mut *emitter, element: Element::Plain("member") })?,
                "messages" => map.next_value_seed(List { emitter: &mut *emitter, element: Element::Message })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    fn parse(document: &str, start: u64) -> (Result<(), ReadError>, Vec<(u64, String)>) {
        let (sender, mut receiver) = mpsc::channel(1024);
        let mut sink = Sink::new(start, sender);
        let outcome = read(document.as_bytes(), &mut sink);
        drop(sink);
        let mut records = Vec::new();
        while let Ok(Ok(record)) = receiver.try_recv() {
            records.push((record.index, record.kind));
        }
        (outcome, records)
    }

    const DOCUMENT: &str = r#"{"channels": [
        {"channel": {"cid": "messaging:a"}, "members": [{"user_id": "u1"}, {"user_id": "u2"}],
         "messages": [{"id": "m1", "latest_reactions": [{"type": "like"}, {"type": "wow"}]}, {"id": "m2", "latest_reactions": null}],
         "extra": {"ignored": [1, 2]}},
        {"members": null, "channel": {"cid": "messaging:b"}, "messages": []}
    ], "version": "v1", "users": [{"id": "u1"}]}"#;

    #[test]
    fn entities_come_out_in_document_order() {
        let (outcome, records) = parse(DOCUMENT, 0);
        outcome.unwrap();
        let kinds: Vec<&str> = records.iter().map(|(_, kind)| kind.as_str()).collect();
        assert_eq!(
            kinds,
            ["channel", "member", "member", "message", "reaction", "reaction", "message", "channel", "user"]
        );
        assert!(records.iter().enumerate().all(|(i, (index, _))| *index == i as u64));
    }

    #[test]
    fn a_start_index_skips_earlier_records() {
        let (_, records) = parse(DOCUMENT, 6);
        assert_eq!(records, [(6, "message".into()), (7, "channel".into()), (8, "user".into())]);
    }

    #[test]
    fn a_broken_document_is_a_parse_error_after_what_was_read() {
        let (outcome, records) = parse(r#"{"channels": [{"channel": {"cid": "a"}, "members": [{"user_id": "#, 0);
        assert!(matches!(outcome, Err(ReadError::Parse(_))), "{outcome:?}");
        assert_eq!(records, [(0, "channel".into())]);
    }
}
