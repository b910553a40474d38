//! Why a client command did not succeed, its exit code, and how it is reported.

use std::time::Duration;

use serde_json::{Value, json};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::{
    client_cli::render,
    proto::{ExportJob, Task, VerifyExportJobResponse},
};

/// Exit code: the task (or export job) failed or was canceled, or an archive does not match
/// its manifest.
pub const EXIT_FAILED: u8 = 1;
/// Exit code: bad usage (also what clap uses for argument errors).
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the service or upstream is unavailable; trying later may work.
pub const EXIT_UNAVAILABLE: u8 = 3;
/// Exit code: the service refused the request or failed otherwise, or a local file failed.
pub const EXIT_REFUSED: u8 = 4;
/// Exit code: interrupted by Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

/// Why a command did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// Invalid arguments.
    Usage(String),
    /// The service could not be reached.
    Unreachable(String),
    /// A gRPC call ended with an error status; `action` says what was being done.
    Rpc {
        /// What the client was doing, e.g. "submitting the export".
        action: &'static str,
        /// The status.
        status: Status,
        /// What the person should do, in the CLI's own terms (the status speaks of RPCs and
        /// headers); shown after the status's own text.
        advice: Option<String>,
    },
    /// The task ended in FAILED or CANCELED.
    TaskEnded(Box<Task>),
    /// The export job ended in FAILED or CANCELLED.
    JobEnded(Box<ExportJob>),
    /// `job verify` found archived objects missing or different from the job's manifest.
    ArchiveDiffers {
        /// The job.
        job_id: String,
        /// The service's answer, with the mismatches.
        verified: Box<VerifyExportJobResponse>,
    },
    /// A local problem (the output file).
    Local(String),
    /// Ctrl-C; with what goes on upstream and how to pick it up, once a task exists.
    Interrupted(Option<String>),
}

impl Failure {
    /// A gRPC error while doing `action`.
    pub fn rpc(action: &'static str) -> impl FnOnce(Status) -> Failure {
        move |status| {
            let advice = advice(&status);
            Failure::Rpc { action, status, advice }
        }
    }

    /// The same failure with `advice` in place of the generic one.
    pub fn advised(self, advice: String) -> Failure {
        match self {
            Failure::Rpc { action, status, .. } => Failure::Rpc { action, status, advice: Some(advice) },
            other => other,
        }
    }

    /// For a call whose connection to `server` failed: says plainly when the URL's scheme does
    /// not match what the server speaks.
    pub fn explained(self, server: &str) -> Failure {
        let mismatch = match &self {
            Failure::Rpc { status, advice: None, .. } => std::error::Error::source(status)
                .and_then(|source| super::connect::scheme_mismatch(server, &crate::error_chain::one_line(source))),
            _ => None,
        };
        match mismatch {
            Some(advice) => self.advised(advice),
            None => self,
        }
    }

    /// The gRPC status, for a failed call.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Failure::Rpc { status, .. } => Some(status),
            _ => None,
        }
    }

    /// The process exit code; see [`super::EXIT_CODES_HELP`].
    pub fn exit_code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Unreachable(_) => EXIT_UNAVAILABLE,
            Failure::TaskEnded(_) | Failure::JobEnded(_) | Failure::ArchiveDiffers { .. } => EXIT_FAILED,
            Failure::Local(_) => EXIT_REFUSED,
            Failure::Interrupted(_) => EXIT_INTERRUPTED,
            Failure::Rpc { status, .. } => match status.code() {
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Aborted => {
                    EXIT_UNAVAILABLE
                }
                Code::InvalidArgument | Code::OutOfRange => EXIT_USAGE,
                _ => EXIT_REFUSED,
            },
        }
    }

    /// One line for a person.
    pub fn message(&self) -> String {
        match self {
            Failure::Usage(text) | Failure::Unreachable(text) | Failure::Local(text) => text.clone(),
            Failure::Interrupted(None) => "interrupted".into(),
            Failure::Interrupted(Some(next)) => format!("interrupted; {next}"),
            Failure::TaskEnded(task) => {
                let state = render::state_name(task.state());
                match &task.error {
                    Some(error) if !error.description.is_empty() || !error.r#type.is_empty() => {
                        format!("task {} {state}: {} {}", task.task_id, error.r#type, error.description)
                    }
                    _ => format!("task {} {state}", task.task_id),
                }
            }
            Failure::JobEnded(job) => {
                let state = render::job_state_name(job.state());
                match &job.error {
                    Some(error) => format!("job {} {state}: {}", job.job_id, render::job_error_text(error)),
                    None => format!("job {} {state}", job.job_id),
                }
            }
            Failure::ArchiveDiffers { job_id, verified } => format!(
                "job {job_id}: {} of {} archived objects missing or different from the manifest {}",
                verified.mismatches.len(),
                verified.objects_checked,
                verified.manifest_uri
            ),
            Failure::Rpc { action, status, advice } => {
                let mut line = format!("{action}: {}", code_name(status.code()));
                if let Some(reason) = reason(status) {
                    line.push_str(&format!(" ({reason})"));
                }
                // The service's message already summarises its BadRequest violations: each
                // violation is shown once, as `field: problem`, instead of the summary.
                let violations: Vec<String> = status
                    .get_error_details()
                    .bad_request()
                    .map(|bad| bad.field_violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect())
                    .unwrap_or_default();
                if !violations.is_empty() {
                    line.push_str(&format!(": {}", violations.join("; ")));
                } else if let Some(source) = std::error::Error::source(status) {
                    // A failure of the connection, not a status the service sent: its causes.
                    line.push_str(&format!(": {}", crate::error_chain::one_line(source)));
                } else if !status.message().is_empty() {
                    line.push_str(&format!(": {}", status.message()));
                }
                if let Some(advice) = advice {
                    line.push_str(&format!(" ({advice})"));
                }
                line.replace('\n', " ")
            }
        }
    }

    /// The failure as one JSON object (for `--json`).
    pub fn to_json(&self) -> Value {
        let mut value = json!({"event": "error", "exit_code": self.exit_code(), "message": self.message()});
        match self {
            Failure::Rpc { status, .. } => {
                value["code"] = json!(code_name(status.code()));
                value["reason"] = json!(reason(status));
            }
            Failure::TaskEnded(task) => value["task"] = render::task_json(task),
            Failure::JobEnded(job) => value["job"] = render::job_json(job),
            Failure::ArchiveDiffers { job_id, verified } => {
                value["job_id"] = json!(job_id);
                value["verification"] = render::verification_json(verified);
            }
            _ => {}
        }
        value
    }

    /// Prints the failure: one line on stderr, and with `json` also a JSON object on stdout.
    pub fn report(&self, json: bool) {
        if json {
            say!("{}", self.to_json());
        }
        eprintln!("stream-export: {}", self.message());
    }
}

pub use crate::contract::status::code_name;

/// What to do about a status that the person can fix from the command line.
fn advice(status: &Status) -> Option<String> {
    match status.code() {
        Code::Unauthenticated => {
            Some("give the service's bearer token with --token or the STREAM_EXPORT_TOKEN environment variable".into())
        }
        _ => None,
    }
}

/// The `ErrorInfo` reason of a status, if it has one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_error_details().error_info().map(|info| info.reason.clone())
}

/// How long to wait before trying again: the status's `RetryInfo` (at most 10 s), or `fallback`.
pub fn retry_delay(status: &Status, fallback: Duration) -> Duration {
    status
        .get_error_details()
        .retry_info()
        .and_then(|info| info.retry_delay)
        .map_or(fallback, |delay| delay.min(Duration::from_secs(10)))
}
