//! The structure of a JSON document read from an async byte stream: where each value begins and
//! ends, found without parsing it, so that a document of any size is read one entity at a time
//! on the async task (no thread is parked while the client does not read), and an entity longer
//! than its cap is refused before it is buffered.

use bytes::Bytes;
use futures::StreamExt;

use super::{ByteStream, ReadError, io_error};

/// Reads JSON structure from a byte stream, one value at a time.
pub struct Scanner {
    body: ByteStream,
    chunk: Bytes,
    pos: usize,
    max_value_bytes: usize,
}

impl Scanner {
    /// A scanner of `body` that refuses values longer than `max_value_bytes`.
    pub fn new(body: ByteStream, max_value_bytes: usize) -> Self {
        Self { body, chunk: Bytes::new(), pos: 0, max_value_bytes }
    }

    /// Fetches the next chunk; `false` at the end of the stream.
    async fn refill(&mut self) -> Result<bool, ReadError> {
        match self.body.next().await {
            Some(chunk) => {
                self.chunk = chunk.map_err(io_error)?;
                self.pos = 0;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// The next byte that is not whitespace, not consumed; `None` at the end of the stream.
    pub async fn peek(&mut self) -> Result<Option<u8>, ReadError> {
        loop {
            if let Some(offset) = self.chunk[self.pos..].iter().position(|b| !b.is_ascii_whitespace()) {
                self.pos += offset;
                return Ok(Some(self.chunk[self.pos]));
            }
            self.pos = self.chunk.len();
            if !self.refill().await? {
                return Ok(None);
            }
        }
    }

    /// Consumes `expected` (after whitespace), or fails naming what came instead.
    pub async fn expect(&mut self, expected: u8) -> Result<(), ReadError> {
        match self.peek().await? {
            Some(byte) if byte == expected => {
                self.pos += 1;
                Ok(())
            }
            Some(byte) => Err(unexpected(expected, Some(byte))),
            None => Err(unexpected(expected, None)),
        }
    }

    /// After an element of an array or object: consumes `,` (another element follows: `true`)
    /// or `close` (the container ends: `false`).
    pub async fn next_separator(&mut self, close: u8) -> Result<bool, ReadError> {
        match self.peek().await? {
            Some(b',') => {
                self.pos += 1;
                Ok(true)
            }
            Some(byte) if byte == close => {
                self.pos += 1;
                Ok(false)
            }
            other => Err(unexpected(close, other)),
        }
    }

    /// Consumes an empty container's `close` if it comes next (`true`), else nothing.
    pub async fn empty_container(&mut self, close: u8) -> Result<bool, ReadError> {
        if self.peek().await? == Some(close) {
            self.pos += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// The bytes of the next value (at most the cap).
    pub async fn value(&mut self) -> Result<Vec<u8>, ReadError> {
        let mut out = Vec::new();
        self.scan(Some(&mut out)).await?;
        Ok(out)
    }

    /// Passes over the next value without keeping it (scalars are still checked).
    pub async fn skip(&mut self) -> Result<(), ReadError> {
        match self.peek().await? {
            Some(b'{' | b'[' | b'"') => self.scan(None).await,
            _ => {
                let scalar = self.value().await?;
                serde_json::from_slice::<serde::de::IgnoredAny>(&scalar)
                    .map(drop)
                    .map_err(|error| ReadError::Parse(format!("not a JSON value: {error}")))
            }
        }
    }

    /// An object key and the `:` after it.
    pub async fn key(&mut self) -> Result<String, ReadError> {
        if self.peek().await? != Some(b'"') {
            return Err(ReadError::Parse("expected an object key (a string)".into()));
        }
        let bytes = self.value().await?;
        let key =
            serde_json::from_slice(&bytes).map_err(|error| ReadError::Parse(format!("bad object key: {error}")))?;
        self.expect(b':').await?;
        Ok(key)
    }

    /// Consumes one value, copying its bytes into `out` if given.
    async fn scan(&mut self, mut out: Option<&mut Vec<u8>>) -> Result<(), ReadError> {
        let first =
            self.peek().await?.ok_or_else(|| ReadError::Parse("the file ends where a value should be".into()))?;
        let mut state = ValueState::new(first)?;
        loop {
            let rest = &self.chunk[self.pos..];
            let (used, done) = state.feed(rest)?;
            if let Some(out) = out.as_deref_mut() {
                if out.len() + used > self.max_value_bytes {
                    return Err(ReadError::Parse(format!(
                        "an entity is longer than the limit of {} bytes",
                        self.max_value_bytes
                    )));
                }
                out.extend_from_slice(&rest[..used]);
            }
            self.pos += used;
            if done {
                return Ok(());
            }
            if !self.refill().await? {
                return if state.scalar {
                    Ok(())
                } else {
                    Err(ReadError::Parse("the file ends inside a value".into()))
                };
            }
        }
    }
}

fn unexpected(expected: u8, found: Option<u8>) -> ReadError {
    let found = match found {
        Some(byte) if byte.is_ascii_graphic() => format!("`{}`", byte as char),
        Some(byte) => format!("byte 0x{byte:02x}"),
        None => "the end of the file".to_owned(),
    };
    ReadError::Parse(format!("expected `{}`, found {found}", expected as char))
}

/// Where the scan of one value is: nesting, and whether inside a string.
struct ValueState {
    stack: Vec<u8>,
    in_string: bool,
    escaped: bool,
    scalar: bool,
}

impl ValueState {
    fn new(first: u8) -> Result<Self, ReadError> {
        if matches!(first, b',' | b':' | b'}' | b']') {
            return Err(ReadError::Parse(format!("expected a value, found `{}`", first as char)));
        }
        Ok(Self { stack: Vec::new(), in_string: false, escaped: false, scalar: !matches!(first, b'{' | b'[' | b'"') })
    }

    /// Reads `bytes` until the value ends: how many bytes belong to it, and whether it ended.
    fn feed(&mut self, bytes: &[u8]) -> Result<(usize, bool), ReadError> {
        let mut i = 0;
        while i < bytes.len() {
            if self.in_string && !self.escaped {
                // Most of an export is string contents: jump to the next quote or backslash.
                let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[i..]) else {
                    return Ok((bytes.len(), false));
                };
                i += offset;
            }
            let byte = bytes[i];
            i += 1;
            if self.scalar {
                if matches!(byte, b',' | b'}' | b']' | b':') || byte.is_ascii_whitespace() {
                    return Ok((i - 1, true));
                }
                continue;
            }
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if byte == b'\\' {
                    self.escaped = true;
                } else if byte == b'"' {
                    self.in_string = false;
                    if self.stack.is_empty() {
                        return Ok((i, true));
                    }
                }
                continue;
            }
            match byte {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.stack.push(byte),
                b'}' | b']' => {
                    let open = if byte == b'}' { b'{' } else { b'[' };
                    if self.stack.pop() != Some(open) {
                        return Err(ReadError::Parse(format!("unbalanced `{}`", byte as char)));
                    }
                    if self.stack.is_empty() {
                        return Ok((i, true));
                    }
                }
                _ => {}
            }
        }
        Ok((bytes.len(), false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export_file::boxed;

    fn scanner(chunks: &[&'static str], cap: usize) -> Scanner {
        let body =
            futures::stream::iter(chunks.iter().map(|c| Ok(Bytes::from_static(c.as_bytes()))).collect::<Vec<_>>());
        Scanner::new(boxed(body), cap)
    }

    #[tokio::test]
    async fn values_are_found_across_chunk_boundaries() {
        let mut s = scanner(&[" {\"a\\\"}\": [1, {\"b\"", ": \"}]\"}], \"c\": tr", "ue }"], 1024);
        s.expect(b'{').await.unwrap();
        assert_eq!(s.key().await.unwrap(), "a\"}");
        assert_eq!(s.value().await.unwrap(), br#"[1, {"b": "}]"}]"#);
        assert!(s.next_separator(b'}').await.unwrap());
        assert_eq!(s.key().await.unwrap(), "c");
        s.skip().await.unwrap();
        assert!(!s.next_separator(b'}').await.unwrap());
        assert_eq!(s.peek().await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_value_over_the_cap_is_refused() {
        let mut s = scanner(&["[\"0123456789\", \"01", "23456789012345\"]"], 12);
        s.expect(b'[').await.unwrap();
        assert_eq!(s.value().await.unwrap(), b"\"0123456789\"");
        assert!(s.next_separator(b']').await.unwrap());
        let error = s.value().await.unwrap_err();
        assert!(error.to_string().contains("longer than the limit of 12 bytes"), "{error}");
    }

    #[tokio::test]
    async fn a_value_cut_by_the_end_of_the_file_is_an_error() {
        let mut s = scanner(&["{\"a\": [1, 2"], 1024);
        assert!(matches!(s.skip().await, Err(ReadError::Parse(_))));
        let mut s = scanner(&["{\"a\": ]}"], 1024);
        s.expect(b'{').await.unwrap();
        s.key().await.unwrap();
        assert!(matches!(s.skip().await, Err(ReadError::Parse(_))));
    }
}
