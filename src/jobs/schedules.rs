//! Export schedules: one export job per window of time, windows that tile time from a start,
//! each job started once its window has ended and the schedule's lag has passed.
//!
//! The cursor (`next_window_start`) is the one truth of which windows ran: it moves only in
//! the store transaction that creates the window's job ([`ScheduleStore::fire`]), so a crash,
//! a restart or a second replica can neither skip a window nor run one twice. Every write names
//! the revision it read; whoever writes second reads again. In a fleet one replica runs the
//! loop ([`LoopLeader`]: the fleet's heartbeats choose it, at no extra call), and should two
//! ever run it at once (views of the fleet that differ for a heartbeat), the first to fire a
//! window wins and the other finds the cursor moved.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use tonic::Status;

use super::{Jobs, Owner, planned_progress, store_failure};
use crate::{
    contract::{job::status_message, status, task::timestamp},
    proto::{CreateExportJobRequest, ExportJob, ExportJobState, ExportSchedule},
    store::{
        StoreError,
        jobs::{Created, JobRecord, micros},
        schedules::{ScheduleCreated, ScheduleRecord, ScheduleStore},
    },
};

/// A schedule's lag when it names none: messages that reach Stream late (imports with their own
/// `created_at`, clients that retry) still fall in their window.
pub const DEFAULT_LAG: Duration = Duration::from_secs(15 * 60);

/// The longest lag a schedule may have.
pub const MAX_LAG: Duration = Duration::from_secs(7 * 24 * 3600);

/// The shortest interval (meant for tests: real schedules run hourly or daily).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// How many loop turns pass between two reads of a schedule's running jobs when no window is
/// due (a job's end shows in `last_*_job_id` within about this many ticks).
const REFRESH_EVERY_TICKS: u64 = 5;

/// Most loop turns between two reads of the schedules. Between them the loop reads when a
/// window is due, when a job it started may have ended, or when a schedule was written on this
/// replica; a schedule written on another replica of a fleet is seen within this many ticks.
const MOST_TURNS_UNREAD: u64 = 30;

/// Most attempts of one read-modify-write of a schedule that others keep writing first.
const WRITE_ATTEMPTS: usize = 8;

/// Tuning of export schedules; every value has a flag in `stream-export serve`.
#[derive(Clone, Debug)]
pub struct ScheduleSettings {
    /// How often due windows are looked for.
    pub tick: Duration,
    /// Most jobs of one schedule running at once (a catch-up after downtime runs this many
    /// windows at a time, in order).
    pub catch_up: usize,
    /// Most windows a create may find already due (a `start_time` in the past).
    pub max_backfill: u64,
    /// Most schedules one caller owns.
    pub max_per_caller: usize,
    /// Most schedules in all.
    pub max_total: usize,
}

impl Default for ScheduleSettings {
    fn default() -> Self {
        Self { tick: Duration::from_secs(1), catch_up: 3, max_backfill: 1_000, max_per_caller: 100, max_total: 10_000 }
    }
}

/// Who runs the schedules' loop. One process: it does ([`AlwaysLeads`]); a fleet: the replica
/// its heartbeats choose (`fleet::members::Members`), which takes over when another dies.
pub trait LoopLeader: Send + Sync + std::fmt::Debug + 'static {
    /// Whether this replica runs the loop now.
    fn leads(&self) -> bool;
}

/// One process: it runs the loop.
#[derive(Debug)]
pub struct AlwaysLeads;

impl LoopLeader for AlwaysLeads {
    fn leads(&self) -> bool {
        true
    }
}

/// One window: `[start, start + interval)`, exported as `messages_since = start` (none for a
/// full export) and `messages_until = end − 1 µs`, so that two windows never share an instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Its start, µs since the epoch.
    pub start: i64,
    /// Its end (the next window's start), µs since the epoch.
    pub end: i64,
}

impl Window {
    /// The next window of `schedule` (the one its cursor points at).
    pub fn next(schedule: &ExportSchedule) -> Self {
        let start = micros(schedule.next_window_start.as_ref());
        Self { start, end: start.saturating_add(interval_micros(schedule)) }
    }

