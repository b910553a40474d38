//! How much of an upstream answer is read. Every API body is read into memory to be decoded, so
//! each is capped by operation: a misbehaving upstream (or anything in front of it) that sends a
//! 400 MB task status costs at most the cap, not 400 MB. A body over its cap is not read on:
//! the connection is dropped with the rest of it.
//!
//! Export files are not read here: they stream through the export parser (`crate::export_file`).

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;

use super::error::Operation;

/// Most bytes of a task status or a submit's answer (a few hundred bytes in practice).
pub const MAX_TASK_BODY_BYTES: usize = 1024 * 1024;

/// Most bytes of a synchronous user export. Stream refuses users with more than 10,000 messages;
/// the emulator's largest allowed user (9,999 messages) is about 4 MB, real messages with
/// attachments and custom data can be several times larger.
pub const MAX_USER_EXPORT_BODY_BYTES: usize = 32 * 1024 * 1024;

/// Most bytes of an error body (Stream's error document; a proxy's page). Larger than a task
/// body so that a large but genuine 400 with many field errors is still read and mapped.
pub const MAX_ERROR_BODY_BYTES: usize = 2 * 1024 * 1024;

impl Operation {
    /// The most bytes of a successful answer to this operation that are read.
    pub fn max_body_bytes(self) -> usize {
        match self {
            Operation::ExportUser => MAX_USER_EXPORT_BODY_BYTES,
            Operation::ExportChannels
            | Operation::ExportUsers
            | Operation::GetTask
            | Operation::Download
            | Operation::QueryChannels => MAX_TASK_BODY_BYTES,
        }
    }
}

/// A body that did not fit its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// The cap it exceeded.
    pub limit: usize,
}

/// Reads a `body` chunk by chunk, up to `limit` bytes. A declared length (`Content-Length`)
/// over the cap fails before any byte is read; otherwise reading stops at the first chunk that
/// crosses it. A body of one chunk (the usual task status) is returned without a copy.
pub async fn read_capped<B>(mut body: B, limit: usize) -> Result<Result<Bytes, OverCap>, B::Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let declared = body.size_hint().exact().and_then(|length| usize::try_from(length).ok());
    if declared.is_some_and(|length| length > limit) {
        return Ok(Err(OverCap { limit }));
    }
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut length = 0;
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame?.into_data() else { continue };
        length += chunk.len();
        if length > limit {
            return Ok(Err(OverCap { limit }));
        }
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(previous)) => {
                let mut buffer = BytesMut::with_capacity(declared.unwrap_or(0).max(length).min(limit));
                buffer.extend_from_slice(&previous);
                buffer.extend_from_slice(&chunk);
                joined = Some(buffer);
            }
        }
    }
    Ok(Ok(joined.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze)))
}
