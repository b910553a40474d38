//! V1 exports: one JSON document. Stream documents V1 only as "the same format as the regular
//! APIs", so every shape seen is accepted:
//! `{"channels": [{"channel": {...}, "members": [...], "messages": [...]}], "users": [...]}`,
//! a top-level array of channel blocks, and a single channel block alone.
//!
//! The document is read with the [`Scanner`] on the async task: each entity's bytes are found,
//! parsed with serde_json and handed on before the next is read, so memory holds one entity
//! (at most the entity cap) whatever the document's size, and a paused client parks no thread.
//!
//! Records, in document order: a `channel`, each `member`, each `message` followed by a
//! `reaction` per entry of its `latest_reactions` (the message keeps them too), and each
//! `user`. Keys other than these are skipped.

use prost_types::value::Kind;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Encoding, ReadError, Sink, not_an_object, scan::Scanner};
use crate::contract::json::struct_from_slice;

/// Parses the document in `scanner` into `sink`; `Ok` only once the whole document was read.
pub async fn read(scanner: &mut Scanner, sink: &mut Sink) -> Result<(), ReadError> {
    match scanner.peek().await? {
        Some(b'{') => top_object(scanner, sink).await?,
        Some(b'[') => blocks(scanner, sink).await?,
        Some(byte) => {
            return Err(ReadError::Parse(format!(
                "an export document is a JSON object or array, not one starting with byte 0x{byte:02x}"
            )));
        }
        None => return Err(ReadError::Parse("the file is empty".into())),
    }
    match scanner.peek().await? {
        None => Ok(()),
        Some(_) => Err(ReadError::Parse("data after the end of the document".into())),
    }
}

/// The top-level object: the document, whose channel blocks are under `channels`, or one
/// channel block alone (their keys do not overlap).
async fn top_object(scanner: &mut Scanner, sink: &mut Sink) -> Result<(), ReadError> {
    scanner.expect(b'{').await?;
    if scanner.empty_container(b'}').await? {
        return Ok(());
    }
    loop {
        match scanner.key().await?.as_str() {
            "channels" => blocks(scanner, sink).await?,
            "users" => entities(scanner, sink, Element::Plain("user")).await?,
            key => block_entry(scanner, sink, key).await?,
        }
        if !scanner.next_separator(b'}').await? {
            return Ok(());
        }
    }
}

/// One `{"channel", "members", "messages"}` block.
async fn block(scanner: &mut Scanner, sink: &mut Sink) -> Result<(), ReadError> {
    scanner.expect(b'{').await?;
    if scanner.empty_container(b'}').await? {
        return Ok(());
    }
    loop {
        let key = scanner.key().await?;
        block_entry(scanner, sink, &key).await?;
        if !scanner.next_separator(b'}').await? {
            return Ok(());
        }
    }
}

/// The value of `key` in a channel block; keys other than a block's are skipped.
async fn block_entry(scanner: &mut Scanner, sink: &mut Sink, key: &str) -> Result<(), ReadError> {
    match key {
        "channel" => {
            let channel = scanner.value().await?;
            sink.entity("channel", &channel).await
        }
        "members" => entities(scanner, sink, Element::Plain("member")).await,
        "messages" => entities(scanner, sink, Element::Message).await,
        _ => scanner.skip().await,
    }
}

/// A JSON array (or `null`) of channel blocks.
async fn blocks(scanner: &mut Scanner, sink: &mut Sink) -> Result<(), ReadError> {
    if !array_start(scanner).await? {
        return Ok(());
    }
    loop {
        block(scanner, sink).await?;
        if !scanner.next_separator(b']').await? {
            return Ok(());
        }
    }
}

