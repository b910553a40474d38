//! Export jobs in a fleet: the `store::jobs::JobStore` in Redis, and the lease by which one
//! replica at a time runs each job (`jobs::JobClaims`).
//!
//! Every key sits under one hash tag (`jobs`), so that each script is atomic on a Redis Cluster
//! too: `records` (job id → the record, protobuf), `states` (job id → its `ExportJobState`
//! number, which the scripts read to keep an ended job as it ended and a cancelled one
//! CANCELLING), `bodies` (job id → the whole request, written once), the lexically ordered
//! indexes `index`, `owner:<digest>` and `unfinished` (members `<create time in µs, 20
//! digits>|<job id>`), `finished` (members `<end time>|<job id>`, for the retention),
//! `requests` (`<owner>\n<request id>` → job id) and, per job, `shards:<job id>` (shard
//! number → the shard). A finished job is kept for the retention (60 days, as Stream keeps
//! its files); its shards expire with it.

use std::{
    sync::{Arc, LazyLock},
    time::Duration,
};

use prost::Message;
use sha2::{Digest, Sha256};

use super::{
    connection::Redis,
    lease::{Claimed, Lease},
    script::{FleetScript, ScriptCall},
};
use crate::{
    contract::job::request_summary,
    jobs::JobClaims,
    proto::{CreateExportJobRequest, ExportJob, ExportJobState},
    store::{
        StoreError, Unavailable,
        jobs::{Created, JobCursor, JobRecord, JobStore, ShardRecord, micros, request_id},
        registry::RETENTION,
    },
};

/// Creates a job unless its owner's `request_id` names one already (then returns that one's
/// record); forgets finished jobs past the retention. A job created ended (a schedule's window
/// its owner may not export) goes to `finished` at once. A Lua function of the keys `K` and
/// arguments `A` that [`CREATE`] passes, so that a schedule's fire (`fleet::schedules`) creates
/// its window's job in the script that moves its cursor.
pub(super) const CREATE_JOB_LUA: &str = r"
local function create_job(K, A)
  if A[6] ~= '' then
    local existing = redis.call('HGET', K[7], A[6])
    if existing then
      local record = redis.call('HGET', K[1], existing)
      if record then return {0, record} end
    end
    redis.call('HSET', K[7], A[6], A[1])
  end
  local t = redis.call('TIME')
  local cutoff = string.format('%020.0f|', tonumber(t[1]) * 1000000 + tonumber(t[2]) - tonumber(A[7]))
  for _, member in ipairs(redis.call('ZRANGEBYLEX', K[8], '-', '(' .. cutoff, 'LIMIT', 0, 16)) do
    local id = string.sub(member, 22)
    redis.call('ZREM', K[8], member)
    redis.call('HDEL', K[1], id)
    redis.call('HDEL', K[2], id)
    redis.call('HDEL', K[3], id)
  end
  redis.call('HSET', K[1], A[1], A[3])
  redis.call('HSET', K[2], A[1], A[5])
  redis.call('HSET', K[3], A[1], A[4])
  redis.call('ZADD', K[4], 0, A[2])
  redis.call('ZADD', K[5], 0, A[2])
  local state = tonumber(A[5])
  if state == 3 or state == 4 or state == 6 then
    redis.call('ZADD', K[8], 0, A[2])
  else
    redis.call('ZADD', K[6], 0, A[2])
  end
  return {1, A[3]}
end
";

/// A job's creation ([`CREATE_JOB_LUA`]) alone.
static CREATE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new("EVALSHA jobs.create", &format!("{CREATE_JOB_LUA}\nreturn create_job(KEYS, ARGV)"))
});

/// The state rule of a write (`store::jobs::merge`), then the write of the job, of its shards
/// (`ARGV[7..]`, number and record in turn), and, when it ends, its move to `finished`.
/// Returns `{1}` written, `{2, record}` unchanged (it had ended), `{3}` refused (it is being
/// cancelled: write it CANCELLING), `{0}` gone.
static UPDATE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA jobs.update",
        r"
local function ended(state) return state == 3 or state == 4 or state == 6 end
local stored = redis.call('HGET', KEYS[2], ARGV[1])
if not stored then return {0} end
stored = tonumber(stored)
if ended(stored) then return {2, redis.call('HGET', KEYS[1], ARGV[1])} end
local new = tonumber(ARGV[3])
if stored == 5 and not ended(new) and new ~= 5 then return {3} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
for i = 7, #ARGV, 2 do
  redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1])
end
if ended(new) then
  redis.call('ZREM', KEYS[3], ARGV[4])
  redis.call('ZADD', KEYS[4], 0, ARGV[5])
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
return {1}
",
    )
});

/// Up to `ARGV[2]` records, newest first, below the index member `ARGV[1]` (`(member` or `+`).
static PAGE: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA jobs.page",
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

/// Every unfinished job's record, oldest first.
static UNFINISHED: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA jobs.unfinished",
        r"
local records = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local record = redis.call('HGET', KEYS[2], string.sub(member, 22))
  if record then table.insert(records, record) end
end
return records
",
    )
});

