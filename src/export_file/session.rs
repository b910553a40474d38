//! One ReadExport stream: the task that downloads and parses the file, and the stream the
//! client polls.
//!
//! The task holds the stream's slot of the replica's ReadExport limit for as long as it reads,
//! and stops at the stream's maximum lifetime, when the client has read nothing for the idle
//! timeout, or when the server's drain ends the remaining streams. It reports how it ended on a
//! oneshot; the client's stream turns that into the final status, naming the first record the
//! client has not received (`next_index`). The stream ends OK only on an explicit report that
//! the whole file was read: a task that died (a panic) ends it with INTERNAL, never OK.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use futures::{Future, Stream};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tracing::Instrument;

use super::{Encoding, ReadError, Sink};
use crate::{contract::status, proto::ExportRecord};

/// Limits of ReadExport streams.
#[derive(Clone, Copy, Debug)]
pub struct ReadLimits {
    /// Most ReadExport streams reading at once on this replica; past it, RESOURCE_EXHAUSTED.
    pub max_streams: usize,
    /// The longest one stream may read before it ends (resumable at `next_index`).
    pub max_lifetime: Duration,
    /// How long a stream waits for a client that stopped reading before it ends.
    pub idle_timeout: Duration,
    /// The longest V2 line or V1 entity read; a longer one ends the stream with DATA_LOSS.
    pub max_entity_bytes: usize,
    /// The largest export file read; past it, the stream ends with DATA_LOSS.
    pub max_file_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_streams: 64,
            max_lifetime: Duration::from_secs(6 * 3600),
            idle_timeout: Duration::from_secs(60),
            max_entity_bytes: 16 * 1024 * 1024,
            max_file_bytes: 64 * 1024 * 1024 * 1024,
        }
    }
}

/// Messages buffered between the export parser and a ReadExport client: enough to keep the
/// download busy, small enough that a slow client slows the download instead of filling memory.
/// A `Struct` message holds one record; a JSON one up to [`JSON_BATCH_BYTES`](super::JSON_BATCH_BYTES).
const RECORD_BUFFER: usize = 64;
const JSON_MESSAGE_BUFFER: usize = 8;

/// Called with the number of records in the file once it was read to its end.
pub type CountedRecords = Box<dyn FnOnce(u64) + Send>;

/// Starts reading `body` from record `start` on its own task and returns the client's stream.
/// `permit` (the stream's slot) is released when reading ends; `ending` ends it as the server
/// shuts down; `counted` learns how many records the file has, if it is read to its end.
pub fn start<S>(
    body: S,
    start: u64,
    encoding: Encoding,
    limits: ReadLimits,
    permit: OwnedSemaphorePermit,
    ending: CancellationToken,
    counted: CountedRecords,
) -> RecordStream
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    let buffer = match encoding {
        Encoding::Struct => RECORD_BUFFER,
        Encoding::Json => JSON_MESSAGE_BUFFER,
    };
    let (sender, records) = mpsc::channel(buffer);
    let (report, end) = oneshot::channel();
    let reading = async move {
        let mut sink = Sink::new(start, encoding, sender, limits.idle_timeout);
        let mut outcome = tokio::select! {
            outcome = super::read(body, &mut sink, &limits) => outcome,
            () = tokio::time::sleep(limits.max_lifetime) => Err(ReadError::Lifetime(limits.max_lifetime)),
            () = ending.cancelled() => Err(ReadError::ShuttingDown),
        };
        if outcome.is_ok() {
            let records = sink.next_index;
            counted(records);
            if start > records {
                outcome = Err(ReadError::PastTheEnd { records });
            }
        }
        if let Err(error) = &outcome {
            tracing::debug!(%error, "ReadExport stream ended early");
        }
        // Reported before the sender goes, so the client's stream never sees a closed channel
        // without knowing why.
        let _ = report.send(outcome);
        drop(sink);
        drop(permit);
    };
    tokio::spawn(reading.in_current_span());
    RecordStream { records, end, ended: None, next_index: start, finished: false }
}

/// The client's side of a ReadExport stream.
pub struct RecordStream {
    records: mpsc::Receiver<ExportRecord>,
    end: oneshot::Receiver<Result<(), ReadError>>,
    /// How reading ended, once known.
    ended: Option<Ending>,
    /// The first record the client has not been given.
    next_index: u64,
    finished: bool,
}

/// How the reading task ended.
#[derive(Debug)]
enum Ending {
    /// It said how.
    Reported(Result<(), ReadError>),
    /// It went away without a report (a panic): the export must not look complete.
    Died,
}