    /// When its job may start (µs): once it ended and the lag passed.
    pub fn due_at(&self, schedule: &ExportSchedule) -> i64 {
        self.end.saturating_add(duration_micros(schedule.lag.as_ref()))
    }

    /// Whether its job may start at `now` (µs).
    pub fn is_due(&self, schedule: &ExportSchedule, now: i64) -> bool {
        self.due_at(schedule) <= now
    }
}

/// How many windows of a schedule from `start` are due at `now` (all µs).
pub fn windows_due(start: i64, interval: i64, lag: i64, now: i64) -> u64 {
    let ended_before = now.saturating_sub(lag).saturating_sub(start);
    u64::try_from(ended_before / interval.max(1)).unwrap_or(0)
}

/// µs of a protobuf duration (0 when unset or negative).
pub fn duration_micros(duration: Option<&prost_types::Duration>) -> i64 {
    duration.map_or(0, |at| at.seconds.saturating_mul(1_000_000).saturating_add(i64::from(at.nanos / 1_000))).max(0)
}

fn interval_micros(schedule: &ExportSchedule) -> i64 {
    duration_micros(schedule.interval.as_ref()).max(1)
}

fn timestamp_of(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// The request of `schedule`'s job for `window`: its template, the window on every channel,
/// and a `request_id` no caller can send (callers' are UUIDs), unique to the window.
pub fn window_request(schedule: &ExportSchedule, window: Window) -> CreateExportJobRequest {
    let mut request = schedule.template.clone().unwrap_or_default();
    let number = schedule.windows_started + 1;
    let full = schedule.full_every > 0 && number.is_multiple_of(u64::from(schedule.full_every));
    request.messages_since = (!full).then(|| timestamp_of(window.start));
    request.messages_until = Some(timestamp_of(window.end - 1));
    request.request_id = format!("schedule:{}:window:{}", schedule.schedule_id, window.start);
    request
}

/// When the loop should read the schedules again.
struct NextRead {
    /// µs until the soonest window of any schedule is due (0 or less: now).
    due_in: i64,
    /// Whether some schedule has jobs running (whose end it records).
    running: bool,
}

/// The export schedules of this replica: creates, reads, changes, and the loop that starts
/// each due window's job. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Schedules {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn ScheduleStore>,
    jobs: Jobs,
    leader: Arc<dyn LoopLeader>,
    settings: ScheduleSettings,
    /// Set when a schedule is written here: the loop reads them at its next turn.
    written: AtomicBool,
}

impl Schedules {
    /// The schedules kept in `store`, whose windows start jobs through `jobs` when `leader`
    /// says this replica runs the loop; none fires until [`Schedules::run`].
    pub fn new(
        store: Arc<dyn ScheduleStore>,
        jobs: Jobs,
        leader: Arc<dyn LoopLeader>,
        settings: ScheduleSettings,
    ) -> Self {
        Self { inner: Arc::new(Inner { store, jobs, leader, settings, written: AtomicBool::new(false) }) }
    }

    /// The settings in force.
    pub fn settings(&self) -> &ScheduleSettings {
        &self.inner.settings
    }

    /// The jobs the windows start.
    pub fn jobs(&self) -> &Jobs {
        &self.inner.jobs
    }

    /// Stores a new schedule, unless its owner already created one with this `request_id`
    /// (that one is returned). RESOURCE_EXHAUSTED past the caps.
    pub async fn create(&self, record: ScheduleRecord) -> Result<ScheduleCreated, Status> {
        let settings = &self.inner.settings;
        let all = self.inner.store.schedules().await.map_err(|error| store_failure(&error))?;
        let repeat = |kept: &ScheduleRecord| {
            !record.request_id.is_empty()
                && kept.request_id == record.request_id
                && kept.schedule.owner == record.schedule.owner
        };
        if !all.iter().any(repeat) {
            if all.len() >= settings.max_total {
                return Err(status::schedule_limit_reached("schedules", "in all", settings.max_total));
            }
            let own = all.iter().filter(|kept| kept.schedule.owner == record.schedule.owner).count();
            if own >= settings.max_per_caller {
                return Err(status::schedule_limit_reached(
                    "schedules-per-caller",
                    "of one caller",
                    settings.max_per_caller,
                ));
            }
        }
        let created = self.inner.store.create_schedule(record).await.map_err(|error| store_failure(&error))?;
        self.inner.written.store(true, Ordering::Relaxed);
        Ok(created)
    }

