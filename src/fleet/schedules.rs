//! Export schedules in a fleet: the `store::schedules::ScheduleStore` in Redis, under the jobs'
//! hash tag, so that a window's fire moves the schedule's cursor and creates its job in one
//! script (atomic on a Redis Cluster too).
//!
//! Keys: `schedules` (schedule id → the record, protobuf), `schedule_revisions` (schedule id →
//! its revision, which the scripts compare, since Lua does not read protobuf; always the
//! record's own `revision`, which each write sets) and `schedule_requests` (`<owner>\n<request
//! id>` → schedule id).

use std::sync::LazyLock;

use prost::Message;

use super::{
    jobs::{CREATE_JOB_LUA, RedisJobStore, created_from},
    script::FleetScript,
};
use crate::store::{
    StoreError, Unavailable,
    jobs::{Created, JobRecord},
    schedules::{ScheduleCreated, ScheduleRecord, ScheduleStore},
};

/// Stores a schedule unless its owner's `request_id` names one already (then returns that
/// one's record).
static CREATE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA schedules.create",
        r"
if ARGV[3] ~= '' then
  local existing = redis.call('HGET', KEYS[3], ARGV[3])
  if existing then
    local record = redis.call('HGET', KEYS[1], existing)
    if record then return {0, record} end
  end
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], '0')
return {1, ARGV[2]}
",
    )
});

/// The revision check of a write: the stored revision must be the one the writer read.
const REVISION_LUA: &str = r"
local function replace(K, A)
  local revision = redis.call('HGET', K[2], A[1])
  if not revision or revision ~= A[2] then return false end
  redis.call('HSET', K[1], A[1], A[3])
  redis.call('HSET', K[2], A[1], tostring(tonumber(A[2]) + 1))
  return true
end
";

/// Writes a schedule over the revision it was read at: `1` written, `0` refused.
static REPLACE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA schedules.replace",
        &format!("{REVISION_LUA}\nif replace(KEYS, ARGV) then return 1 end return 0"),
    )
});

/// A window's fire: the schedule written over the revision it was read at (keys 9 and 10,
/// arguments 8 to 10), and only then its job created (keys 1 to 8, arguments 1 to 7, as
/// `fleet::jobs::CREATE_JOB_LUA`). `{-1}` when refused: nothing is written.
static FIRE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA schedules.fire",
        &format!(
            "{REVISION_LUA}\n{CREATE_JOB_LUA}
if not replace({{KEYS[9], KEYS[10]}}, {{ARGV[8], ARGV[9], ARGV[10]}}) then return {{-1}} end
return create_job(KEYS, ARGV)"
        ),
    )
});

/// Forgets a schedule: `1` if it was kept.
static DELETE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA schedules.delete",
        r"
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('HDEL', KEYS[3], ARGV[2]) end
return 1
",
    )
});

/// One schedule's record (`HGET`), empty when none.
static ONE: LazyLock<FleetScript> =
    LazyLock::new(|| FleetScript::new("EVALSHA schedules.read", "return redis.call('HGET', KEYS[1], ARGV[1]) or ''"));

/// Every schedule's record (`HVALS`).
static ALL: LazyLock<FleetScript> =
    LazyLock::new(|| FleetScript::new("EVALSHA schedules.all", "return redis.call('HVALS', KEYS[1])"));

impl RedisJobStore {
    fn schedule_keys(&self) -> [String; 3] {
        [self.key("schedules"), self.key("schedule_revisions"), self.key("schedule_requests")]
    }
}

/// The idempotency field of a create (`<owner>\n<request id>`), empty without a request id.
fn request_field(record: &ScheduleRecord) -> String {
    match record.request_id.as_str() {
        "" => String::new(),
        request_id => format!("{}\n{request_id}", record.schedule.owner),
    }
}

/// A stored record that does not decode: the store cannot be read.
fn unreadable(schedule_id: &str) -> StoreError {
    StoreError::Unavailable(Unavailable(format!("the schedule {schedule_id} cannot be read")))
}

#[tonic::async_trait]
impl ScheduleStore for RedisJobStore {
    async fn create_schedule(&self, record: ScheduleRecord) -> Result<ScheduleCreated, StoreError> {
        let [records, revisions, requests] = self.schedule_keys();
        let id = record.schedule.schedule_id.clone();
        let create = CREATE
            .call()
            .key(records)
            .key(revisions)
            .key(requests)
            .arg(&id)
            .arg(ScheduleRecord { revision: 0, ..record.clone() }.encode_to_vec())
            .arg(request_field(&record));
        let (created, stored): (i64, Vec<u8>) = create.run(self.redis()).await?;
        let stored = ScheduleRecord::decode(stored.as_slice()).map_err(|_| unreadable(&id))?;
        Ok(if created == 1 { ScheduleCreated::New(stored) } else { ScheduleCreated::Existing(stored) })
    }

    async fn schedule(&self, schedule_id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let [records, _, _] = self.schedule_keys();
        let bytes: Vec<u8> = ONE.call().key(records).arg(schedule_id).run(self.redis()).await?;
        if bytes.is_empty() {
            return Ok(None);
        }
        ScheduleRecord::decode(bytes.as_slice()).map(Some).map_err(|_| unreadable(schedule_id))
    }

    async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let [records, _, _] = self.schedule_keys();
        let all: Vec<Vec<u8>> = ALL.call().key(records).quiet().run(self.redis()).await?;
        Ok(all.iter().filter_map(|bytes| ScheduleRecord::decode(bytes.as_slice()).ok()).collect())
    }

    async fn replace_schedule(&self, record: ScheduleRecord) -> Result<Option<ScheduleRecord>, StoreError> {
        let [records, revisions, _] = self.schedule_keys();
        let written = ScheduleRecord { revision: record.revision + 1, ..record.clone() };
        let replace = REPLACE
            .call()
            .key(records)
            .key(revisions)
            .arg(&record.schedule.schedule_id)
            .arg(record.revision.to_string())
            .arg(written.encode_to_vec());
        let replaced: i64 = replace.run(self.redis()).await?;
        Ok((replaced == 1).then_some(written))
    }

    async fn fire(
        &self,
        record: ScheduleRecord,
        job: JobRecord,
    ) -> Result<Option<(ScheduleRecord, Created)>, StoreError> {
        let [records, revisions, _] = self.schedule_keys();
        let written = ScheduleRecord { revision: record.revision + 1, ..record.clone() };
        let job_id = job.job.job_id.clone();
        let fire = self
            .creating(&FIRE, job)
            .key(records)
            .key(revisions)
            .arg(&record.schedule.schedule_id)
            .arg(record.revision.to_string())
            .arg(written.encode_to_vec());
        let answer: Vec<redis::Value> = fire.run(self.redis()).await?;
        match answer.as_slice() {
            [redis::Value::Int(-1)] => Ok(None),
            [redis::Value::Int(created), redis::Value::BulkString(stored)] => {
                let created = created_from(*created, stored).ok_or_else(|| unreadable(&job_id))?;
                Ok(Some((written, created)))
            }
            _ => Err(unreadable(&record.schedule.schedule_id)),
        }
    }

    async fn delete_schedule(&self, schedule_id: &str) -> Result<bool, StoreError> {
        let Some(record) = self.schedule(schedule_id).await? else { return Ok(false) };
        let [records, revisions, requests] = self.schedule_keys();
        let delete =
            DELETE.call().key(records).key(revisions).key(requests).arg(schedule_id).arg(request_field(&record));
        let deleted: i64 = delete.run(self.redis()).await?;
        Ok(deleted == 1)
    }
}