/// One field of one hash (`HGET`), as a script so that every call goes one way.
static FIELD: LazyLock<FleetScript> =
    LazyLock::new(|| FleetScript::new("EVALSHA jobs.read", "return redis.call('HGET', KEYS[1], ARGV[1]) or ''"));

/// Fields of one hash (`HMGET`), missing ones as empty strings.
static FIELDS: LazyLock<FleetScript> = LazyLock::new(|| {
    FleetScript::new(
        "EVALSHA jobs.shards",
        r"
local values = redis.call('HMGET', KEYS[1], unpack(ARGV))
for i, value in ipairs(values) do if not value then values[i] = '' end end
return values
",
    )
});

/// The [`JobStore`] of a fleet, in Redis.
#[derive(Debug)]
pub struct RedisJobStore {
    redis: Redis,
}

impl RedisJobStore {
    /// The jobs kept in `redis`.
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    /// The connection.
    pub(super) fn redis(&self) -> &Redis {
        &self.redis
    }

    /// A key under the jobs' hash tag (a schedule's too: its fire creates a job).
    pub(super) fn key(&self, suffix: &str) -> String {
        self.redis.key("jobs", "jobs", suffix)
    }

    /// A call of `script` with the keys and arguments of [`CREATE_JOB_LUA`] for `record`
    /// first (8 keys, 7 arguments); the caller may add more after them.
    pub(super) fn creating<'a>(&self, script: &'a FleetScript, mut record: JobRecord) -> ScriptCall<'a> {
        let whole = record.job.request.take().unwrap_or_default();
        record.job.request = Some(request_summary(&whole));
        let request_key = match request_id(&record.job) {
            "" => String::new(),
            request_id => format!("{}\n{request_id}", record.job.owner),
        };
        let retention = u64::try_from(RETENTION.as_micros()).unwrap_or(u64::MAX);
        script
            .call()
            .key(self.key("records"))
            .key(self.key("states"))
            .key(self.key("bodies"))
            .key(self.key("index"))
            .key(self.owner_index(&record.job.owner))
            .key(self.key("unfinished"))
            .key(self.key("requests"))
            .key(self.key("finished"))
            .arg(&record.job.job_id)
            .arg(member(&JobCursor::of(&record.job)))
            .arg(record.encode_to_vec())
            .arg(whole.encode_to_vec())
            .arg(record.job.state)
            .arg(request_key)
            .arg(retention)
    }

    fn owner_index(&self, owner: &str) -> String {
        let digest = Sha256::digest(owner.as_bytes());
        self.key(&format!("owner:{}", hex::encode(&digest[..16])))
    }

    fn shards_key(&self, job_id: &str) -> String {
        self.key(&format!("shards:{job_id}"))
    }

    /// Writes `job` (and `shards`) as the state rule allows; returns the job as stored.
    async fn write(&self, mut job: ExportJob, shards: &[ShardRecord]) -> Result<ExportJob, StoreError> {
        let retention = u64::try_from(RETENTION.as_millis()).unwrap_or(u64::MAX);
        // At most twice: a refused write is written again as CANCELLING.
        for _ in 0..2 {
            let stored = self.get(&job.job_id).await?.ok_or_else(|| gone(&job.job_id))?;
            job.request = stored.job.request.clone();
            let record = JobRecord { job: job.clone(), ..stored };
            let end = micros(job.end_time.as_ref()).max(micros(job.update_time.as_ref()));
            let mut update = UPDATE
                .call()
                .key(self.key("records"))
                .key(self.key("states"))
                .key(self.key("unfinished"))
                .key(self.key("finished"))
                .key(self.shards_key(&job.job_id))
                .arg(&job.job_id)
                .arg(record.encode_to_vec())
                .arg(job.state)
                .arg(member(&JobCursor::of(&job)))
                .arg(member(&JobCursor { created_micros: end, job_id: job.job_id.clone() }))
                .arg(retention);
            for shard in shards {
                update = update.arg(shard.task.shard).arg(shard.encode_to_vec());
            }
            let answer: (i64, Vec<u8>) = match update.run::<Vec<redis::Value>>(&self.redis).await?.as_slice() {
                [redis::Value::Int(code)] => (*code, Vec::new()),
                [redis::Value::Int(code), redis::Value::BulkString(bytes)] => (*code, bytes.clone()),
                _ => (0, Vec::new()),
            };
            match answer {
                (1, _) => return Ok(job),
                (2, bytes) => {
                    return JobRecord::decode(bytes.as_slice()).map(|record| record.job).map_err(|_| gone(&job.job_id));
                }
                (3, _) => job.set_state(ExportJobState::Cancelling),
                _ => return Err(gone(&job.job_id)),
            }
        }
        Ok(job)
    }
}

/// What a create script answered: `1` and the new record, or `0` and the existing one.
pub(super) fn created_from(created: i64, stored: &[u8]) -> Option<Created> {
    let stored = JobRecord::decode(stored).ok()?;
    Some(if created == 1 { Created::New(stored) } else { Created::Existing(stored) })
}