    /// A schedule, if it is kept, with the jobs it started read again.
    pub async fn get(&self, schedule_id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        let Some(record) = self.inner.store.schedule(schedule_id).await? else { return Ok(None) };
        Ok(Some(self.refresh(record).await?))
    }

    /// Every schedule.
    pub async fn all(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        self.inner.store.schedules().await
    }

    /// Changes a schedule with `edit` (read, edited, written over the revision read; again when
    /// another write came first). `None` when it is not kept; the edit's error as it is.
    pub async fn update(
        &self,
        schedule_id: &str,
        edit: impl Fn(&mut ExportSchedule) -> Result<(), Status>,
    ) -> Result<Option<ScheduleRecord>, Status> {
        for _ in 0..WRITE_ATTEMPTS {
            let read = self.inner.store.schedule(schedule_id).await.map_err(|error| store_failure(&error))?;
            let Some(mut record) = read else { return Ok(None) };
            edit(&mut record.schedule)?;
            record.schedule.update_time = Some(timestamp(Utc::now()));
            let written = self.inner.store.replace_schedule(record).await.map_err(|error| store_failure(&error))?;
            if let Some(written) = written {
                self.inner.written.store(true, Ordering::Relaxed);
                return Ok(Some(written));
            }
        }
        Err(status::schedule_busy(schedule_id))
    }

    /// Forgets a schedule; its jobs stay. `false` when it was not kept.
    pub async fn delete(&self, schedule_id: &str) -> Result<bool, StoreError> {
        self.inner.store.delete_schedule(schedule_id).await
    }

    /// Starts the loop that fires due windows, until the replica stops.
    pub fn run(&self) {
        let schedules = self.clone();
        let stopping = self.inner.jobs.stopping();
        tokio::spawn(async move {
            let inner = &schedules.inner;
            // Ticks on the wall clock's multiples of the tick: windows that end on whole seconds
            // (minutes, days) are fired right after they are due, not up to a tick later.
            let every = inner.settings.tick;
            let every_micros = i64::try_from(every.as_micros()).unwrap_or(i64::MAX).max(1);
            let to_boundary = every_micros - now_micros().rem_euclid(every_micros);
            let first = tokio::time::Instant::now() + Duration::from_micros(u64::try_from(to_boundary).unwrap_or(0));
            let mut ticks = tokio::time::interval_at(first, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // The turn of the next read, and of the next read of running jobs.
            let (mut read_at, mut refresh_at) = (0u64, 0u64);
            for turn in 0u64.. {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = stopping.cancelled() => return,
                }
                let written_here = inner.written.swap(false, Ordering::Relaxed);
                if !inner.leader.leads() || (turn < read_at && !written_here) {
                    continue;
                }
                let refresh = turn >= refresh_at;
                let Some(next) = schedules.turn(refresh).await else { continue };
                let tick_micros = u64::try_from(every_micros).unwrap_or(1);
                let ticks_until = |micros: i64| u64::try_from(micros).unwrap_or(0).div_ceil(tick_micros);
                read_at = turn + ticks_until(next.due_in).clamp(1, MOST_TURNS_UNREAD);
                if refresh {
                    refresh_at = turn + REFRESH_EVERY_TICKS;
                }
                if next.running {
                    read_at = read_at.min(refresh_at);
                }
            }
        });
    }

