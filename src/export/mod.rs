//! Reading a finished export: download its file with streaming I/O and turn it into records as
//! the bytes arrive, in bounded memory.
//!
//! - [`format`] tells a JSON-lines file (v2 channel exports, users exports) from a v1 document by
//!   its first key, without reading more than a few kilobytes.
//! - [`lines`] parses JSON lines, one record per line.
//! - [`document`] parses a v1 document incrementally, one record per channel, member, message,
//!   reaction and user, never holding more than one entity.
//!
//! Records go into a bounded channel: when the client reads slowly the channel fills, the
//! parser waits, and so does the download.

pub mod document;
pub mod format;
pub mod lines;

use bytes::Bytes;
use futures::{Stream, StreamExt, TryStreamExt};
use serde_json::{Map, Value};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};
use tonic::Status;

use crate::{
    proto::ExportRecord,
    service::{convert, errors},
};

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
    /// The file is not what an export should be.
    #[error("the export file cannot be parsed: {0}")]
    Parse(String),
}

/// Numbers records, skips those before `start`, and hands the rest to the client's channel.
pub struct Sink {
    next_index: u64,
    start: u64,
    sender: mpsc::Sender<Result<ExportRecord, Status>>,
}

impl Sink {
    /// A sink that delivers records from index `start` into `sender`.
    pub fn new(start: u64, sender: mpsc::Sender<Result<ExportRecord, Status>>) -> Self {
        Self { next_index: 0, start, sender }
    }

    fn record(&mut self, record: Record) -> Option<ExportRecord> {
        let index = self.next_index;
        self.next_index += 1;
        (index >= self.start).then(|| ExportRecord {
            index,
            kind: record.kind,
            item: Some(convert::to_struct(record.item)),
        })
    }

    /// Delivers a record, waiting while the client's buffer is full.
    pub async fn send(&mut self, record: Record) -> Result<(), ReadError> {
        match self.record(record) {
            Some(record) => self.sender.send(Ok(record)).await.map_err(|_| ReadError::Stopped),
            None => Ok(()),
        }
    }

    /// [`Self::send`] for the parser's blocking thread.
    pub fn blocking_send(&mut self, record: Record) -> Result<(), ReadError> {
        match self.record(record) {
            Some(record) => self.sender.blocking_send(Ok(record)).map_err(|_| ReadError::Stopped),
            None => Ok(()),
        }
    }

    /// Ends the client's stream with the status for `error`, naming the first record not sent.
    pub async fn fail(self, error: ReadError) {
        let next_index = self.next_index.max(self.start);
        let status = match error {
            ReadError::Stopped => return,
            ReadError::Download(detail) => errors::download_failed(&detail, next_index),
            ReadError::Parse(detail) => errors::export_unreadable(&detail, next_index),
        };
        let _ = self.sender.send(Err(status)).await;
    }
}

/// Reads the export file in `body` into `sink` and reports how it ended.
pub async fn read<S>(body: S, mut sink: Sink)
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + Unpin + 'static,
{
    let body = body.map_err(|error| std::io::Error::other(error.without_url()));
    let (format, body) = match format::sniff(body).await {
        Ok(sniffed) => sniffed,
        Err(error) => return sink.fail(error).await,
    };
    tracing::debug!(?format, "reading export");
    let outcome = match format {
        format::Format::JsonLines => lines::read(StreamReader::new(body), &mut sink).await,
        format::Format::Document => {
            // serde_json reads a byte at a time: buffer, or every byte crosses the bridge.
            let reader = std::io::BufReader::with_capacity(64 * 1024, SyncIoBridge::new(StreamReader::new(body)));
            let parsed = tokio::task::spawn_blocking(move || {
                let outcome = document::read(reader, &mut sink);
                (outcome, sink)
            })
            .await;
            match parsed {
                Ok((outcome, returned)) => {
                    sink = returned;
                    outcome
                }
                Err(join) => {
                    tracing::error!(%join, "the export parser stopped abnormally");
                    return;
                }
            }
        }
    };
    if let Err(error) = outcome {
        sink.fail(error).await;
    }
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