/// What the elements of a list of entities are.
#[derive(Clone, Copy)]
enum Element {
    /// Entities handed on as they are, under this kind.
    Plain(&'static str),
    /// Messages: each handed on, then its reactions.
    Message,
}

/// A JSON array (or `null`) of entities.
async fn entities(scanner: &mut Scanner, sink: &mut Sink, element: Element) -> Result<(), ReadError> {
    if !array_start(scanner).await? {
        return Ok(());
    }
    loop {
        let item = scanner.value().await?;
        match element {
            Element::Plain(kind) => sink.entity(kind, &item).await?,
            Element::Message => message(&item, sink).await?,
        }
        if !scanner.next_separator(b']').await? {
            return Ok(());
        }
    }
}

/// Consumes `[` (`true`: elements may follow; an empty array is consumed whole and gives
/// `false`) or `null` (`false`).
async fn array_start(scanner: &mut Scanner) -> Result<bool, ReadError> {
    if scanner.peek().await? == Some(b'n') {
        let value = scanner.value().await?;
        return match value.as_slice() {
            b"null" => Ok(false),
            _ => Err(ReadError::Parse("expected an array".into())),
        };
    }
    scanner.expect(b'[').await?;
    Ok(!scanner.empty_container(b']').await?)
}

/// A message, then its `latest_reactions` (each an object; the message keeps them too).
async fn message(json: &[u8], sink: &mut Sink) -> Result<(), ReadError> {
    match sink.encoding() {
        Encoding::Struct => {
            let message = struct_from_slice(json).map_err(|error| not_an_object("message", &error))?;
            let reactions: Vec<_> = match message.fields.get("latest_reactions").and_then(|v| v.kind.as_ref()) {
                Some(Kind::ListValue(list)) => list
                    .values
                    .iter()
                    .filter_map(|reaction| match &reaction.kind {
                        Some(Kind::StructValue(reaction)) => Some(reaction.clone()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            sink.parsed("message", message).await?;
            for reaction in reactions {
                sink.parsed("reaction", reaction).await?;
            }
        }
        Encoding::Json => {
            /// What of a message is read to find its reactions (the rest is checked, not built).
            #[derive(Deserialize)]
            struct MessageShape<'a> {
                #[serde(borrow, default)]
                latest_reactions: Option<Vec<&'a RawValue>>,
            }
            if json.first() != Some(&b'{') {
                return Err(ReadError::Parse("a message is not a JSON object".into()));
            }
            let shape: MessageShape = serde_json::from_slice(json).map_err(|error| not_an_object("message", &error))?;
            sink.checked_entity("message", json).await?;
            for reaction in shape.latest_reactions.unwrap_or_default() {
                if reaction.get().starts_with('{') {
                    sink.checked_entity("reaction", reaction.get().as_bytes()).await?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    /// The records of `document` from `start` as (index, kind), read in both encodings, which
    /// must agree; and how reading ended.
    fn parse(document: impl AsRef<[u8]>, start: u64) -> (Result<(), ReadError>, Vec<(u64, String)>) {
        let document = document.as_ref();
        let (outcome, records) = parse_as(document, start, Encoding::Struct);
        let (json_outcome, json_records) = parse_as(document, start, Encoding::Json);
        assert_eq!(json_records, records, "JSON and Struct give the same records");
        assert_eq!(json_outcome.is_ok(), outcome.is_ok(), "{json_outcome:?} / {outcome:?}");
        (outcome, records)
    }

    fn parse_as(document: &[u8], start: u64, encoding: Encoding) -> (Result<(), ReadError>, Vec<(u64, String)>) {
        // Small chunks, so that values cross chunk boundaries.
        let chunks: Vec<_> = document.chunks(7).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
        let mut scanner = Scanner::new(crate::export_file::boxed(futures::stream::iter(chunks)), 1 << 20);
        let (sender, mut receiver) = mpsc::channel(1024);
        let mut sink = Sink::new(start, encoding, sender, std::time::Duration::from_secs(5));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let outcome = runtime.block_on(read(&mut scanner, &mut sink));
        runtime.block_on(sink.flush()).unwrap();
        drop(sink);
        let mut records = Vec::new();
        while let Ok(record) = receiver.try_recv() {
            if record.json.is_empty() {
                records.push((record.index, record.kind));
            }
            for (offset, line) in record.json.iter().enumerate() {
                assert!(!line.iter().any(|byte| matches!(byte, b'\n' | b'\r')), "a record is one line");
                let line: serde_json::Value = serde_json::from_slice(line).unwrap();
                assert!(line["item"].is_object(), "{line}");
                records.push((record.index + offset as u64, line["type"].as_str().unwrap().to_owned()));
            }
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
    fn an_entity_that_is_not_utf8_ends_the_read_in_both_encodings() {
        for bad in [&b"{\"id\": \"m\xff\"}"[..], b"{\"id\": \"m\", \"latest_reactions\": [{\"t\xe9\": 1}]}"] {
            let mut document = br#"{"channels": [{"channel": {"cid": "messaging:a"}, "messages": ["#.to_vec();
            document.extend_from_slice(bad);
            document.extend_from_slice(br#"]}], "version": "v1"}"#);
            let (outcome, records) = parse(&document, 0);
            let error = outcome.unwrap_err().to_string();
            assert!(error.contains("message") && records.len() == 1, "{error} {records:?}");
        }
    }

    #[test]
    fn a_pretty_printed_document_gives_one_line_per_record() {
        let document: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        let pretty = serde_json::to_string_pretty(&document).unwrap();
        assert!(pretty.contains("{\n"), "entities span several lines");
        let (outcome, records) = parse(&pretty, 0);
        outcome.unwrap();
        assert_eq!(records.len(), parse(DOCUMENT, 0).1.len());
    }

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

    #[test]
    fn a_top_level_array_of_blocks_and_a_block_alone_are_documents_too() {
        let array = r#"[{"channel": {"cid": "a"}, "messages": [{"id": "m"}]}, {"channel": {"cid": "b"}}]"#;
        let (outcome, records) = parse(array, 0);
        outcome.unwrap();
        let kinds: Vec<&str> = records.iter().map(|(_, kind)| kind.as_str()).collect();
        assert_eq!(kinds, ["channel", "message", "channel"]);

        let alone = r#"{"channel": {"cid": "a"}, "members": [{"user_id": "u"}], "messages": []}"#;
        let (outcome, records) = parse(alone, 0);
        outcome.unwrap();
        let kinds: Vec<&str> = records.iter().map(|(_, kind)| kind.as_str()).collect();
        assert_eq!(kinds, ["channel", "member"]);
    }

    #[test]
    fn only_a_complete_document_reads_ok() {
        for cut in [
            r#"{"channels": [{"channel": {"cid": "a"}}]"#,
            r#"[{"channel": {"cid": "a"}}"#,
            r#"{"users": [{"id": "u"}"#,
        ] {
            let (outcome, _) = parse(cut, 0);
            assert!(matches!(outcome, Err(ReadError::Parse(_))), "{cut}: {outcome:?}");
        }
        let (outcome, _) = parse(r#"{"users": []} {"#, 0);
        assert!(matches!(outcome, Err(ReadError::Parse(_))), "trailing data: {outcome:?}");
    }
}