    /// One turn of the loop: every schedule's due windows fired, in window order. Says when the
    /// loop should read again (`None`: the schedules could not be read).
    async fn turn(&self, refresh_all: bool) -> Option<NextRead> {
        let records = match self.inner.store.schedules().await {
            Ok(records) => records,
            Err(error) => {
                tracing::debug!(%error, "the schedules could not be read");
                return None;
            }
        };
        let mut next = NextRead { due_in: i64::MAX, running: false };
        for record in records {
            let schedule_id = record.schedule.schedule_id.clone();
            match self.advance(record, refresh_all).await {
                Ok(after) => {
                    if !after.schedule.paused {
                        let due = Window::next(&after.schedule).due_at(&after.schedule);
                        next.due_in = next.due_in.min(due.saturating_sub(now_micros()));
                    }
                    next.running |= !after.schedule.running_job_ids.is_empty();
                }
                Err(error) => {
                    // Read again at the next turn.
                    next.due_in = 0;
                    tracing::warn!(%error, schedule_id, "a schedule's due windows could not be started");
                }
            }
        }
        Some(next)
    }

    /// Fires `record`'s due windows, one at a time, while it has room; returns the schedule as
    /// it is now.
    async fn advance(&self, mut record: ScheduleRecord, refresh: bool) -> Result<ScheduleRecord, StoreError> {
        let due = |record: &ScheduleRecord| {
            !record.schedule.paused && Window::next(&record.schedule).is_due(&record.schedule, now_micros())
        };
        if !record.schedule.running_job_ids.is_empty() && (refresh || due(&record)) {
            record = self.refresh(record).await?;
        }
        let jobs = &self.inner.jobs;
        while due(&record)
            && record.schedule.running_job_ids.len() < self.inner.settings.catch_up
            && jobs.has_room(&record.schedule.owner)
            && !jobs.stopping().is_cancelled()
        {
            match self.fire(record.clone()).await? {
                Some(fired) => record = fired,
                // Another write came first (a caller's update, another replica's fire): the
                // next turn reads it again.
                None => break,
            }
        }
        Ok(record)
    }

    /// Creates the job of `record`'s next window and moves its cursor, in one write. A job the
    /// policies refuse to its owner is created FAILED, so that the window shows why.
    async fn fire(&self, record: ScheduleRecord) -> Result<Option<ScheduleRecord>, StoreError> {
        let schedule = &record.schedule;
        let window = Window::next(schedule);
        let request = window_request(schedule, window);
        let owner = Owner { name: schedule.owner.clone(), source: record.owner_source.clone() };
        let jobs = &self.inner.jobs;
        let now = Some(timestamp(Utc::now()));
        let mut job = ExportJob {
            job_id: uuid::Uuid::new_v4().to_string(),
            owner: owner.name.clone(),
            progress: planned_progress(&request, jobs.settings().shard_size),
            request: Some(request),
            state: ExportJobState::Planning as i32,
            create_time: now,
            update_time: now,
            schedule_id: schedule.schedule_id.clone(),
            ..ExportJob::default()
        };
        if let Err(refused) = jobs.policy().authorize_start(&owner, &job) {
            job.set_state(ExportJobState::Failed);
            job.error = Some(status_message(&refused));
            job.end_time = now;
        }
        let mut next = record.clone();
        next.schedule.next_window_start = Some(timestamp_of(window.end));
        next.schedule.windows_started += 1;
        next.schedule.last_job_id = job.job_id.clone();
        if job.state().is_terminal() {
            next.schedule.last_failed_job_id = job.job_id.clone();
        } else {
            next.schedule.running_job_ids.push(job.job_id.clone());
        }
        next.schedule.update_time = now;
        let job = JobRecord { job, owner_source: owner.source, fingerprint: String::new() };
        let refused = job.job.state().is_terminal();
        let Some((written, created)) = self.inner.store.fire(next, job).await? else { return Ok(None) };
        let due = window.end.saturating_add(duration_micros(schedule.lag.as_ref()));
        let late = u64::try_from(now_micros().saturating_sub(due)).unwrap_or(0);
        crate::telemetry::metrics::schedule_window(refused, Duration::from_micros(late));
        match created {
            Created::New(job) if !job.job.state().is_terminal() => jobs.run_created(job),
            Created::New(_) => {}
            // Cannot happen while a window's job and the cursor's move are one write (the
            // request id names the schedule and the window): kept as a guard, the window has
            // its job.
            Created::Existing(job) => tracing::warn!(job_id = job.job.job_id, "the window's job existed already"),
        }
        tracing::info!(
            schedule_id = written.schedule.schedule_id,
            window_start = %chrono::DateTime::from_timestamp_micros(window.start).unwrap_or_default().to_rfc3339(),
            "a window's job was started"
        );
        Ok(Some(written))
    }

