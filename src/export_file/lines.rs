//! JSON-lines exports: one `{"type": ..., "item": {...}}` per line.

use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::io::AsyncRead;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};

use super::{ReadError, Record, Sink};

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    item: Map<String, Value>,
}

/// Reads every line of `reader` into `sink`. Blank lines are skipped; a line longer than
/// `max_line_bytes` ends reading before it is buffered whole.
pub async fn read(reader: impl AsyncRead + Unpin, sink: &mut Sink, max_line_bytes: usize) -> Result<(), ReadError> {
    let mut lines = FramedRead::new(reader, LinesCodec::new_with_max_length(max_line_bytes));
    let mut number = 0u64;
    while let Some(line) = lines.next().await {
        number += 1;
        let line = line.map_err(|error| match error {
            LinesCodecError::MaxLineLengthExceeded => {
                ReadError::Parse(format!("line {number} is longer than the limit of {max_line_bytes} bytes"))
            }
            LinesCodecError::Io(error) => super::io_error(error),
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let envelope: Envelope = serde_json::from_str(&line)
            .map_err(|error| ReadError::Parse(format!("line {number} is not a {{type, item}} entity: {error}")))?;
        sink.send(Record { kind: envelope.kind, item: envelope.item }).await?;
    }
    Ok(())
}