/// The index member of a position.
fn member(cursor: &JobCursor) -> String {
    format!("{:020}|{}", cursor.created_micros.max(0), cursor.job_id)
}

fn gone(job_id: &str) -> StoreError {
    StoreError::Unavailable(Unavailable(format!("the job {job_id} is no longer kept")))
}

#[tonic::async_trait]
impl JobStore for RedisJobStore {
    async fn create(&self, record: JobRecord) -> Result<Created, StoreError> {
        let job_id = record.job.job_id.clone();
        let (created, stored): (i64, Vec<u8>) = self.creating(&CREATE, record).run(&self.redis).await?;
        created_from(created, &stored).ok_or_else(|| gone(&job_id))
    }

    async fn get(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let bytes: Vec<u8> = FIELD.call().key(self.key("records")).arg(job_id).run(&self.redis).await?;
        Ok(JobRecord::decode(bytes.as_slice()).ok().filter(|record| !record.job.job_id.is_empty()))
    }

    async fn request(&self, job_id: &str) -> Result<Option<CreateExportJobRequest>, StoreError> {
        let bytes: Vec<u8> = FIELD.call().key(self.key("bodies")).arg(job_id).run(&self.redis).await?;
        Ok((!bytes.is_empty()).then(|| CreateExportJobRequest::decode(bytes.as_slice()).ok()).flatten())
    }

    async fn update(&self, job: ExportJob) -> Result<ExportJob, StoreError> {
        self.write(job, &[]).await
    }

    async fn plan(&self, job: ExportJob, shards: Arc<Vec<ShardRecord>>) -> Result<ExportJob, StoreError> {
        self.write(job, &shards).await
    }

    async fn update_shard(&self, job: ExportJob, shard: ShardRecord) -> Result<ExportJob, StoreError> {
        self.write(job, std::slice::from_ref(&shard)).await
    }

    async fn shards(&self, job_id: &str, from: u32, limit: usize) -> Result<Vec<ShardRecord>, StoreError> {
        let mut shards = Vec::new();
        let mut next = from;
        // Read in batches until a batch finds a missing shard: shards are numbered from 0.
        while shards.len() < limit {
            let batch = (limit - shards.len()).min(1_000) as u32;
            let mut read = FIELDS.call().key(self.shards_key(job_id));
            for number in next..next.saturating_add(batch) {
                read = read.arg(number);
            }
            let values: Vec<Vec<u8>> = read.run(&self.redis).await?;
            let found: Vec<ShardRecord> = values
                .iter()
                .take_while(|value| !value.is_empty())
                .filter_map(|value| ShardRecord::decode(value.as_slice()).ok())
                .collect();
            let complete = found.len() == values.len();
            next = next.saturating_add(found.len() as u32);
            shards.extend(found);
            if !complete || values.is_empty() {
                break;
            }
        }
        Ok(shards)
    }

    async fn page(
        &self,
        owner: Option<&str>,
        after: Option<&JobCursor>,
        limit: usize,
    ) -> Result<Vec<ExportJob>, StoreError> {
        let index = owner.map_or_else(|| self.key("index"), |owner| self.owner_index(owner));
        let below = after.map_or_else(|| "+".to_owned(), |cursor| format!("({}", member(cursor)));
        let page = PAGE.call().key(index).key(self.key("records")).arg(below).arg(limit);
        let records: Vec<Vec<u8>> = page.run(&self.redis).await?;
        Ok(records
            .iter()
            .filter_map(|bytes| JobRecord::decode(bytes.as_slice()).ok())
            .map(|record| record.job)
            .collect())
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        let read = UNFINISHED.call().key(self.key("unfinished")).key(self.key("records")).quiet();
        let records: Vec<Vec<u8>> = read.run(&self.redis).await?;
        Ok(records.iter().filter_map(|bytes| JobRecord::decode(bytes.as_slice()).ok()).collect())
    }
}

/// One replica at a time runs each job: the one holding the job's lease, renewed while it runs;
/// a replica that dies loses it within the lease, and another one that looks for unowned
/// jobs (every renewal interval) takes the job over.
#[derive(Debug)]
pub struct JobLeases {
    redis: Redis,
    replica: String,
    ttl: Duration,
}

impl JobLeases {
    /// The leases of replica `replica` (a token unique to the process), lasting `ttl`.
    pub fn new(redis: Redis, replica: &str, ttl: Duration) -> Self {
        Self { redis, replica: replica.to_owned(), ttl }
    }

    fn lease(&self, job_id: &str) -> Lease {
        let key = self.redis.key("jobs", "jobs", &format!("lease:{job_id}"));
        Lease::new(self.redis.clone(), key, self.replica.clone(), self.ttl)
    }
}

#[tonic::async_trait]
impl JobClaims for JobLeases {
    async fn claim(&self, job_id: &str) -> bool {
        matches!(self.lease(job_id).keep().await, Ok(Claimed::Ours))
    }

    async fn release(&self, job_id: &str) {
        let _ = self.lease(job_id).release().await;
    }

    fn renew_every(&self) -> Option<Duration> {
        Some(self.ttl / 3)
    }
}
