//! The RPCs of `streamexport.v1.ExportService`, each named once.
//!
//! [`Rpc::name`] is the one spelling of an RPC's name inside the service: the Cedar action id
//! (`Action::"ExportChannels"` in `policy/stream-export.cedarschema`), the `rpc` field of audit
//! events and of task records, and the RPC part of idempotency keys and fingerprints. Those
//! strings outlive the process (in policy files, logs, and stored idempotency records and task
//! records), so a name never changes once shipped: it is the proto method's name.

/// One RPC of `ExportService`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rpc {
    /// Submits an export of channels: one task.
    ExportChannels,
    /// Submits an export of users: one task.
    ExportUsers,
    /// Exports one user's data at once (no task).
    ExportUser,
    /// Reads a task's state.
    GetTask,
    /// Streams a task's changes.
    WatchTask,
    /// Streams a completed task's records.
    ReadExport,
    /// Pages through the tasks submitted here.
    ListTasks,
    /// Starts an export job.
    CreateExportJob,
    /// Reads an export job.
    GetExportJob,
    /// Pages through export jobs.
    ListExportJobs,
    /// Cancels an export job.
    CancelExportJob,
    /// Streams an export job's progress.
    WatchExportJob,
    /// Pages through an export job's shards.
    ListExportJobTasks,
    /// Checks an archived job's objects against its manifest.
    VerifyExportJob,
    /// Creates an export schedule.
    CreateExportSchedule,
    /// Reads an export schedule.
    GetExportSchedule,
    /// Pages through export schedules.
    ListExportSchedules,
    /// Changes an export schedule (pause, resume, its template or timing).
    UpdateExportSchedule,
    /// Deletes an export schedule.
    DeleteExportSchedule,
}

impl Rpc {
    /// Every RPC, in the proto's order.
    pub const ALL: [Self; 19] = [
        Self::ExportChannels,
        Self::ExportUsers,
        Self::ExportUser,
        Self::GetTask,
        Self::WatchTask,
        Self::ReadExport,
        Self::ListTasks,
        Self::CreateExportJob,
        Self::GetExportJob,
        Self::ListExportJobs,
        Self::CancelExportJob,
        Self::WatchExportJob,
        Self::ListExportJobTasks,
        Self::VerifyExportJob,
        Self::CreateExportSchedule,
        Self::GetExportSchedule,
        Self::ListExportSchedules,
        Self::UpdateExportSchedule,
        Self::DeleteExportSchedule,
    ];

    /// The RPCs that submit a task, which the task registry records (a record's `rpc`).
    pub const SUBMITS: [Self; 2] = [Self::ExportChannels, Self::ExportUsers];

    /// The proto method's name: also the Cedar action id, the audit `rpc` value and the RPC
    /// part of idempotency keys and fingerprints.
    pub fn name(self) -> &'static str {
        match self {
            Self::ExportChannels => "ExportChannels",
            Self::ExportUsers => "ExportUsers",
            Self::ExportUser => "ExportUser",
            Self::GetTask => "GetTask",
            Self::WatchTask => "WatchTask",
            Self::ReadExport => "ReadExport",
            Self::ListTasks => "ListTasks",
            Self::CreateExportJob => "CreateExportJob",
            Self::GetExportJob => "GetExportJob",
            Self::ListExportJobs => "ListExportJobs",
            Self::CancelExportJob => "CancelExportJob",
            Self::WatchExportJob => "WatchExportJob",
            Self::ListExportJobTasks => "ListExportJobTasks",
            Self::VerifyExportJob => "VerifyExportJob",
            Self::CreateExportSchedule => "CreateExportSchedule",
            Self::GetExportSchedule => "GetExportSchedule",
            Self::ListExportSchedules => "ListExportSchedules",
            Self::UpdateExportSchedule => "UpdateExportSchedule",
            Self::DeleteExportSchedule => "DeleteExportSchedule",
        }
    }
}

impl std::fmt::Display for Rpc {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use prost::Message;

    use super::*;

    /// The names as the proto declares the service's methods.
    fn proto_methods() -> BTreeSet<String> {
        let set = prost_types::FileDescriptorSet::decode(crate::proto::FILE_DESCRIPTOR_SET).expect("descriptors");
        set.file
            .iter()
            .filter(|file| file.package() == "streamexport.v1")
            .flat_map(|file| &file.service)
            .filter(|service| service.name() == "ExportService")
            .flat_map(|service| &service.method)
            .map(|method| method.name().to_owned())
            .collect()
    }

    #[test]
    fn every_rpc_of_the_proto_has_one_variant_named_as_the_proto_names_it() {
        let named: BTreeSet<String> = Rpc::ALL.iter().map(|rpc| rpc.name().to_owned()).collect();
        assert_eq!(named.len(), Rpc::ALL.len(), "two variants share a name");
        assert_eq!(named, proto_methods());
    }
}
