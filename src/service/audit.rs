//! The audit log: one event per submit or export, and one per call the policies refuse, under the `audit` tracing target, so that a
//! log pipeline can route it apart (`RUST_LOG=audit=info`).

use tonic::Status;

use super::{caller::Caller, rpc::Rpc};
use crate::telemetry::code_name;

/// What an audited call was about.
pub enum Subject<'a> {
    /// Channel cids (`type:id`).
    Channels(Vec<String>),
    /// User ids.
    Users(&'a [String]),
    /// An export task (ReadExport).
    Task(&'a str),
    /// An export job (CreateExportJob): its id, once created.
    Job(&'a str),
    /// An export schedule (its create, update or delete): its id.
    Schedule(&'a str),
}

/// Records one audited call and its outcome.
pub fn record(caller: &Caller, rpc: Rpc, subject: &Subject<'_>, outcome: Result<&str, &Status>) {
    let (channels, users) = match subject {
        Subject::Channels(cids) => (cids.join(","), String::new()),
        Subject::Users(ids) => (String::new(), ids.join(",")),
        Subject::Task(_) | Subject::Job(_) | Subject::Schedule(_) => (String::new(), String::new()),
    };
    let (id, code) = match outcome {
        Ok(id) => (id, code_name(tonic::Code::Ok)),
        Err(status) => ("", code_name(status.code())),
    };
    let (task_id, job_id, schedule_id) = match subject {
        Subject::Job(_) => ("", id, ""),
        Subject::Schedule(_) => ("", "", id),
        _ => (id, "", ""),
    };
    tracing::info!(
        target: "audit",
        caller = %caller,
        caller_source = ?caller.source,
        rpc = rpc.name(),
        channels,
        users,
        task_id,
        job_id,
        schedule_id,
        code,
        "audit"
    );
}

/// Records a call the authorization policies refused: who, which action, on what.
pub fn refused(caller: &Caller, action: Rpc, resource: &str) {
    tracing::info!(
        target: "audit",
        caller = %caller,
        caller_source = ?caller.source,
        rpc = action.name(),
        resource,
        code = code_name(tonic::Code::PermissionDenied),
        "audit: not authorized"
    );
}
