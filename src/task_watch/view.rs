//! What a task's watchers see: the latest outcome of polling it, which its poller replaces and
//! its watchers only read.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::watch;
use tonic::Status;

use crate::proto::Task;

/// What a task's watchers see. The poller replaces it; watchers only read it, so a slow
/// watcher never slows the poller or another watcher, and always sees the latest state.
#[derive(Clone, Debug)]
pub struct TaskView {
    /// The latest outcome of polling.
    pub observation: Observation,
    /// When upstream was last polled, changed or not.
    pub polled_at: Option<DateTime<Utc>>,
}

impl TaskView {
    /// Nothing observed yet.
    pub fn pending() -> Self {
        Self { observation: Observation::Pending, polled_at: None }
    }

    /// The task, when one has been observed.
    pub fn task(&self) -> Option<&Task> {
        match &self.observation {
            Observation::Task(task) => Some(task),
            _ => None,
        }
    }
}

/// The latest outcome of polling a task.
#[derive(Clone, Debug)]
pub enum Observation {
    /// No poll has answered yet.
    Pending,
    /// The task as last read upstream.
    Task(Box<Task>),
    /// Watching ended with this status (NOT_FOUND, or UNAVAILABLE after the failure budget).
    Ended(Status),
}

/// The sending side of one task's view, shared by the hub (to subscribe) and its poller.
pub type ViewSender = Arc<watch::Sender<TaskView>>;
