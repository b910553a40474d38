//! Export files, built from the data set when they are downloaded, and their signed URLs.
//!
//! - Channel export **v1**: one JSON document
//!   `{"channels": [{"channel": {...}, "members": [...], "messages": [...]}], "users": [...]}`;
//!   `users` (every member, author and reactor of the exported channels, sorted by id) is there
//!   only with `export_users: true`. Reactions appear inside each message (`latest_reactions`,
//!   `reaction_counts`, `reaction_scores`).
//! - Channel export **v2**: JSON lines in the import envelope `{"type": ..., "item": {...}}`:
//!   the `user` lines first (only with `export_users`), then per channel one `channel` line, its
//!   `member` lines, and each `message` line followed by that message's `reaction` lines.
//! - Users export: JSON lines; per requested user a `user` line, its `message` lines and its
//!   `reaction` lines.
//!
//! Message windows: `messages_since` is exclusive and `messages_until` inclusive
//! (`since < created_at <= until`), so consecutive windows neither overlap nor leave gaps.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use super::data::{Channel, DataSet, Message};
use super::wire::timestamp;

/// The file format version of a channel export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Version {
    V1,
    V2,
}

/// One channel of an export request.
#[derive(Clone, Debug)]
pub(crate) struct ChannelSelection {
    pub(crate) cid: String,
    pub(crate) since: Option<DateTime<Utc>>,
    pub(crate) until: Option<DateTime<Utc>>,
}

/// A validated `POST /export_channels` request.
#[derive(Clone, Debug)]
pub(crate) struct ChannelExportSpec {
    pub(crate) channels: Vec<ChannelSelection>,
    pub(crate) version: Version,
    pub(crate) include_truncated: bool,
    pub(crate) include_soft_deleted: bool,
    pub(crate) clear_deleted_text: bool,
    pub(crate) export_users: bool,
}

/// What a task exports.
#[derive(Clone, Debug)]
pub(crate) enum ExportKind {
    Channels(ChannelExportSpec),
    Users(Vec<String>),
    /// A large file generated on the fly for benchmarks (see [`SyntheticSpec`]).
    Synthetic(SyntheticSpec),
}

/// A synthetic export: `records` entities of about `record_bytes` each, streamed as they are
/// generated, so that a file of any size costs the emulator no memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
pub(crate) struct SyntheticSpec {
    pub(crate) records: u64,
    pub(crate) version: Version,
    #[serde(default = "default_record_bytes")]
    pub(crate) record_bytes: usize,
    /// Serve the file no faster than this, as a remote file store would; unpaced when absent
    /// (then as fast as the generator, several GiB/s).
    #[serde(default)]
    pub(crate) mib_per_second: Option<std::num::NonZeroU32>,
}

fn default_record_bytes() -> usize {
    512
}

/// Records generated per chunk of a synthetic file.
const SYNTHETIC_CHUNK_RECORDS: u64 = 256;

