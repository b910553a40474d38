//! The export job model: what the contract's `ExportJob` means beyond its fields.

use prost::Message;
use tonic::Status;

use super::proto::{ExportJob, ExportJobState};

impl ExportJobState {
    /// Whether the job has ended (succeeded, failed or cancelled): it changes no more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl ExportJob {
    /// Whether two reads of a job show the same state and progress (`update_time` aside).
    pub fn same_progress(&self, other: &ExportJob) -> bool {
        self.state == other.state && self.progress == other.progress && self.error == other.error
    }
}

/// A status as `ExportJob.error` holds it: the code, the message and the details (`ErrorInfo`
/// and the rest) exactly as an RPC failing with it would return them.
pub fn status_message(status: &Status) -> tonic_types::pb::Status {
    let mut message = tonic_types::pb::Status::decode(status.details()).unwrap_or_default();
    message.code = status.code() as i32;
    message.message = status.message().to_owned();
    message
}
