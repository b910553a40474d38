//! Reading a finished export: download its file with streaming I/O and turn it into records as
//! the bytes arrive, in bounded memory, on async tasks only.
//!
//! - [`format`] tells a JSON-lines file (v2 channel exports, users exports) from a v1 document by
//!   its first key, without reading more than a few kilobytes.
//! - [`lines`] parses JSON lines, one record per line; `envelope` reads a line's `{type, item}`.
//! - [`scan`] finds JSON value boundaries in a byte stream; [`document`] uses it to parse a v1
//!   document one record per channel, member, message, reaction and user.
//! - [`session`] is one ReadExport stream: its limits, the task that reads the file, and the
//!   stream the client polls, which ends OK only when the whole file was read.
//!
//! Records go into a bounded channel: when the client reads slowly the channel fills, the
//! parser waits, and so does the download; when the client stops reading for the idle timeout,
//! the stream ends.

pub mod document;
mod envelope;
pub mod format;
pub mod lines;
pub mod scan;
pub mod session;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use prost_types::Struct;
use tokio::sync::mpsc;

use crate::{
    contract::wire_struct::{WireStruct, deserialize_whole, transcode},
    proto::ExportRecord,
};
use envelope::{AnObject, EnvelopeSeed, EnvelopeShape};

pub use session::{ReadLimits, RecordStream};

/// How records are put into messages (`ReadExportRequest.encoding`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    /// One record per message, as a `Struct` (transcoded from the JSON, never built as a tree).
    Struct,
    /// Records as JSON text, batched (see [`JSON_BATCH_BYTES`]).
    Json,
}

/// A JSON message is sent once its records reach this many bytes, or earlier when the client has
/// nothing left to read (so batching never delays a record a waiting client could have). Fewer,
/// larger messages are what a client pays for least (a Python client saved a gigabyte export 20%
/// faster, with 35% less CPU, than with 32 KiB); with [`session`]'s message buffer for JSON,
/// one stream holds about `8 x 128 KiB`.
pub const JSON_BATCH_BYTES: usize = 128 * 1024;

/// Why reading stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The client went away: nothing to report.
    #[error("the reader stopped")]
    Stopped,
    /// The download broke.
    #[error("the download failed: {0}")]
    Download(String),
    /// The file is not what an export should be (or exceeds a limit).
    #[error("the export file cannot be parsed: {0}")]
    Parse(String),
    /// The client read nothing for this long while records waited.
    #[error("the client read nothing for {0:?}")]
    Idle(Duration),
    /// The stream lived as long as it may.
    #[error("the stream reached its maximum lifetime of {0:?}")]
    Lifetime(Duration),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The file was read to its end, and `start` is past its last record.
    #[error("the export has {records} records, fewer than the start index")]
    PastTheEnd {
        /// How many records the file holds.
        records: u64,
    },
}

/// Numbers records, skips those before `start`, encodes the rest and hands them to the client's
/// channel, giving up when the client has not taken one for the idle timeout.
pub struct Sink {
    next_index: u64,
    start: u64,
    encoding: Encoding,
    sender: mpsc::Sender<ExportRecord>,
    idle_timeout: Duration,
    /// JSON records not sent yet, the first of them at `batch_index`.
    batch: Vec<Bytes>,
    batch_index: u64,
    batch_bytes: usize,
    /// Where `Struct` records are transcoded: one allocation shared by many records.
    arena: BytesMut,
}

/// The size of a [`Sink`]'s arena allocations (a larger record gets one of its own size).
const ARENA_BYTES: usize = 64 * 1024;

impl Sink {
    /// A sink that delivers records from index `start` into `sender`.
    pub fn new(start: u64, encoding: Encoding, sender: mpsc::Sender<ExportRecord>, idle_timeout: Duration) -> Self {
        Self {
            next_index: 0,
            start,
            encoding,
            sender,
            idle_timeout,
            batch: Vec::new(),
            batch_index: 0,
            batch_bytes: 0,
            arena: BytesMut::new(),
        }
    }

    /// The encoding records are delivered in.
    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Takes the next index; `false` if that record comes before `start` (it is skipped, unparsed).
    fn take_index(&mut self) -> bool {
        self.next_index += 1;
        self.next_index > self.start
    }

