//! Which kind of export file this is, from its first bytes.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

use super::{ByteStream, ReadError, boxed, io_error};

/// How far into the file the first key must appear.
const SNIFF_LIMIT: usize = 64 * 1024;

/// The two layouts of export files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line in the envelope `{"type": ..., "item": {...}}` (v2 channel
    /// exports and users exports).
    JsonLines,
    /// One JSON document (v1 channel exports).
    Document,
}

/// Reads just enough of `body` to tell its format, and gives back the whole stream (the bytes
/// read included). A file whose first object starts with `type` or `item` is JSON lines.
pub async fn sniff<S>(mut body: S) -> Result<(Format, ByteStream), ReadError>
where
    S: Stream<Item = std::io::Result<Bytes>> + Send + Unpin + 'static,
{
    let mut head = BytesMut::new();
    let format = loop {
        if let Some(format) = classify(&head) {
            break format;
        }
        if head.len() > SNIFF_LIMIT {
            return Err(ReadError::Parse(format!("no JSON object key in the first {SNIFF_LIMIT} bytes")));
        }
        match body.next().await {
            Some(chunk) => head.extend_from_slice(&chunk.map_err(io_error)?),
            None if head.iter().all(u8::is_ascii_whitespace) => break Format::JsonLines,
            None => return Err(ReadError::Parse("the file ends before its first key".into())),
        }
    };
    let prefix = futures::stream::iter([Ok(head.freeze())]);
    Ok((format, boxed(prefix.chain(body))))
}

/// Decides from the bytes seen so far; `None` while they are not enough.
fn classify(head: &[u8]) -> Option<Format> {
    let mut rest = head.iter().skip_while(|b| b.is_ascii_whitespace());
    match rest.next()? {
        b'{' => {}
        _ => return Some(Format::Document),
    }
    let mut rest = rest.skip_while(|b| b.is_ascii_whitespace());
    if *rest.next()? != b'"' {
        return Some(Format::Document);
    }
    let key: Vec<u8> = rest.by_ref().take_while(|b| **b != b'"').copied().collect();
    // Until the closing quote has arrived, the key may still be growing.
    let complete = head.iter().filter(|b| **b == b'"').count() >= 2;
    if !complete {
        return None;
    }
    Some(if key == b"type" || key == b"item" { Format::JsonLines } else { Format::Document })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_key_decides() {
        assert_eq!(classify(b"{\"type\":\"channel\",\"item\":{}}\n"), Some(Format::JsonLines));
        assert_eq!(classify(b"  {\n  \"item\": {"), Some(Format::JsonLines));
        assert_eq!(classify(b"{\"channels\":["), Some(Format::Document));
        assert_eq!(classify(b"{\"ty"), None);
        assert_eq!(classify(b"   "), None);
        assert_eq!(classify(b"["), Some(Format::Document));
    }

    #[tokio::test]
    async fn sniffing_gives_every_byte_back() {
        let chunks = ["{\"ty", "pe\":\"user\",\"item\":{}}\n", "{\"type\":\"user\",\"item\":{}}\n"];
        let body = futures::stream::iter(chunks.map(|c| Ok(Bytes::from_static(c.as_bytes()))));
        let (format, stream) = sniff(body).await.unwrap();
        assert_eq!(format, Format::JsonLines);
        let all: Vec<Bytes> = stream.map(Result::unwrap).collect().await;
        assert_eq!(all.concat(), chunks.concat().as_bytes());
    }
}
