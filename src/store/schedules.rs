//! Export schedules' state, behind [`ScheduleStore`]: each schedule's record, whose cursor
//! (`next_window_start`) moves in the same transaction as the creation of its window's job
//! ([`ScheduleStore::fire`]). That is what keeps every window to one job across crashes,
//! restarts and replicas: a job exists if and only if the cursor moved past its window.
//!
//! The schedule store is implemented by the job store's own types (in memory in `memory_jobs`,
//! on disk in `embedded`, in Redis in `fleet`), since `fire` writes to both.

use super::{
    StoreError,
    jobs::{Created, JobRecord},
};
use crate::proto::ExportSchedule;

/// A schedule as stored: the contract's `ExportSchedule` and what only the service needs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ScheduleRecord {
    /// The schedule as callers see it.
    #[prost(message, required, tag = "1")]
    pub schedule: ExportSchedule,
    /// How the owner was identified (the policies' `Caller.source`): each window's job is
    /// checked for the owner when it starts.
    #[prost(string, tag = "2")]
    pub owner_source: String,
    /// The create request's fingerprint (hex), which a retried create must match.
    #[prost(string, tag = "3")]
    pub fingerprint: String,
    /// The create request's `request_id` ("" when none).
    #[prost(string, tag = "4")]
    pub request_id: String,
    /// Bumped by every write: a write names the revision it read, and is refused when another
    /// write came first (an update from a caller, or another replica's fire).
    #[prost(uint64, tag = "5")]
    pub revision: u64,
}

/// What [`ScheduleStore::create_schedule`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleCreated {
    /// The schedule is new.
    New(ScheduleRecord),
    /// The owner already created a schedule with this `request_id`: that one, unchanged.
    Existing(ScheduleRecord),
}

/// Where export schedules are kept.
#[tonic::async_trait]
pub trait ScheduleStore: Send + Sync + std::fmt::Debug + 'static {
    /// Stores a new schedule, unless its owner already created one with the same non-empty
    /// `request_id` (then that one is returned, whatever it holds).
    async fn create_schedule(&self, record: ScheduleRecord) -> Result<ScheduleCreated, StoreError>;

    /// A schedule, if it is kept.
    async fn schedule(&self, schedule_id: &str) -> Result<Option<ScheduleRecord>, StoreError>;

    /// Every schedule, in no particular order (they are few: the service caps them).
    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError>;

    /// Writes `record` if the stored schedule's revision is still `record.revision`; the
    /// stored one then has the next revision, and is returned. `None`: another write came
    /// first, or the schedule was deleted (read it again).
    async fn replace_schedule(&self, record: ScheduleRecord) -> Result<Option<ScheduleRecord>, StoreError>;

    /// [`ScheduleStore::replace_schedule`] and [`super::jobs::JobStore::create`] of `job`, in
    /// one transaction: both are written, or neither. `None` as `replace_schedule` (no job is
    /// created then).
    async fn fire(
        &self,
        record: ScheduleRecord,
        job: JobRecord,
    ) -> Result<Option<(ScheduleRecord, Created)>, StoreError>;

    /// Forgets a schedule (its jobs stay); `false` if it was not kept.
    async fn delete_schedule(&self, schedule_id: &str) -> Result<bool, StoreError>;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{
        proto::{CreateExportJobRequest, ExportJob},
        store::jobs::JobStore,
    };

    fn schedule(id: &str, owner: &str, request_id: &str) -> ScheduleRecord {
        ScheduleRecord {
            schedule: ExportSchedule { schedule_id: id.into(), owner: owner.into(), ..Default::default() },
            owner_source: "token".into(),
            fingerprint: "f".into(),
            request_id: request_id.into(),
            revision: 0,
        }
    }

    fn job(id: &str, owner: &str, request_id: &str) -> JobRecord {
        JobRecord {
            job: ExportJob {
                job_id: id.into(),
                owner: owner.into(),
                request: Some(CreateExportJobRequest { request_id: request_id.into(), ..Default::default() }),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// The contract every implementation keeps; `embedded` and the fleet's run it too.
    pub(crate) async fn keeps_the_contract(store: &(impl ScheduleStore + JobStore)) {
        assert!(matches!(store.create_schedule(schedule("s1", "alice", "r1")).await.unwrap(), ScheduleCreated::New(_)));
        let again = store.create_schedule(schedule("s2", "alice", "r1")).await.unwrap();
        assert!(matches!(again, ScheduleCreated::Existing(record) if record.schedule.schedule_id == "s1"));
        assert!(store.schedule("s2").await.unwrap().is_none(), "a repeated create stores nothing");
        store.create_schedule(schedule("s3", "bob", "r1")).await.unwrap();
        let mut ids: Vec<_> =
            store.schedules().await.unwrap().into_iter().map(|record| record.schedule.schedule_id).collect();
        ids.sort();
        assert_eq!(ids, ["s1", "s3"]);

        // A write names the revision it read; the first of two writes wins.
        let read = store.schedule("s1").await.unwrap().unwrap();
        let mut paused = read.clone();
        paused.schedule.paused = true;
        let written = store.replace_schedule(paused.clone()).await.unwrap().expect("first write");
        assert_eq!(written.revision, read.revision + 1);
        assert!(store.replace_schedule(paused).await.unwrap().is_none(), "a stale write is refused");

        // A fire writes the job and moves the cursor together; a stale fire writes neither.
        let mut advanced = written.clone();
        advanced.schedule.windows_started = 1;
        let (fired, created) =
            store.fire(advanced.clone(), job("j1", "alice", "schedule:s1:window:0")).await.unwrap().expect("fired");
        assert_eq!(fired.schedule.windows_started, 1);
        assert!(matches!(created, Created::New(_)));
        assert!(store.get("j1").await.unwrap().is_some());
        assert!(store.fire(advanced, job("j2", "alice", "schedule:s1:window:1")).await.unwrap().is_none());
        assert!(store.get("j2").await.unwrap().is_none(), "a stale fire creates no job");
        let stored = store.schedule("s1").await.unwrap().unwrap();
        assert_eq!((stored.schedule.windows_started, stored.revision), (1, written.revision + 1));

        assert!(store.delete_schedule("s1").await.unwrap());
        assert!(!store.delete_schedule("s1").await.unwrap());
        assert!(store.schedule("s1").await.unwrap().is_none());
        assert!(store.replace_schedule(stored.clone()).await.unwrap().is_none(), "a deleted schedule stays deleted");
        assert!(store.fire(stored, job("j3", "alice", "schedule:s1:window:2")).await.unwrap().is_none());
        assert!(store.get("j1").await.unwrap().is_some(), "its jobs stay");
        let reused = store.create_schedule(schedule("s4", "alice", "r1")).await.unwrap();
        assert!(matches!(reused, ScheduleCreated::New(_)), "a deleted schedule's request_id is free again");
    }
}