    /// Delivers one line of a JSON-lines file (without its line ending), line `number` of the file.
    pub async fn line(&mut self, line: Bytes, number: u64) -> Result<(), ReadError> {
        let not_an_entity = |error: serde_json::Error| {
            ReadError::Parse(format!("line {number} is not a {{type, item}} entity: {error}"))
        };
        if !self.take_index() {
            return Ok(());
        }
        match self.encoding {
            Encoding::Struct => {
                self.make_room(line.len());
                let kind = deserialize_whole(&line, EnvelopeSeed(&mut self.arena)).map_err(|error| {
                    self.arena.clear();
                    not_an_entity(error)
                })?;
                let item = WireStruct::encoded(self.arena.split().freeze());
                self.deliver_struct(kind, item).await
            }
            Encoding::Json => {
                // serde's derive would also take `["type", {...}]`; a record must be an object.
                if line.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
                    return Err(ReadError::Parse(format!("line {number} is not a {{type, item}} object")));
                }
                serde_json::from_slice::<EnvelopeShape>(&line).map_err(not_an_entity)?;
                check_text(&line, || format!("line {number}"))?;
                self.deliver_json(line).await
            }
        }
    }

    /// Delivers an entity of a V1 document: its kind and its JSON bytes as the document holds them.
    pub async fn entity(&mut self, kind: &'static str, json: &[u8]) -> Result<(), ReadError> {
        if self.encoding == Encoding::Json && self.next_index >= self.start {
            check_object(kind, json)?;
        }
        self.checked_entity(kind, json).await
    }

    /// [`Sink::entity`] for JSON already known to be an object (under [`Encoding::Json`] only its
    /// UTF-8 is checked).
    pub(super) async fn checked_entity(&mut self, kind: &'static str, json: &[u8]) -> Result<(), ReadError> {
        if !self.take_index() {
            return Ok(());
        }
        match self.encoding {
            Encoding::Struct => {
                self.make_room(json.len());
                transcode(json, &mut self.arena).map_err(|error| not_an_object(kind, &error))?;
                let item = WireStruct::encoded(self.arena.split().freeze());
                self.deliver_struct(kind.to_owned(), item).await
            }
            Encoding::Json => {
                check_text(json, || format!("a {kind}"))?;
                self.deliver_json(enveloped(kind, json)).await
            }
        }
    }

    /// Delivers an entity already parsed (a reaction taken out of its message).
    pub async fn parsed(&mut self, kind: &'static str, item: Struct) -> Result<(), ReadError> {
        if !self.take_index() {
            return Ok(());
        }
        self.deliver_struct(kind.to_owned(), item.into()).await
    }

    /// Makes sure the arena has room for a record transcoded from `json_len` bytes of JSON (about
    /// as many; more if it holds many short numbers, and then the arena grows while transcoding).
    fn make_room(&mut self, json_len: usize) {
        let wanted = json_len + 64;
        if self.arena.capacity() < wanted {
            self.arena = BytesMut::with_capacity(wanted.max(ARENA_BYTES));
        }
    }

    async fn deliver_struct(&mut self, kind: String, item: WireStruct) -> Result<(), ReadError> {
        let record = ExportRecord { index: self.next_index - 1, kind, item: Some(item), json: Vec::new() };
        self.deliver(record).await
    }

    async fn deliver_json(&mut self, json: Bytes) -> Result<(), ReadError> {
        if self.batch.is_empty() {
            self.batch_index = self.next_index - 1;
        }
        self.batch_bytes += json.len();
        self.batch.push(json);
        // A client that has read everything else is waiting for this record.
        let client_waiting = self.sender.capacity() == self.sender.max_capacity();
        if self.batch_bytes >= JSON_BATCH_BYTES || client_waiting { self.flush().await } else { Ok(()) }
    }

    /// Sends the JSON records gathered so far, if any.
    pub async fn flush(&mut self) -> Result<(), ReadError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let json = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        self.deliver(ExportRecord { index: self.batch_index, kind: String::new(), item: None, json }).await
    }

    /// Hands a message to the client's channel, waiting (at most the idle timeout) while it is full.
    async fn deliver(&mut self, record: ExportRecord) -> Result<(), ReadError> {
        // A free slot needs no timer (one per record showed in profiles of the `Struct` encoding).
        match self.sender.try_reserve() {
            Ok(slot) => {
                slot.send(record);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Closed(())) => return Err(ReadError::Stopped),
            Err(mpsc::error::TrySendError::Full(())) => {}
        }
        match tokio::time::timeout(self.idle_timeout, self.sender.reserve()).await {
            Ok(Ok(slot)) => {
                slot.send(record);
                Ok(())
            }
            Ok(Err(_)) => Err(ReadError::Stopped),
            Err(_) => Err(ReadError::Idle(self.idle_timeout)),
        }
    }
}

