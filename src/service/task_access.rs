//! Who may act on a task: the task registry names a task's owner and submit RPC to the
//! policies. Shared by the task reads (GetTask, WatchTask, ListTasks) and ReadExport.

use tonic::Status;

use super::{
    ExportApi,
    authorization::Resource,
    caller::Caller,
    revocation::{Grant, Granted},
    rpc::Rpc,
};
use crate::{contract::status, proto::TaskRecord, store::StoreError};

impl ExportApi {
    /// Refuses `rpc` on a task unless the policies permit it to this caller; the task's owner
    /// and RPC come from the registry (none for a task not submitted here). Returns what was
    /// granted, for a stream to be checked again when the policies are reloaded.
    pub(super) async fn authorize_task(&self, caller: &Caller, rpc: Rpc, task_id: &str) -> Result<Grant, Status> {
        let granted = |record| Grant {
            caller: caller.clone(),
            action: rpc,
            on: Granted::Task { task_id: task_id.to_owned(), record },
        };
        if !self.policies.is_enforced() {
            return Ok(granted(None));
        }
        let record = self.registry.get(task_id).await.map_err(|error| registry_failure(&error))?;
        self.policies.check(caller, rpc, &task_resource(task_id, record.as_ref()))?;
        Ok(granted(record.map(Box::new)))
    }
}

/// The policy resource of a task, with what the registry knows of it.
pub(super) fn task_resource<'a>(task_id: &'a str, record: Option<&'a TaskRecord>) -> Resource<'a> {
    Resource::Task {
        id: task_id,
        owner: record.map(|record| record.owner.as_str()),
        rpc: record.map(|record| record.rpc.as_str()),
    }
}

/// The status of a failed registry call.
pub(super) fn registry_failure(error: &StoreError) -> Status {
    tracing::warn!(%error, "the task registry is unavailable");
    status::task_registry_unavailable()
}
