//! The protobuf codec of the gRPC stubs: prost's, with smaller initial buffers.
//!
//! tonic's default codec gives every call an 8 KiB encode buffer, and a server stream keeps it
//! for its whole life: with ten thousand quiet `WatchTask` streams that is 80 MiB of mostly
//! empty buffers. Our messages are small (a `TaskEvent` is a few hundred bytes), so buffers
//! start at 1 KiB and grow only when a message needs it (large `ExportRecord`s do).
//!
//! A message is encoded into room reserved for its whole length at once: prost's own encoder
//! lets the buffer grow as it writes, and a 128 KiB `ExportRecord` batch written into a fresh
//! 1 KiB buffer was copied again at every doubling (half of the service's `memmove` in a
//! ReadExport profile).

use std::marker::PhantomData;

use prost::Message;
use tonic::{
    Status,
    codec::{BufferSettings, Codec, EncodeBuf, Encoder},
};
use tonic_prost::ProstDecoder;

/// The initial size of a call's encode and decode buffers.
pub const INITIAL_BUFFER_BYTES: usize = 1024;

/// How much encoded data a stream gathers before yielding it (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// [`tonic_prost::ProstCodec`] with [`INITIAL_BUFFER_BYTES`] buffers.
#[derive(Debug, Clone, Copy)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}

/// Encodes a message into room reserved for all of it (see the module's documentation).
#[derive(Debug)]
pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf).map_err(|error| Status::internal(format!("encoding a message: {error}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
