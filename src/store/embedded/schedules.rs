//! Export schedules of one process, on disk, in the job store's database: a window's job and
//! its schedule's cursor are written in one transaction.
//!
//! Tables: `schedules` (schedule id → the record, protobuf) and `schedule_requests` ((owner,
//! request id) → schedule id) for idempotent creates.

use prost::Message;
use redb::{Durability, ReadableTable, TableDefinition, WriteTransaction};

use super::{jobs::insert_job, write_blocking};
use crate::store::{
    StoreError,
    embedded::EmbeddedJobStore,
    jobs::{Created, JobRecord},
    schedules::{ScheduleCreated, ScheduleRecord, ScheduleStore},
};

const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
const SCHEDULE_REQUESTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("schedule_requests");

fn read_schedule(tx: &WriteTransaction, schedule_id: &str) -> Result<Option<ScheduleRecord>, redb::Error> {
    let table = tx.open_table(SCHEDULES)?;
    let record = table.get(schedule_id)?.and_then(|bytes| ScheduleRecord::decode(bytes.value()).ok());
    Ok(record)
}

/// Writes `record` over a stored one of the same revision, bumping it.
fn replace(tx: &WriteTransaction, mut record: ScheduleRecord) -> Result<Option<ScheduleRecord>, redb::Error> {
    let id = record.schedule.schedule_id.clone();
    let Some(stored) = read_schedule(tx, &id)? else { return Ok(None) };
    if stored.revision != record.revision {
        return Ok(None);
    }
    record.revision += 1;
    tx.open_table(SCHEDULES)?.insert(id.as_str(), record.encode_to_vec().as_slice())?;
    Ok(Some(record))
}

#[tonic::async_trait]
impl ScheduleStore for EmbeddedJobStore {
    async fn create_schedule(&self, record: ScheduleRecord) -> Result<ScheduleCreated, StoreError> {
        write_blocking(&self.db, Durability::Immediate, move |tx| {
            let owner = record.schedule.owner.as_str();
            let id = record.schedule.schedule_id.as_str();
            if !record.request_id.is_empty() {
                let existing = tx
                    .open_table(SCHEDULE_REQUESTS)?
                    .get((owner, record.request_id.as_str()))?
                    .map(|id| id.value().to_owned());
                if let Some(existing) = existing.and_then(|id| read_schedule(tx, &id).transpose()) {
                    return Ok(ScheduleCreated::Existing(existing?));
                }
                tx.open_table(SCHEDULE_REQUESTS)?.insert((owner, record.request_id.as_str()), id)?;
            }
            tx.open_table(SCHEDULES)?.insert(id, record.encode_to_vec().as_slice())?;
            Ok(ScheduleCreated::New(record))
        })
        .await
    }

    async fn schedule(&self, schedule_id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        self.db.read(|tx| {
            let Ok(table) = tx.open_table(SCHEDULES) else { return Ok(None) };
            Ok(table.get(schedule_id)?.and_then(|bytes| ScheduleRecord::decode(bytes.value()).ok()))
        })
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.db.read(|tx| {
            let Ok(table) = tx.open_table(SCHEDULES) else { return Ok(Vec::new()) };
            let mut records = Vec::new();
            for entry in table.iter()? {
                let (_, bytes) = entry?;
                if let Ok(record) = ScheduleRecord::decode(bytes.value()) {
                    records.push(record);
                }
            }
            Ok(records)
        })
    }

    async fn replace_schedule(&self, record: ScheduleRecord) -> Result<Option<ScheduleRecord>, StoreError> {
        write_blocking(&self.db, Durability::Immediate, move |tx| replace(tx, record)).await
    }

    async fn fire(
        &self,
        record: ScheduleRecord,
        job: JobRecord,
    ) -> Result<Option<(ScheduleRecord, Created)>, StoreError> {
        write_blocking(&self.db, Durability::Immediate, move |tx| {
            let Some(written) = replace(tx, record)? else { return Ok(None) };
            Ok(Some((written, insert_job(tx, job)?)))
        })
        .await
    }

    async fn delete_schedule(&self, schedule_id: &str) -> Result<bool, StoreError> {
        let schedule_id = schedule_id.to_owned();
        write_blocking(&self.db, Durability::Immediate, move |tx| {
            let Some(record) = read_schedule(tx, &schedule_id)? else { return Ok(false) };
            tx.open_table(SCHEDULES)?.remove(schedule_id.as_str())?;
            tx.open_table(SCHEDULE_REQUESTS)?.remove((record.schedule.owner.as_str(), record.request_id.as_str()))?;
            Ok(true)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::StateDir;

    #[tokio::test]
    async fn the_embedded_store_keeps_the_contract_and_its_schedules_across_a_reopen() {
        let dir = super::super::tests::scratch("schedules");
        {
            let state = StateDir::open(&dir).unwrap();
            crate::store::schedules::tests::keeps_the_contract(&EmbeddedJobStore::new(state.db())).await;
        }
        let state = StateDir::open(&dir).unwrap();
        let store = EmbeddedJobStore::new(state.db());
        let mut ids: Vec<_> =
            store.schedules().await.unwrap().into_iter().map(|record| record.schedule.schedule_id).collect();
        ids.sort();
        assert_eq!(ids, ["s3", "s4"]);
    }
}