impl Ending {
    /// Whether the stream ends at once, before the records still buffered: the client is
    /// resuming anyway, and the buffer is freed.
    fn interrupts(&self) -> bool {
        matches!(self, Self::Reported(Err(ReadError::Idle(_) | ReadError::Lifetime(_) | ReadError::ShuttingDown)))
    }
}

impl RecordStream {
    /// The final item for how reading ended (`None`: the stream ends OK, or the client left).
    fn final_status(&mut self, ended: Ending) -> Option<Status> {
        self.finished = true;
        let next_index = self.next_index;
        match ended {
            Ending::Reported(Ok(()) | Err(ReadError::Stopped)) => None,
            Ending::Reported(Err(ReadError::Download(detail))) => Some(status::download_failed(&detail, next_index)),
            Ending::Reported(Err(ReadError::Parse(detail))) => Some(status::export_unreadable(&detail, next_index)),
            Ending::Reported(Err(error @ (ReadError::Idle(_) | ReadError::Lifetime(_)))) => {
                Some(status::read_interrupted(&error.to_string(), next_index))
            }
            Ending::Reported(Err(ReadError::ShuttingDown)) => Some(status::read_shutting_down(next_index)),
            Ending::Reported(Err(ReadError::PastTheEnd { records })) => {
                Some(status::start_index_past_end(next_index, records))
            }
            Ending::Died => {
                tracing::error!("the export reader stopped abnormally");
                Some(status::read_aborted(next_index))
            }
        }
    }

    /// Polls for the reading task's report, once.
    fn poll_end(&mut self, cx: &mut Context<'_>) {
        if self.ended.is_none()
            && let Poll::Ready(report) = Pin::new(&mut self.end).poll(cx)
        {
            self.ended = Some(report.map_or(Ending::Died, Ending::Reported));
        }
    }
}

impl Stream for RecordStream {
    type Item = Result<ExportRecord, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        self.poll_end(cx);
        if self.ended.as_ref().is_some_and(Ending::interrupts) {
            let ended = self.ended.take().unwrap_or(Ending::Died);
            return Poll::Ready(self.final_status(ended).map(Err));
        }
        match self.records.poll_recv(cx) {
            Poll::Ready(Some(record)) => {
                // A JSON message carries several records; any other, one.
                self.next_index = record.index + record.json.len().max(1) as u64;
                Poll::Ready(Some(Ok(record)))
            }
            // Every record is out: the report says how the stream ends. It is sent before the
            // channel closes, unless the task died, whose report then closes right after.
            Poll::Ready(None) => match self.ended.take() {
                Some(ended) => Poll::Ready(self.final_status(ended).map(Err)),
                None => Poll::Pending,
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;
    use tonic::Code;
    use tonic_types::StatusExt;

    use super::*;

    fn record(index: u64) -> ExportRecord {
        ExportRecord { index, kind: "user".into(), item: None, json: Vec::new() }
    }

    fn next_index(status: &Status) -> String {
        status.get_error_details().error_info().unwrap().metadata["next_index"].clone()
    }

    #[tokio::test]
    async fn a_reader_that_dies_without_a_report_ends_the_stream_with_an_error_not_ok() {
        let (sender, records) = mpsc::channel(4);
        let (report, end) = oneshot::channel::<Result<(), ReadError>>();
        let mut stream = RecordStream { records, end, ended: None, next_index: 3, finished: false };
        let reader = tokio::spawn(async move {
            sender.send(record(3)).await.unwrap();
            let _report = report;
            panic!("the parser broke");
        });
        assert!(reader.await.unwrap_err().is_panic());
        assert_eq!(stream.next().await.unwrap().unwrap().index, 3);
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert_eq!(next_index(&status), "4");
        assert!(stream.next().await.is_none());
    }

    #[tokio::test]
    async fn an_interruption_ends_the_stream_before_the_buffered_records() {
        let (sender, records) = mpsc::channel(4);
        let (report, end) = oneshot::channel();
        let mut stream = RecordStream { records, end, ended: None, next_index: 0, finished: false };
        sender.send(record(0)).await.unwrap();
        assert_eq!(stream.next().await.unwrap().unwrap().index, 0);
        sender.send(record(1)).await.unwrap();
        report.send(Err(ReadError::ShuttingDown)).unwrap();
        let status = stream.next().await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(next_index(&status), "1", "the first record not delivered");
    }
}
