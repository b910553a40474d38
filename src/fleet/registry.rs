//! The task registry of a fleet, in Redis: any replica knows every task's owner.
//!
//! Two keys under one hash tag: `index`, a sorted set whose members are
//! `<create time in µs, 20 digits>|<task id>` (all with score 0, so that their lexical order is
//! the time order and a page is one `ZREVRANGEBYLEX`), and `records`, a hash from task id to
//! `<create time, 20 digits>|<the record (protobuf)>`. Recording trims records past the retention
//! and the capacity, oldest first. Per owner, a third key, `owner:<digest>`, indexes that owner's
//! members the same way; it is trimmed by the retention only, and a page skips members whose
//! record went past the capacity. The create time (and so the order of `ListTasks`) and the
//! retention's cut-off are on Redis's clock (`TIME`), not a replica's: replicas whose clocks
//! disagree still list tasks in the order Redis recorded them. (A record written by an earlier
//! version, a bare protobuf, keeps the time its replica gave it.)
//!
//! What pollers observe goes to a fourth key, `observed` (task id → `<observe time in µs, 20
//! digits>|<the task>`), written in one step that keeps the newest observation: replicas that
//! observe one task at once never put an older state over a newer one, nor rewrite a record.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use prost::Message;
use sha2::{Digest, Sha256};

use super::{connection::Redis, script::FleetScript};
use crate::{
    proto::{Task, TaskRecord},
    store::{
        StoreError,
        registry::{Cursor, RETENTION, TaskRegistry, note_observed},
    },
};

/// `registry_record(keys, args)`: adds a record, created now on Redis's clock, unless the task
/// has one; drops those past the retention or the capacity. Keys: the index, the records, the
/// owner's index, the observations; args: the task id, the record, the capacity, the retention
/// (µs). Also used by the submit store's FINISH, which records a task with its `done`.
pub(super) const RECORD_LUA: &str = r"
local function registry_record(keys, args)
  if redis.call('HEXISTS', keys[2], args[1]) == 1 then return 0 end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local created = string.format('%020.0f', now)
  local member = created .. '|' .. args[1]
  local cutoff = string.format('%020.0f|', now - tonumber(args[4]))
  redis.call('ZADD', keys[1], 0, member)
  redis.call('ZADD', keys[3], 0, member)
  redis.call('ZREMRANGEBYLEX', keys[3], '-', '(' .. cutoff)
  redis.call('HSET', keys[2], args[1], created .. '|' .. args[2])
  local gone = redis.call('ZRANGEBYLEX', keys[1], '-', '(' .. cutoff, 'LIMIT', 0, 100)
  local excess = redis.call('ZCARD', keys[1]) - #gone - tonumber(args[3])
  if excess > 0 then
    for _, member in ipairs(redis.call('ZRANGE', keys[1], #gone, #gone + excess - 1)) do
      table.insert(gone, member)
    end
  end
  for _, member in ipairs(gone) do
    redis.call('ZREM', keys[1], member)
    redis.call('HDEL', keys[2], string.sub(member, 22))
    redis.call('HDEL', keys[4], string.sub(member, 22))
  end
  return 1
end
";

/// Adds a record unless the task has one (see [`RECORD_LUA`]).
static RECORD: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new("EVALSHA registry.record", &format!("{RECORD_LUA}return registry_record(KEYS, ARGV)"))
});

/// What [`RECORD_LUA`] needs to record one task: its four keys and four arguments.
pub(super) struct RecordParts {
    pub keys: [String; 4],
    pub args: (String, Vec<u8>, usize, u64),
}

/// Up to `ARGV[2]` records, newest first, below the index member `ARGV[1]` (exclusive bound
/// `(member`, or `+`), each followed by its latest observation (or an empty string).
static PAGE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA registry.page",
        r"
local records = {}
for _, member in ipairs(redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], '-', 'LIMIT', 0, tonumber(ARGV[2]))) do
  local id = string.sub(member, 22)
  local record = redis.call('HGET', KEYS[2], id)
  if record then
    table.insert(records, record)
    table.insert(records, redis.call('HGET', KEYS[3], id) or '')
  end
end
return records
",
    )
});

/// One record and its latest observation (empty strings for none).
static READ: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA registry.read",
        "return {redis.call('HGET', KEYS[1], ARGV[1]) or '', redis.call('HGET', KEYS[2], ARGV[1]) or ''}",
    )
});

/// Notes an observation of a recorded task unless a newer one is noted (`ARGV[2]`: its time,
/// 20 digits, then `|` and the task).
static OBSERVED: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA registry.observed",
        r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
local noted = redis.call('HGET', KEYS[2], ARGV[1])
if noted and string.sub(noted, 1, 20) > string.sub(ARGV[2], 1, 20) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
",
    )
});

/// The [`TaskRegistry`] of a fleet, in Redis.
#[derive(Debug)]
pub struct RedisRegistry {
    redis: Redis,
    capacity: usize,
    index: String,
    records: String,
    observed: String,
}

