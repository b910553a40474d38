//! The call-limit groups: unary calls, and ReadExport streams, into [`CallLimits`] (whose
//! `Default`, with [`ReadLimits`]', holds every default).

use super::{ConfigError, FlagDuration, positive_counts, positive_durations};
use crate::{export_file::ReadLimits, service::CallLimits};

/// Flags of the limits on unary calls.
#[derive(clap::Args, Debug)]
pub struct CallArgs {
    /// Most unary calls handled at once; past it, calls are shed at once with RESOURCE_EXHAUSTED.
    #[arg(long, env = "STREAM_EXPORT_MAX_IN_FLIGHT", default_value_t = CallLimits::default().max_in_flight)]
    pub max_in_flight: usize,

    /// The longest a unary call may take, whatever deadline the caller sent.
    #[arg(long, env = "STREAM_EXPORT_UNARY_TIMEOUT", default_value_t = FlagDuration(CallLimits::default().unary_timeout))]
    pub unary_timeout: FlagDuration,
}

/// Flags of the limits on ReadExport streams.
#[derive(clap::Args, Debug)]
pub struct ReadArgs {
    /// ReadExport: most streams reading an export at once; past it, RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "STREAM_EXPORT_MAX_READ_STREAMS", default_value_t = ReadLimits::default().max_streams)]
    pub max_read_streams: usize,

    /// ReadExport: the longest one stream reads before it ends with UNAVAILABLE and `next_index`.
    #[arg(long, env = "STREAM_EXPORT_READ_MAX_LIFETIME", default_value_t = FlagDuration(ReadLimits::default().max_lifetime))]
    pub read_max_lifetime: FlagDuration,

    /// ReadExport: how long a stream waits for a client that stopped reading before it ends
    /// with UNAVAILABLE and `next_index`.
    #[arg(long, env = "STREAM_EXPORT_READ_IDLE_TIMEOUT", default_value_t = FlagDuration(ReadLimits::default().idle_timeout))]
    pub read_idle_timeout: FlagDuration,

    /// ReadExport: the longest V2 line or V1 entity read, in bytes; a longer one ends the
    /// stream with DATA_LOSS instead of being buffered.
    #[arg(long, env = "STREAM_EXPORT_MAX_EXPORT_ENTITY_BYTES", default_value_t = ReadLimits::default().max_entity_bytes)]
    pub max_export_entity_bytes: usize,

    /// ReadExport: the largest export file read, in bytes; past it, the stream ends with DATA_LOSS.
    #[arg(long, env = "STREAM_EXPORT_MAX_EXPORT_FILE_BYTES", default_value_t = ReadLimits::default().max_file_bytes)]
    pub max_export_file_bytes: u64,
}

impl CallArgs {
    /// Rejects limits that would refuse every call.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_durations(&[(self.unary_timeout, "STREAM_EXPORT_UNARY_TIMEOUT (--unary-timeout)")])?;
        positive_counts(&[(self.max_in_flight as u64, "STREAM_EXPORT_MAX_IN_FLIGHT (--max-in-flight)")])
    }

    /// The limits of calls, with `reads` for ReadExport.
    pub(super) fn into_limits(self, reads: ReadLimits) -> CallLimits {
        CallLimits {
            max_in_flight: self.max_in_flight,
            unary_timeout: self.unary_timeout.0,
            reads,
            ..CallLimits::default()
        }
    }
}

impl ReadArgs {
    /// Rejects limits that would end every read.
    pub(super) fn check(&self) -> Result<(), ConfigError> {
        positive_durations(&[
            (self.read_max_lifetime, "STREAM_EXPORT_READ_MAX_LIFETIME (--read-max-lifetime)"),
            (self.read_idle_timeout, "STREAM_EXPORT_READ_IDLE_TIMEOUT (--read-idle-timeout)"),
        ])?;
        positive_counts(&[
            (self.max_read_streams as u64, "STREAM_EXPORT_MAX_READ_STREAMS (--max-read-streams)"),
            (self.max_export_entity_bytes as u64, "STREAM_EXPORT_MAX_EXPORT_ENTITY_BYTES (--max-export-entity-bytes)"),
            (self.max_export_file_bytes, "STREAM_EXPORT_MAX_EXPORT_FILE_BYTES (--max-export-file-bytes)"),
        ])
    }

    pub(super) fn into_limits(self) -> ReadLimits {
        ReadLimits {
            max_streams: self.max_read_streams,
            max_lifetime: self.read_max_lifetime.0,
            idle_timeout: self.read_idle_timeout.0,
            max_entity_bytes: self.max_export_entity_bytes,
            max_file_bytes: self.max_export_file_bytes,
        }
    }
}