impl SyntheticSpec {
    /// The file, chunk by chunk. v2: a `channel` line, then `message` lines with a `reaction`
    /// line after every tenth. v1: one channel block whose `messages` are the same records.
    pub(crate) fn stream(self) -> impl futures::Stream<Item = Result<bytes::Bytes, std::convert::Infallible>> {
        let padding = "x".repeat(self.record_bytes.saturating_sub(96));
        let head = match self.version {
            Version::V1 => "{\"channels\":[{\"channel\":{\"cid\":\"synthetic:bench\",\"type\":\"synthetic\"},\"members\":[],\"messages\":[".to_owned(),
            Version::V2 => line("channel", json!({"cid": "synthetic:bench", "type": "synthetic"})),
        };
        let chunks = (0..self.records.div_ceil(SYNTHETIC_CHUNK_RECORDS)).map(move |chunk| {
            let first = chunk * SYNTHETIC_CHUNK_RECORDS;
            let last = (first + SYNTHETIC_CHUNK_RECORDS).min(self.records);
            let mut text = String::with_capacity((last - first) as usize * (self.record_bytes + 32));
            for n in first..last {
                // Written out rather than built as a `Value`: the generator must be much faster
                // than the service reading it, or benchmarks measure the generator. The text is
                // what `json!` prints (keys in insertion order); `synthetic_records_are_serde_json_text`.
                match self.version {
                    Version::V1 => {
                        if n > 0 {
                            text.push(',');
                        }
                        let _ = write!(text, "{{\"id\":\"m-{n}\",\"n\":{n},\"text\":\"{padding}\"}}");
                    }
                    Version::V2 => {
                        let _ = writeln!(
                            text,
                            "{{\"type\":\"message\",\"item\":{{\"id\":\"m-{n}\",\"n\":{n},\"text\":\"{padding}\"}}}}"
                        );
                        if n % 10 == 9 {
                            let _ = writeln!(
                                text,
                                "{{\"type\":\"reaction\",\"item\":{{\"message_id\":\"m-{n}\",\"type\":\"like\"}}}}"
                            );
                        }
                    }
                }
            }
            Ok(bytes::Bytes::from(text))
        });
        let tail = match self.version {
            Version::V1 => "]}]}".to_owned(),
            Version::V2 => String::new(),
        };
        let file = futures::stream::iter(
            std::iter::once(Ok(bytes::Bytes::from(head)))
                .chain(chunks)
                .chain(std::iter::once(Ok(bytes::Bytes::from(tail)))),
        );
        // Each chunk waits until the bytes before it are due at the rate since the first chunk
        // (a schedule, not a sleep per chunk, so that timer slack does not add up).
        let bytes_per_second = self.mib_per_second.map(|rate| f64::from(rate.get()) * 1024.0 * 1024.0);
        let (mut started, mut sent) = (None::<tokio::time::Instant>, 0u64);
        file.then(move |chunk| {
            let due = bytes_per_second.map(|rate| {
                let start = *started.get_or_insert_with(tokio::time::Instant::now);
                start + std::time::Duration::from_secs_f64(sent as f64 / rate)
            });
            sent += chunk.as_ref().map_or(0, |bytes| bytes.len() as u64);
            async move {
                if let Some(due) = due {
                    tokio::time::sleep_until(due).await;
                }
                chunk
            }
        })
    }
}

impl ExportKind {
    /// The URL path segment (`channels` / `users`) and the file name.
    pub(crate) fn location(&self) -> (&'static str, &'static str) {
        match self {
            ExportKind::Channels(spec) if spec.version == Version::V1 => ("channels", "channels-export.json"),
            ExportKind::Channels(_) => ("channels", "channels-export.jsonl"),
            ExportKind::Users(_) => ("users", "users-export.jsonl"),
            ExportKind::Synthetic(spec) if spec.version == Version::V1 => ("synthetic", "synthetic-export.json"),
            ExportKind::Synthetic(_) => ("synthetic", "synthetic-export.jsonl"),
        }
    }

    pub(crate) fn content_type(&self) -> &'static str {
        match self {
            ExportKind::Channels(spec) if spec.version == Version::V1 => "application/json",
            ExportKind::Synthetic(spec) if spec.version == Version::V1 => "application/json",
            _ => "application/x-ndjson",
        }
    }

    pub(crate) fn build(&self, data: &DataSet) -> Vec<u8> {
        match self {
            ExportKind::Channels(spec) => channels_file(data, spec),
            ExportKind::Users(ids) => users_file(data, ids),
            ExportKind::Synthetic(_) => Vec::new(),
        }
    }
}

fn selected<'a>(
    messages: &'a [Message],
    channel: &Channel,
    sel: &ChannelSelection,
    spec: &ChannelExportSpec,
) -> Vec<&'a Message> {
    messages
        .iter()
        .filter(|m| sel.since.is_none_or(|since| m.created_at > since))
        .filter(|m| sel.until.is_none_or(|until| m.created_at <= until))
        .filter(|m| spec.include_truncated || channel.truncated_at.is_none_or(|at| m.created_at > at))
        .collect()
}

