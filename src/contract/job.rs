//! The export job model: what the contract's `ExportJob` means beyond its fields.

use prost::Message;
use tonic::Status;

use super::proto::{CreateExportJobRequest, ExportJob, ExportJobState, create_export_job_request::Selector};

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

/// A job's request without its lists of channels and users (which may be 100,000 long), as
/// stored with the job's state and shown by `ListExportJobs` and `WatchExportJob`; the whole
/// request is kept apart and shown by `GetExportJob` and `CreateExportJob`.
pub fn request_summary(request: &CreateExportJobRequest) -> CreateExportJobRequest {
    let mut summary = request.clone();
    match &mut summary.selector {
        Some(Selector::Channels(list)) => list.channels = Vec::new(),
        Some(Selector::Users(list)) => list.user_ids = Vec::new(),
        Some(Selector::ChannelQuery(_)) | None => {}
    }
    summary
}
