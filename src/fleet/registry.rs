//! The task registry of a fleet, in Redis: any replica knows every task's owner.
//!
//! Two keys under one hash tag: `index`, a sorted set whose members are
//! `<create time in µs, 20 digits>|<task id>` (all with score 0, so that their lexical order is
//! the time order and a page is one `ZREVRANGEBYLEX`), and `records`, a hash from task id to the
//! record (protobuf). Recording trims records past the retention and the capacity, oldest first.
//! Per owner, a third key, `owner:<digest>`, indexes that owner's members the same way; it is
//! trimmed by the retention only, and a page skips members whose record went past the capacity.

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

/// Adds a record unless the task has one; drops those past the retention or the capacity.
static RECORD: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA registry.record",
        r"
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[1])
redis.call('ZREMRANGEBYLEX', KEYS[3], '-', '(' .. ARGV[5])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
local gone = redis.call('ZRANGEBYLEX', KEYS[1], '-', '(' .. ARGV[5], 'LIMIT', 0, 100)
local excess = redis.call('ZCARD', KEYS[1]) - #gone - tonumber(ARGV[4])
if excess > 0 then
  for _, member in ipairs(redis.call('ZRANGE', KEYS[1], #gone, #gone + excess - 1)) do
    table.insert(gone, member)
  end
end
for _, member in ipairs(gone) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], string.sub(member, 22))
end
return 1
",
    )
});

/// Up to `ARGV[2]` records, newest first, below the index member `ARGV[1]` (exclusive bound
/// `(member`, or `+`).
static PAGE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA registry.page",
        r"
local records = {}
for _, member in ipairs(redis.call('ZREVRANGEBYLEX', KEYS[1], ARGV[1], '-', 'LIMIT', 0, tonumber(ARGV[2]))) do
  local record = redis.call('HGET', KEYS[2], string.sub(member, 22))
  if record then table.insert(records, record) end
end
return records
",
    )
});

/// One record, or nothing.
static READ: LazyLock<FleetScript> =
    LazyLock::new(|| FleetScript::new("EVALSHA registry.read", "return redis.call('HGET', KEYS[1], ARGV[1])"));

/// Replaces a record.
static WRITE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new("EVALSHA registry.observed", "return redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])")
});

/// The [`TaskRegistry`] of a fleet, in Redis.
#[derive(Debug)]
pub struct RedisRegistry {
    redis: Redis,
    capacity: usize,
    index: String,
    records: String,
}

impl RedisRegistry {
    /// A registry of at most `capacity` records in `redis`.
    pub fn new(redis: Redis, capacity: usize) -> Self {
        let index = redis.key("registry", "tasks", "index");
        let records = redis.key("registry", "tasks", "records");
        Self { redis, capacity: capacity.max(1), index, records }
    }

    /// The index key of `owner`'s records (a digest: any caller name fits a key).
    fn owner_index(&self, owner: &str) -> String {
        let digest = Sha256::digest(owner.as_bytes());
        self.redis.key("registry", "tasks", &format!("owner:{}", hex::encode(&digest[..16])))
    }

    async fn read(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        let found: Option<Vec<u8>> = READ.call().key(&self.records).arg(task_id).run(&self.redis).await?;
        Ok(found.and_then(|bytes| TaskRecord::decode(bytes.as_slice()).ok()))
    }
}

/// The index member of a position.
fn member(cursor: &Cursor) -> String {
    format!("{:020}|{}", cursor.created_micros.max(0), cursor.task_id)
}

#[tonic::async_trait]
impl TaskRegistry for RedisRegistry {
    async fn record(&self, record: TaskRecord) -> Result<(), StoreError> {
        let cutoff = Cursor { created_micros: (Utc::now() - RETENTION).timestamp_micros(), task_id: String::new() };
        let record_it = RECORD
            .call()
            .key(&self.index)
            .key(&self.records)
            .key(self.owner_index(&record.owner))
            .arg(member(&Cursor::of(&record)))
            .arg(&record.task_id)
            .arg(record.encode_to_vec())
            .arg(self.capacity)
            .arg(member(&cutoff));
        record_it.run::<i64>(&self.redis).await?;
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<TaskRecord>, StoreError> {
        self.read(task_id).await
    }

    async fn observed(&self, task: &Task, at: DateTime<Utc>) -> Result<(), StoreError> {
        // Read, change, write: replicas observing one task at once write states a poll apart.
        let Some(mut record) = self.read(&task.task_id).await? else { return Ok(()) };
        note_observed(&mut record, task, at);
        let write = WRITE.call().key(&self.records).arg(&task.task_id).arg(record.encode_to_vec());
        write.run::<i64>(&self.redis).await?;
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
        let page = PAGE.call().key(index).key(&self.records).arg(below).arg(limit);
        let records: Vec<Vec<u8>> = page.run(&self.redis).await?;
        Ok(records.iter().filter_map(|bytes| TaskRecord::decode(bytes.as_slice()).ok()).collect())
    }
}