    /// `record` with the jobs it started read again: those that ended leave `running_job_ids`
    /// for `last_*_job_id`. Written when something changed (and returned as stored).
    async fn refresh(&self, record: ScheduleRecord) -> Result<ScheduleRecord, StoreError> {
        let mut ended = Vec::new();
        for job_id in &record.schedule.running_job_ids {
            match self.inner.jobs.get(job_id).await? {
                Some(job) if job.job.state().is_terminal() => ended.push((job_id.clone(), job.job.state())),
                Some(_) => {}
                None => ended.push((job_id.clone(), ExportJobState::Unspecified)),
            }
        }
        if ended.is_empty() {
            return Ok(record);
        }
        let mut next = record.clone();
        for (job_id, state) in ended {
            next.schedule.running_job_ids.retain(|running| *running != job_id);
            match state {
                ExportJobState::Succeeded => next.schedule.last_succeeded_job_id = job_id,
                ExportJobState::Failed => next.schedule.last_failed_job_id = job_id,
                ExportJobState::Cancelled => next.schedule.last_cancelled_job_id = job_id,
                _ => {}
            }
        }
        // Another write came first: it is read again at the next turn.
        Ok(self.inner.store.replace_schedule(next).await?.unwrap_or(record))
    }
}

fn now_micros() -> i64 {
    Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(start: i64, interval_seconds: i64, lag_seconds: i64) -> ExportSchedule {
        ExportSchedule {
            schedule_id: "s".into(),
            start_time: Some(timestamp_of(start)),
            next_window_start: Some(timestamp_of(start)),
            interval: Some(prost_types::Duration { seconds: interval_seconds, nanos: 0 }),
            lag: Some(prost_types::Duration { seconds: lag_seconds, nanos: 0 }),
            template: Some(CreateExportJobRequest::default()),
            ..Default::default()
        }
    }

    #[test]
    fn a_window_ends_one_microsecond_before_the_next_begins() {
        let mut plan = schedule(1_000_000, 60, 0);
        let first = window_request(&plan, Window::next(&plan));
        assert_eq!(first.messages_since, Some(timestamp_of(1_000_000)));
        assert_eq!(first.messages_until, Some(timestamp_of(60_999_999)));
        assert_eq!(first.request_id, "schedule:s:window:1000000");
        plan.next_window_start = Some(timestamp_of(61_000_000));
        plan.windows_started = 1;
        let second = window_request(&plan, Window::next(&plan));
        assert_eq!(second.messages_since, Some(timestamp_of(61_000_000)));
    }

    #[test]
    fn a_window_is_due_once_it_ended_and_the_lag_passed() {
        let plan = schedule(0, 10, 5);
        let window = Window::next(&plan);
        assert!(!window.is_due(&plan, 14_999_999));
        assert!(window.is_due(&plan, 15_000_000));
        assert_eq!(windows_due(0, 10_000_000, 5_000_000, 14_999_999), 0);
        assert_eq!(windows_due(0, 10_000_000, 5_000_000, 35_000_000), 3);
        assert_eq!(windows_due(50_000_000, 10_000_000, 0, 0), 0, "a start in the future");
    }

    #[test]
    fn every_nth_window_of_a_full_every_schedule_exports_everything_to_its_end() {
        let mut plan = schedule(0, 10, 0);
        plan.full_every = 3;
        let sinces: Vec<bool> = (0..6)
            .map(|started| {
                plan.windows_started = started;
                window_request(&plan, Window::next(&plan)).messages_since.is_some()
            })
            .collect();
        assert_eq!(sinces, [true, true, false, true, true, false]);
    }
}