fn line(kind: &str, item: Value) -> String {
    let mut text = json!({"type": kind, "item": item}).to_string();
    text.push('\n');
    text
}

fn message_item(channel: &Channel, message: &Message, clear: bool) -> Value {
    let mut item = json!({
        "id": message.id,
        "channel_type": channel.kind,
        "channel_id": channel.id,
        "user": message.user_id,
        "text": message.text(clear),
        "type": if message.deleted_at.is_some() { "deleted" } else { "regular" },
        "created_at": timestamp(message.created_at),
        "updated_at": timestamp(message.updated_at()),
    });
    if let (Some(at), Value::Object(map)) = (message.deleted_at, &mut item) {
        map.insert("deleted_at".to_owned(), json!(timestamp(at)));
    }
    item
}

fn reaction_items(message: &Message) -> impl Iterator<Item = Value> + '_ {
    message.reactions.iter().map(|r| {
        json!({
            "message_id": message.id,
            "type": r.kind,
            "user_id": r.user_id,
            "score": 1,
            "created_at": timestamp(r.created_at),
        })
    })
}

fn channels_file(data: &DataSet, spec: &ChannelExportSpec) -> Vec<u8> {
    let mut users = std::collections::BTreeSet::new();
    let mut blocks = Vec::new();
    let mut lines = String::new();
    for sel in &spec.channels {
        let Some(index) = data.channel_index(&sel.cid) else {
            continue;
        };
        let channel = &data.channels[index];
        if channel.deleted_at.is_some() && !spec.include_soft_deleted {
            continue;
        }
        let all = channel.messages();
        let messages = selected(&all, channel, sel, spec);
        for member in &channel.members {
            users.insert(member.user_id.clone());
        }
        for message in &messages {
            users.insert(message.user_id.clone());
            for reaction in &message.reactions {
                users.insert(reaction.user_id.clone());
            }
        }
        match spec.version {
            Version::V1 => blocks.push(json!({
                "channel": channel.json(data),
                "members": channel.members.iter().map(|m| m.json(data)).collect::<Vec<_>>(),
                "messages": messages
                    .iter()
                    .map(|m| m.json(channel, data.user(&m.user_id).map(|u| u.json()), spec.clear_deleted_text))
                    .collect::<Vec<_>>(),
            })),
            Version::V2 => {
                let mut item = channel.json(data);
                if let Value::Object(map) = &mut item {
                    map.insert("created_by".to_owned(), json!(channel.created_by));
                }
                lines.push_str(&line("channel", item));
                for member in &channel.members {
                    lines.push_str(&line(
                        "member",
                        json!({
                            "channel_type": channel.kind,
                            "channel_id": channel.id,
                            "user_id": member.user_id,
                            "channel_role": if member.role == "owner" { "channel_moderator" } else { "channel_member" },
                            "created_at": timestamp(member.created_at),
                        }),
                    ));
                }
                for message in &messages {
                    lines.push_str(&line("message", message_item(channel, message, spec.clear_deleted_text)));
                    for reaction in reaction_items(message) {
                        lines.push_str(&line("reaction", reaction));
                    }
                }
            }
        }
    }
    let user_values: Vec<Value> = users.iter().filter_map(|id| data.user(id)).map(|u| u.json()).collect();
    match spec.version {
        Version::V1 => {
            let mut doc = json!({"channels": blocks});
            if let (true, Value::Object(map)) = (spec.export_users, &mut doc) {
                map.insert("users".to_owned(), Value::Array(user_values));
            }
            doc.to_string().into_bytes()
        }
        Version::V2 => {
            let mut out = String::new();
            if spec.export_users {
                for user in user_values {
                    out.push_str(&line("user", user));
                }
            }
            out.push_str(&lines);
            out.into_bytes()
        }
    }
}