impl RedisRegistry {
    /// A registry of at most `capacity` records in `redis`.
    pub fn new(redis: Redis, capacity: usize) -> Self {
        let index = redis.key("registry", "tasks", "index");
        let records = redis.key("registry", "tasks", "records");
        let observed = redis.key("registry", "tasks", "observed");
        Self { redis, capacity: capacity.max(1), index, records, observed }
    }

    /// The index key of `owner`'s records (a digest: any caller name fits a key).
    /// The keys and arguments of [`RECORD_LUA`] for `record`.
    pub(super) fn parts_of(&self, record: &TaskRecord) -> RecordParts {
        let retention = u64::try_from(RETENTION.as_micros()).unwrap_or(u64::MAX);
        RecordParts {
            keys: [self.index.clone(), self.records.clone(), self.owner_index(&record.owner), self.observed.clone()],
            args: (record.task_id.clone(), record.encode_to_vec(), self.capacity, retention),
        }
    }

    fn owner_index(&self, owner: &str) -> String {
        let digest = Sha256::digest(owner.as_bytes());
        self.redis.key("registry", "tasks", &format!("owner:{}", hex::encode(&digest[..16])))
    }

    async fn read(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let read = READ.call().key(&self.records).key(&self.observed).arg(task_id);
        let (record, observed): (Vec<u8>, Vec<u8>) = read.run(&self.redis).await?;
        Ok(decode(&record, &observed))
    }
}

/// A stored record (`<create time, 20 digits>|<record>`, or a bare record of an earlier version)
/// with its latest observation (`<time, 20 digits>|<task>`, or empty), if any.
fn decode(stored: &[u8], observed: &[u8]) -> Option<TaskRecord> {
    let (created, record) = match timed(stored) {
        Some((created, record)) => (Some(created), record),
        None => (None, stored),
    };
    let mut record = TaskRecord::decode(record).ok().filter(|record| !record.task_id.is_empty())?;
    if let Some(created) = created {
        record.create_time = Some(crate::contract::task::timestamp(created));
    }
    if let Some((at, task)) = timed(observed)
        && let Ok(task) = Task::decode(task)
    {
        note_observed(&mut record, &task, at);
    }
    Some(record)
}

/// The time (µs since the epoch, [`TIME_DIGITS`] digits) and the bytes of `<time>|<bytes>`;
/// `None` if `stored` does not start so (a record's protobuf starts with a field tag, never a
/// digit).
fn timed(stored: &[u8]) -> Option<(DateTime<Utc>, &[u8])> {
    let (micros, rest) = stored.split_at_checked(TIME_DIGITS)?;
    let rest = rest.strip_prefix(b"|")?;
    let micros = std::str::from_utf8(micros).ok()?.parse().ok()?;
    Some((DateTime::<Utc>::from_timestamp_micros(micros)?, rest))
}

/// The digits of a stored time (µs since the epoch), before its record or task.
const TIME_DIGITS: usize = 20;

/// The index member of a position.
fn member(cursor: &Cursor) -> String {
    format!("{:020}|{}", cursor.created_micros.max(0), cursor.task_id)
}

#[tonic::async_trait]
impl TaskRegistry for RedisRegistry {
    async fn record(&self, record: TaskRecord) -> Result<(), StoreError> {
        let RecordParts { keys: [index, records, owner, observed], args } = self.parts_of(&record);
        let record_it = RECORD.call().key(index).key(records).key(owner).key(observed);
        let record_it = record_it.arg(args.0).arg(args.1).arg(args.2).arg(args.3);
        record_it.run::<i64>(&self.redis).await?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.read(task_id).await
    }

    async fn observed(&self, task: &Task, at: DateTime<Utc>) -> Result<(), StoreError> {
        let mut noted = format!("{:0width$}|", at.timestamp_micros().max(0), width = TIME_DIGITS).into_bytes();
        noted.extend(task.encode_to_vec());
        let observed = OBSERVED.call().key(&self.records).key(&self.observed).arg(&task.task_id).arg(noted);
        observed.run::<i64>(&self.redis).await?;
        Ok(())
    }

    async fn page(&self, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        self.page_of(&self.index, after, limit).await
    }

    async fn page_of_owner(
        &self,
        owner: &str,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        self.page_of(&self.owner_index(owner), after, limit).await
    }
}

impl RedisRegistry {
    /// A page of the index `index`.
    async fn page_of(&self, index: &str, after: Option<&Cursor>, limit: usize) -> Result<Vec<TaskRecord>, StoreError> {
        let below = after.map_or_else(|| "+".to_owned(), |cursor| format!("({}", member(cursor)));
        let page = PAGE.call().key(index).key(&self.records).key(&self.observed).arg(below).arg(limit);
        let records: Vec<Vec<u8>> = page.run(&self.redis).await?;
        Ok(records.chunks(2).filter_map(|pair| decode(&pair[0], pair.get(1).map_or(&[][..], Vec::as_slice))).collect())
    }
}
