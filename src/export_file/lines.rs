//! JSON-lines exports: one `{"type": ..., "item": {...}}` per line.
//!
//! Lines are cut out of the downloaded chunks without copying (a line that spans two chunks is
//! the only one copied), so that under [`Encoding::Json`](super::Encoding::Json) a line reaches
//! the client as the very bytes the file holds.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;

use super::{ByteStream, ReadError, Sink, io_error};

/// Reads every line of `body` into `sink`. Blank lines are skipped, a `\r` before the `\n` is
/// dropped, and a line longer than `max_line_bytes` ends reading before it is buffered whole.
pub async fn read(mut body: ByteStream, sink: &mut Sink, max_line_bytes: usize) -> Result<(), ReadError> {
    let mut lines = Lines { partial: BytesMut::new(), number: 0, max_line_bytes };
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(io_error)?;
        if !lines.partial.is_empty() {
            // The end of the line the previous chunk began.
            let Some(end) = memchr::memchr(b'\n', &chunk) else {
                lines.extend_partial(&chunk)?;
                continue;
            };
            lines.extend_partial(&chunk[..end])?;
            let line = lines.partial.split().freeze();
            lines.deliver(line, sink).await?;
            chunk = chunk.slice(end + 1..);
        }
        while let Some(end) = memchr::memchr(b'\n', &chunk) {
            let line = chunk.slice(..end);
            chunk = chunk.slice(end + 1..);
            lines.check_length(line.len())?;
            lines.deliver(line, sink).await?;
        }
        lines.extend_partial(&chunk)?;
    }
    // The last line may have no line ending.
    let last = lines.partial.split().freeze();
    lines.deliver(last, sink).await
}

/// Where the reader is: the start of a line not ended yet, and how many lines were read.
struct Lines {
    partial: BytesMut,
    number: u64,
    max_line_bytes: usize,
}

impl Lines {
    fn extend_partial(&mut self, bytes: &[u8]) -> Result<(), ReadError> {
        self.check_length(self.partial.len() + bytes.len())?;
        self.partial.extend_from_slice(bytes);
        Ok(())
    }

    fn check_length(&self, length: usize) -> Result<(), ReadError> {
        if length > self.max_line_bytes {
            let number = self.number + 1;
            return Err(ReadError::Parse(format!(
                "line {number} is longer than the limit of {} bytes",
                self.max_line_bytes
            )));
        }
        Ok(())
    }

    /// Counts a line and hands it on, unless it is blank.
    async fn deliver(&mut self, mut line: Bytes, sink: &mut Sink) -> Result<(), ReadError> {
        self.number += 1;
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        sink.line(line, self.number).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::export_file::{Encoding, boxed};

    async fn read_in(chunks: &[&'static str], encoding: Encoding, cap: usize) -> (Result<(), ReadError>, Vec<Bytes>) {
        read_bytes_in(chunks.iter().map(|c| c.as_bytes()).collect(), encoding, cap).await
    }

    async fn read_bytes_in(
        chunks: Vec<&'static [u8]>,
        encoding: Encoding,
        cap: usize,
    ) -> (Result<(), ReadError>, Vec<Bytes>) {
        let body =
            boxed(futures::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))).collect::<Vec<_>>()));
        let (sender, mut receiver) = mpsc::channel(1024);
        let mut sink = Sink::new(0, encoding, sender, Duration::from_secs(5));
        let mut outcome = read(body, &mut sink, cap).await;
        if outcome.is_ok() {
            outcome = sink.flush().await;
        }
        drop(sink);
        let mut lines = Vec::new();
        let mut next = 0;
        while let Some(record) = receiver.recv().await {
            assert_eq!(record.index, next, "indexes follow each other across messages");
            next += record.json.len().max(1) as u64;
            lines.extend(record.json);
        }
        (outcome, lines)
    }

    #[tokio::test]
    async fn lines_reach_the_client_as_the_file_holds_them_across_chunks() {
        let chunks = [
            "{\"type\":\"user\",\"item\":{\"id\":\"a\"}}\n{\"ty",
            "pe\":\"user\",  \"item\":{\"id\":",
            "\"b\"}}\r\n\n   \n",
            "{\"item\":{},\"type\":\"x\"}",
        ];
        let (outcome, lines) = read_in(&chunks, Encoding::Json, 1024).await;
        outcome.unwrap();
        assert_eq!(
            lines,
            [
                &b"{\"type\":\"user\",\"item\":{\"id\":\"a\"}}"[..],
                b"{\"type\":\"user\",  \"item\":{\"id\":\"b\"}}",
                b"{\"item\":{},\"type\":\"x\"}"
            ]
        );
    }

    #[tokio::test]
    async fn a_line_over_the_cap_or_not_an_entity_is_a_parse_error() {
        let (outcome, _) =
            read_in(&["{\"type\":\"user\",", "\"item\":{\"id\":\"abcdefgh\"}}\n"], Encoding::Json, 30).await;
        let error = outcome.unwrap_err().to_string();
        assert!(error.contains("line 1 is longer than the limit of 30 bytes"), "{error}");
        for bad in [
            "{\"type\":\"user\",\"item\":[]}\n",
            "{\"type\":3,\"item\":{}}\n",
            "{\"type\":\"u\",\"item\":{}\n",
            "[\"user\",{}]\n",
            "{\"item\":{}}\n",
            "{\"type\":\"u\",\"item\":{},\"type\":\"v\"}\n",
        ] {
            for encoding in [Encoding::Json, Encoding::Struct] {
                let (outcome, _) = read_in(&["{\"type\":\"user\",\"item\":{}}\n", bad], encoding, 1024).await;
                let error = outcome.unwrap_err().to_string();
                assert!(error.contains("line 2"), "{bad} {encoding:?}: {error}");
            }
        }
    }

    #[tokio::test]
    async fn a_line_that_is_not_utf8_is_a_parse_error_in_both_encodings() {
        // Inside a string and inside a member name: serde_json skips both without checking them.
        for bad in
            [&b"{\"type\":\"user\",\"item\":{\"id\":\"\xff\"}}\n"[..], b"{\"type\":\"user\",\"item\":{\"\xc3\":1}}\n"]
        {
            for encoding in [Encoding::Json, Encoding::Struct] {
                let (outcome, lines) =
                    read_bytes_in(vec![b"{\"type\":\"user\",\"item\":{}}\n", bad], encoding, 1024).await;
                let error = outcome.unwrap_err().to_string();
                assert!(error.contains("line 2"), "{encoding:?}: {error}");
                assert!(lines.len() <= 1, "{encoding:?}: the bad line never reaches the client");
            }
        }
    }
}