fn users_file(data: &DataSet, ids: &[String]) -> Vec<u8> {
    let mut out = String::new();
    for id in ids {
        let Some(user) = data.user(id) else { continue };
        out.push_str(&line("user", user.json()));
        for (channel, message) in data.authored(id) {
            out.push_str(&line("message", message_item(channel, message, false)));
        }
        for (_, message, reaction) in data.reactions_by(id) {
            out.push_str(&line(
                "reaction",
                json!({
                    "message_id": message.id,
                    "type": reaction.kind,
                    "user_id": reaction.user_id,
                    "score": 1,
                    "created_at": timestamp(reaction.created_at),
                }),
            ));
        }
    }
    out.into_bytes()
}

/// The hex HMAC-SHA256, keyed with the API secret, of `"<path>\n<expires>"`.
pub(crate) fn sign(secret: &str, path: &str, expires: i64) -> String {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(format!("{path}\n{expires}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signature in constant time.
pub(crate) fn verify(secret: &str, path: &str, expires: i64, signature: &str) -> bool {
    let Ok(given) = hex::decode(signature) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(format!("{path}\n{expires}").as_bytes());
    mac.verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_reject_tampering() {
        let sig = sign("secret", "/exports/channels/t/f.json", 100);
        assert!(verify("secret", "/exports/channels/t/f.json", 100, &sig));
        assert!(!verify("secret", "/exports/channels/t/f.json", 101, &sig));
        assert!(!verify("other", "/exports/channels/t/f.json", 100, &sig));
        assert!(!verify("secret", "/exports/channels/t/f.json", 100, "zz"));
    }

    /// The generator writes its records by hand; they must be what serde_json prints.
    #[test]
    fn synthetic_records_are_serde_json_text() {
        for version in [Version::V1, Version::V2] {
            let spec = SyntheticSpec { records: 300, version, record_bytes: 200, mib_per_second: None };
            let chunks = futures::executor::block_on(spec.stream().collect::<Vec<_>>());
            let text: Vec<u8> = chunks.into_iter().flat_map(|chunk| chunk.unwrap().to_vec()).collect();
            let padding = "x".repeat(200 - 96);
            let records = (0..300u64).map(|n| json!({"id": format!("m-{n}"), "n": n, "text": padding}));
            let expected = match version {
                Version::V1 => {
                    let messages: Vec<Value> = records.collect();
                    let channel = json!({"cid": "synthetic:bench", "type": "synthetic"});
                    json!({"channels": [{"channel": channel, "members": [], "messages": messages}]}).to_string()
                }
                Version::V2 => {
                    let mut lines = line("channel", json!({"cid": "synthetic:bench", "type": "synthetic"}));
                    for (n, message) in records.enumerate() {
                        lines.push_str(&line("message", message));
                        if n % 10 == 9 {
                            lines.push_str(&line("reaction", json!({"message_id": format!("m-{n}"), "type": "like"})));
                        }
                    }
                    lines
                }
            };
            assert_eq!(String::from_utf8(text).unwrap(), expected, "{version:?}");
        }
    }

    /// Paced, a synthetic file arrives no faster than asked.
    #[tokio::test]
    async fn a_paced_synthetic_file_keeps_its_rate() {
        let rate = std::num::NonZeroU32::new(8);
        let spec = SyntheticSpec { records: 4096, version: Version::V2, record_bytes: 1024, mib_per_second: rate };
        let started = std::time::Instant::now();
        let bytes: usize =
            spec.stream().map(|chunk| chunk.map_or(0, |bytes| bytes.len())).collect::<Vec<_>>().await.iter().sum();
        let floor = bytes as f64 / (8.0 * 1024.0 * 1024.0) - 0.05;
        assert!(bytes > 4_000_000, "{bytes}");
        assert!(started.elapsed().as_secs_f64() >= floor, "{:?} for {bytes} bytes at 8 MiB/s", started.elapsed());
    }
}
