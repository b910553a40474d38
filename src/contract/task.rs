//! The task model: what the contract's `Task` means beyond its fields.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::proto::{Task, TaskState};

impl TaskState {
    /// Whether the task has ended (completed, failed or canceled): it changes no more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Canceled)
    }
}

impl Task {
    /// Whether two reads of a task show the same state. The result URL is left out: upstream
    /// re-signs it on every read.
    pub fn same_state(&self, other: &Task) -> bool {
        self.state == other.state
            && self.upstream_status == other.upstream_status
            && self.update_time == other.update_time
            && self.error == other.error
            && self.result.is_some() == other.result.is_some()
    }
}

/// Converts an instant to a protobuf timestamp.
pub fn timestamp(instant: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: instant.timestamp(), nanos: instant.timestamp_subsec_nanos() as i32 }
}