/// `{"type":"<kind>","item":<json>}`: a V1 entity in the JSON-lines envelope, on one line.
///
/// A pretty-printed V1 document has line breaks between an entity's tokens; a record is one line
/// of a JSON-lines file, so they become spaces. (In valid JSON a raw line break can only be such
/// white space: inside a string it must be escaped.) Every other byte is the document's.
fn enveloped(kind: &str, json: &[u8]) -> Bytes {
    let mut line = Vec::with_capacity(json.len() + kind.len() + 20);
    line.extend_from_slice(b"{\"type\":\"");
    line.extend_from_slice(kind.as_bytes());
    line.extend_from_slice(b"\",\"item\":");
    let item = line.len();
    line.extend_from_slice(json);
    for at in memchr::memchr2_iter(b'\n', b'\r', json) {
        line[item + at] = b' ';
    }
    line.push(b'}');
    Bytes::from(line)
}

/// Checks that a JSON record passed on as bytes is UTF-8 text (`what` names it for the error):
/// clients decode it as text, and serde_json does not check the strings it skips.
fn check_text(json: &[u8], what: impl FnOnce() -> String) -> Result<(), ReadError> {
    match simdutf8::basic::from_utf8(json) {
        Ok(_) => Ok(()),
        Err(_) => Err(ReadError::Parse(format!("{} is not UTF-8 text", what()))),
    }
}

/// Checks that `json` is one JSON object, without building it.
fn check_object(kind: &str, json: &[u8]) -> Result<(), ReadError> {
    serde_json::from_slice::<AnObject>(json).map(drop).map_err(|error| not_an_object(kind, &error))
}

pub(super) fn not_an_object(kind: &str, error: &serde_json::Error) -> ReadError {
    ReadError::Parse(format!("a {kind} is not a JSON object: {error}"))
}

/// Reads the export file in `body` into `sink`, within the entity and file caps of `limits`;
/// `Ok` only once the file was read to its end.
pub async fn read<S>(body: S, sink: &mut Sink, limits: &ReadLimits) -> Result<(), ReadError>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    let body = capped(body, limits.max_file_bytes);
    let (format, body) = format::sniff(body).await?;
    tracing::debug!(?format, "reading export");
    let outcome = match format {
        format::Format::JsonLines => lines::read(body, sink, limits.max_entity_bytes).await,
        format::Format::Document => {
            let mut scanner = scan::Scanner::new(body, limits.max_entity_bytes);
            document::read(&mut scanner, sink).await
        }
    };
    // The records read before the end, or before a broken download or file, still go out; a
    // client that left or stalled gets nothing more.
    match outcome {
        Ok(()) | Err(ReadError::Download(_) | ReadError::Parse(_)) => {
            if let Err(stopped) = sink.flush().await {
                return outcome.and(Err(stopped));
            }
            outcome
        }
        Err(_) => outcome,
    }
}

/// Ends `body` with an error once it has given more than `max_bytes`.
fn capped<S>(body: S, max_bytes: u64) -> ByteStream
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    let mut total = 0u64;
    boxed(body.map(move |chunk| {
        let chunk = chunk?;
        total = total.saturating_add(chunk.len() as u64);
        if total > max_bytes {
            let why = format!("the export file is larger than the limit of {max_bytes} bytes");
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        }
        Ok(chunk)
    }))
}

/// Turns a boxed byte stream error into a [`ReadError`].
pub(crate) fn io_error(error: std::io::Error) -> ReadError {
    if error.kind() == std::io::ErrorKind::InvalidData {
        ReadError::Parse(error.to_string())
    } else {
        ReadError::Download(error.to_string())
    }
}

/// The stream of byte chunks a reader reads from, boxed.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// Boxes a byte stream.
pub fn boxed<S>(stream: S) -> ByteStream
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
{
    stream.boxed()
}
