//! Export jobs and schedules in memory (by choice: a restart forgets), under one lock, so that
//! a schedule's fire creates its window's job and moves its cursor together.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
};

use super::{
    StoreError,
    jobs::{Created, FINISHED_JOBS_KEPT, JobCursor, JobRecord, JobStore, ShardRecord, merge, micros, request_id},
    schedules::{ScheduleCreated, ScheduleRecord, ScheduleStore},
};
use crate::{
    contract::job::request_summary,
    proto::{CreateExportJobRequest, ExportJob},
};

/// The [`JobStore`] of a process that keeps its state in memory (by choice: a restart forgets).
#[derive(Debug, Default)]
pub struct MemoryJobStore {
    state: Mutex<MemoryJobs>,
}

#[derive(Debug, Default)]
struct MemoryJobs {
    jobs: HashMap<String, JobRecord>,
    by_time: BTreeSet<(i64, String)>,
    /// The finished jobs, by create time: the oldest go first past [`FINISHED_JOBS_KEPT`].
    finished: BTreeSet<(i64, String)>,
    shards: HashMap<String, BTreeMap<u32, ShardRecord>>,
    requests: HashMap<(String, String), String>,
    bodies: HashMap<String, CreateExportJobRequest>,
    /// The export schedules, here so that a window's job and its schedule's cursor are
    /// written under one lock.
    schedules: MemorySchedules,
}

impl MemoryJobStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryJobs> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MemoryJobs {
    fn create(&mut self, mut record: JobRecord) -> Created {
        let whole = record.job.request.take().unwrap_or_default();
        record.job.request = Some(request_summary(&whole));
        let request_id = request_id(&record.job).to_owned();
        if !request_id.is_empty() {
            let key = (record.job.owner.clone(), request_id);
            if let Some(existing) = self.requests.get(&key).and_then(|job_id| self.jobs.get(job_id)) {
                return Created::Existing(existing.clone());
            }
            self.requests.insert(key, record.job.job_id.clone());
        }
        let at = (micros(record.job.create_time.as_ref()), record.job.job_id.clone());
        if record.job.state().is_terminal() {
            self.finished.insert(at.clone());
        }
        self.by_time.insert(at);
        self.jobs.insert(record.job.job_id.clone(), record.clone());
        self.bodies.insert(record.job.job_id.clone(), whole);
        self.trim();
        Created::New(record)
    }

    fn write(&mut self, job: ExportJob) -> Result<ExportJob, StoreError> {
        let record = self.jobs.get_mut(&job.job_id).ok_or_else(|| gone(&job.job_id))?;
        record.job = merge(&record.job, job);
        if record.job.state().is_terminal() {
            self.finished.insert((micros(record.job.create_time.as_ref()), record.job.job_id.clone()));
        }
        Ok(record.job.clone())
    }

    /// Drops the oldest finished jobs past [`FINISHED_JOBS_KEPT`].
    fn trim(&mut self) {
        while self.finished.len() > FINISHED_JOBS_KEPT {
            let Some((at, job_id)) = self.finished.pop_first() else { break };
            self.forget(at, &job_id);
        }
    }

    fn forget(&mut self, at: i64, job_id: &str) {
        if let Some(record) = self.jobs.remove(job_id) {
            let request_id = &record.job.request.as_ref().map(|request| request.request_id.clone()).unwrap_or_default();
            self.requests.remove(&(record.job.owner.clone(), request_id.clone()));
        }
        self.by_time.remove(&(at, job_id.to_owned()));
        self.finished.remove(&(at, job_id.to_owned()));
        self.shards.remove(job_id);
        self.bodies.remove(job_id);
    }
}

/// A write to a job that is no longer kept.
fn gone(job_id: &str) -> StoreError {
    StoreError::Unavailable(super::Unavailable(format!("the job {job_id} is no longer kept")))
}

