//! Reading a finished export: download its file with streaming I/O and turn it into records as
//! the bytes arrive, in bounded memory, on async tasks only.
//!
//! - [`format`] tells a JSON-lines file (v2 channel exports, users exports) from a v1 document by
//!   its first key, without reading more than a few kilobytes.
//! - [`lines`] parses JSON lines, one record per line.
//! - [`scan`] finds JSON value boundaries in a byte stream; [`document`] uses it to parse a v1
//!   document one record per channel, member, message, reaction and user.
//! - [`session`] is one ReadExport stream: its limits, the task that reads the file, and the
//!   stream the client polls, which ends OK only when the whole file was read.
//!
//! Records go into a bounded channel: when the client reads slowly the channel fills, the
//! parser waits, and so does the download; when the client stops reading for the idle timeout,
//! the stream ends.

pub mod document;
pub mod format;
pub mod lines;
pub mod scan;
pub mod session;

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::io::StreamReader;

use crate::{contract::json, proto::ExportRecord};

pub use session::{ReadLimits, RecordStream};

/// One entity of an export file.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// `channel`, `member`, `message`, `reaction`, `user`, ...
    pub kind: String,
    /// The entity as the file holds it.
    pub item: Map<String, Value>,
}

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
}

/// Numbers records, skips those before `start`, and hands the rest to the client's channel,
/// giving up when the client has not taken one for the idle timeout.
pub struct Sink {
    next_index: u64,
    start: u64,
    sender: mpsc::Sender<ExportRecord>,
    idle_timeout: Duration,
}

impl Sink {
    /// A sink that delivers records from index `start` into `sender`.
    pub fn new(start: u64, sender: mpsc::Sender<ExportRecord>, idle_timeout: Duration) -> Self {
        Self { next_index: 0, start, sender, idle_timeout }
    }

    fn record(&mut self, record: Record) -> Option<ExportRecord> {
        let index = self.next_index;
        self.next_index += 1;
        (index >= self.start).then(|| ExportRecord {
            index,
            kind: record.kind,
            item: Some(json::to_struct(record.item)),
        })
    }

    /// Delivers a record, waiting (at most the idle timeout) while the client's buffer is full.
    pub async fn send(&mut self, record: Record) -> Result<(), ReadError> {
        let Some(record) = self.record(record) else { return Ok(()) };
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

/// Reads the export file in `body` into `sink`, within the entity and file caps of `limits`;
/// `Ok` only once the file was read to its end.
pub async fn read<S>(body: S, sink: &mut Sink, limits: &ReadLimits) -> Result<(), ReadError>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    let body = capped(body.map_err(|error| std::io::Error::other(error.without_url())), limits.max_file_bytes);
    let (format, body) = format::sniff(body).await?;
    tracing::debug!(?format, "reading export");
    match format {
        format::Format::JsonLines => lines::read(StreamReader::new(body), sink, limits.max_entity_bytes).await,
        format::Format::Document => {
            let mut scanner = scan::Scanner::new(body, limits.max_entity_bytes);
            document::read(&mut scanner, sink).await
        }
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