#[tonic::async_trait]
impl JobStore for MemoryJobStore {
    async fn create(&self, record: JobRecord) -> Result<Created, StoreError> {
        Ok(self.lock().create(record))
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.lock().jobs.get(job_id).cloned())
    }

    async fn request(&self, job_id: &str) -> Result<Option<CreateExportJobRequest>, StoreError> {
        Ok(self.lock().bodies.get(job_id).cloned())
    }

    async fn update(&self, job: ExportJob) -> Result<ExportJob, StoreError> {
        self.lock().write(job)
    }

    async fn plan(&self, job: ExportJob, shards: Arc<Vec<ShardRecord>>) -> Result<ExportJob, StoreError> {
        let mut state = self.lock();
        let job_id = job.job_id.clone();
        let written = state.write(job)?;
        state.shards.insert(job_id, shards.iter().map(|shard| (shard.task.shard, shard.clone())).collect());
        Ok(written)
    }

    async fn update_shard(&self, job: ExportJob, shard: ShardRecord) -> Result<ExportJob, StoreError> {
        let mut state = self.lock();
        let job_id = job.job_id.clone();
        let written = state.write(job)?;
        state.shards.entry(job_id).or_default().insert(shard.task.shard, shard);
        Ok(written)
    }

    async fn shards(&self, job_id: &str, from: u32, limit: usize) -> Result<Vec<ShardRecord>, StoreError> {
        let state = self.lock();
        let Some(shards) = state.shards.get(job_id) else { return Ok(Vec::new()) };
        Ok(shards.range(from..).take(limit).map(|(_, shard)| shard.clone()).collect())
    }

    async fn page(
        &self,
        owner: Option<&str>,
        after: Option<&JobCursor>,
        limit: usize,
    ) -> Result<Vec<ExportJob>, StoreError> {
        let state = self.lock();
        let upper = after.map_or((i64::MAX, String::new()), |at| (at.created_micros, at.job_id.clone()));
        let jobs = state
            .by_time
            .iter()
            .rev()
            .filter(|key| after.is_none() || **key < upper)
            .filter_map(|(_, job_id)| state.jobs.get(job_id))
            .filter(|record| owner.is_none_or(|owner| record.job.owner == owner))
            .take(limit)
            .map(|record| record.job.clone())
            .collect();
        Ok(jobs)
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let state = self.lock();
        let records = state
            .by_time
            .iter()
            .filter_map(|(_, job_id)| state.jobs.get(job_id))
            .filter(|record| !record.job.state().is_terminal())
            .cloned()
            .collect();
        Ok(records)
    }
}

/// The schedules of a [`MemoryJobStore`].
#[derive(Debug, Default)]
struct MemorySchedules {
    records: HashMap<String, ScheduleRecord>,
    requests: HashMap<(String, String), String>,
}

impl MemorySchedules {
    /// Writes `record` over a stored one of the same revision, bumping it.
    fn replace(&mut self, mut record: ScheduleRecord) -> Option<ScheduleRecord> {
        let stored = self.records.get_mut(&record.schedule.schedule_id)?;
        if stored.revision != record.revision {
            return None;
        }
        record.revision += 1;
        *stored = record.clone();
        Some(record)
    }
}

#[tonic::async_trait]
impl ScheduleStore for MemoryJobStore {
    async fn create_schedule(&self, record: ScheduleRecord) -> Result<ScheduleCreated, StoreError> {
        let mut state = self.lock();
        let schedules = &mut state.schedules;
        if !record.request_id.is_empty() {
            let key = (record.schedule.owner.clone(), record.request_id.clone());
            if let Some(existing) = schedules.requests.get(&key).and_then(|id| schedules.records.get(id)) {
                return Ok(ScheduleCreated::Existing(existing.clone()));
            }
            schedules.requests.insert(key, record.schedule.schedule_id.clone());
        }
        schedules.records.insert(record.schedule.schedule_id.clone(), record.clone());
        Ok(ScheduleCreated::New(record))
    }

    async fn schedule(&self, schedule_id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        Ok(self.lock().schedules.records.get(schedule_id).cloned())
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        Ok(self.lock().schedules.records.values().cloned().collect())
    }

    async fn replace_schedule(&self, record: ScheduleRecord) -> Result<Option<ScheduleRecord>, StoreError> {
        Ok(self.lock().schedules.replace(record))
    }

    async fn fire(
        &self,
        record: ScheduleRecord,
        job: JobRecord,
    ) -> Result<Option<(ScheduleRecord, Created)>, StoreError> {
        let mut state = self.lock();
        let Some(written) = state.schedules.replace(record) else { return Ok(None) };
        let created = state.create(job);
        Ok(Some((written, created)))
    }

    async fn delete_schedule(&self, schedule_id: &str) -> Result<bool, StoreError> {
        let mut state = self.lock();
        let Some(record) = state.schedules.records.remove(schedule_id) else { return Ok(false) };
        state.schedules.requests.remove(&(record.schedule.owner, record.request_id));
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_keeps_the_job_contract() {
        crate::store::jobs::tests::keeps_the_contract(&MemoryJobStore::default()).await;
    }

    #[tokio::test]
    async fn the_memory_store_keeps_the_schedule_contract() {
        crate::store::schedules::tests::keeps_the_contract(&MemoryJobStore::default()).await;
    }
}
