//! Fleet mode (issue 12, watches): replicas sharing one real `redis-server` poll each task
//! once for the whole fleet, hand the poll over when the polling replica dies, keep one
//! upstream budget, and keep watches going while Redis is down.

use std::time::{Duration, Instant};

use futures::future::join_all;
use serde_json::json;
use stream_export::{
    emulator::EmulatorConfig,
    proto::{ChannelRef, ExportChannelsRequest, TaskEvent, TaskState, WatchTaskRequest, task_event::EventType},
};
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use super::fleet::{client, replicas_with};
use crate::common::{API_KEY, API_SECRET, TestEmulator, process::ServiceProcess, redis::RedisServer};

/// Pollers poll every 100 ms (a steady rate, so that one poller's reads are easy to bound), a
/// dead replica's lease runs out after 1 s.
const STEADY: &[(&str, &str)] = &[
    ("STREAM_EXPORT_WATCH_POLL_MIN", "100ms"),
    ("STREAM_EXPORT_WATCH_POLL_MAX", "100ms"),
    ("STREAM_EXPORT_WATCH_FLEET_LEASE", "1s"),
    ("STREAM_EXPORT_UPSTREAM_POLL_BUDGET", "50"),
];

/// Submits a channel export through `replica` and freezes its task in `waiting`.
pub(super) async fn held_task(replica: &ServiceProcess, emulator: &TestEmulator) -> String {
    let channel = ChannelRef { r#type: "messaging".into(), id: "general".into(), ..Default::default() };
    let request = ExportChannelsRequest { channels: vec![channel], ..Default::default() };
    let task_id = client(replica).await.export_channels(request).await.expect("submits").into_inner().task_id;
    emulator.steer(&task_id, json!({"hold": true})).await;
    task_id
}

pub(super) async fn watch(replica: &ServiceProcess, task_id: &str) -> Streaming<TaskEvent> {
    let request = WatchTaskRequest { task_id: task_id.into() };
    client(replica).await.watch_task(request).await.expect("the watch starts").into_inner()
}

/// The next event that carries a task (heartbeats before the snapshot carry none).
pub(super) async fn next(stream: &mut Streaming<TaskEvent>) -> Result<TaskEvent, Status> {
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("an event in time")
            .expect("the stream is still open");
        match item {
            Ok(event) if event.r#type() == EventType::Heartbeat => continue,
            other => return other,
        }
    }
}

/// The next event's type and task state.
async fn next_state(stream: &mut Streaming<TaskEvent>) -> (EventType, TaskState) {
    let event = next(stream).await.expect("an event, not an error");
    (event.r#type(), event.task.as_ref().map_or(TaskState::Unspecified, |task| task.state()))
}

/// Reads a stream to its end: it must end OK after the terminal event, which is returned.
async fn terminal(stream: &mut Streaming<TaskEvent>) -> TaskEvent {
    let event = next(stream).await.expect("the terminal event");
    assert!(event.task.as_ref().is_some_and(|task| task.state() == TaskState::Completed), "{event:?}");
    let end = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the stream ends");
    assert!(end.is_none(), "OK after the terminal state, not {end:?}");
    event
}

/// Steers `task_id` to `state` (running or completed) and returns how long after the watcher on
/// the replica that polls it (`polling`) the watcher on another replica (`following`) got the
/// change; both must get it.
pub(super) async fn relay_delay(
    emulator: &TestEmulator,
    task_id: &str,
    state: TaskState,
    polling: &mut Streaming<TaskEvent>,
    following: &mut Streaming<TaskEvent>,
) -> Duration {
    let name = if state == TaskState::Running { "running" } else { "completed" };
    emulator.steer(task_id, json!({"status": name})).await;
    let seen = next(polling).await.expect("the change, where it is polled");
    assert_eq!(seen.task.as_ref().map(|task| task.state()), Some(state));
    let polled = Instant::now();
    let relayed = next(following).await.expect("the change, on the other replica");
    let delay = polled.elapsed();
    assert_eq!(relayed.task.as_ref().map(|task| task.state()), Some(state));
    delay
}

async fn status_reads(emulator: &TestEmulator, task_ids: &[String]) -> u64 {
    let counters = emulator.control(reqwest::Method::GET, "counters", None).await;
    task_ids.iter().map(|id| counters["tasks"][id].as_u64().unwrap_or(0)).sum()
}

#[tokio::test]
async fn watchers_of_one_task_on_three_replicas_cost_stream_one_pollers_reads() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    let fleet = replicas_with(3, &emulator, &redis.url(), STEADY).await;
    let task_id = held_task(&fleet[0], &emulator).await;
    let started = Instant::now();

    let mut streams = Vec::new();
    for replica in &fleet {
        for _ in 0..3 {
            streams.push(watch(replica, &task_id).await);
        }
    }
    for stream in &mut streams {
        assert_eq!(next_state(stream).await, (EventType::Snapshot, TaskState::Waiting));
    }
    emulator.steer(&task_id, json!({"status": "running"})).await;
    for stream in &mut streams {
        assert_eq!(next_state(stream).await, (EventType::Changed, TaskState::Running));
    }
    emulator.steer(&task_id, json!({"status": "completed"})).await;
    let terminals = join_all(streams.iter_mut().map(terminal)).await;
    let elapsed = started.elapsed();

    // One observation, relayed everywhere: the same observe_time on every replica.
    assert!(terminals.iter().all(|event| event.observe_time == terminals[0].observe_time), "{terminals:?}");
    let reads = status_reads(&emulator, std::slice::from_ref(&task_id)).await;
    let one_poller = elapsed.as_millis() as u64 / 100 + 3;
    assert!(reads <= one_poller, "{reads} status reads in {elapsed:?}; one poller makes at most {one_poller}");
}

#[tokio::test]
async fn when_the_polling_replica_is_killed_another_takes_over_and_its_watchers_see_the_end() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    let mut fleet = replicas_with(3, &emulator, &redis.url(), STEADY).await;
    let task_id = held_task(&fleet[1], &emulator).await;
    // The first watcher's replica takes the lease and polls.
    let mut on_the_poller = watch(&fleet[0], &task_id).await;
    assert_eq!(next_state(&mut on_the_poller).await, (EventType::Snapshot, TaskState::Waiting));
    let mut elsewhere = vec![watch(&fleet[1], &task_id).await, watch(&fleet[2], &task_id).await];
    for stream in &mut elsewhere {
        assert_eq!(next_state(stream).await, (EventType::Snapshot, TaskState::Waiting));
    }

    fleet[0].kill();
    let killed = Instant::now();
    emulator.steer(&task_id, json!({"status": "running"})).await;
    for stream in &mut elsewhere {
        assert_eq!(next_state(stream).await, (EventType::Changed, TaskState::Running));
    }
    let takeover = killed.elapsed();
    // A lease (1 s), a follow interval (250 ms), a poll interval (100 ms), and some slack.
    assert!(takeover < Duration::from_secs(4), "the change took {takeover:?} to reach the other replicas");
    emulator.steer(&task_id, json!({"status": "completed"})).await;
    for stream in &mut elsewhere {
        terminal(stream).await;
    }
}

#[tokio::test]
async fn a_replica_renews_all_the_leases_it_holds_in_one_redis_call_per_interval() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // One poll per task in the window at most; the leases (1 s) are renewed every 333 ms.
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "30s"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "30s"),
        ("STREAM_EXPORT_WATCH_FLEET_LEASE", "1s"),
    ];
    let fleet = replicas_with(1, &emulator, &redis.url(), &settings).await;
    let mut streams = Vec::new();
    for _ in 0..12 {
        let task_id = held_task(&fleet[0], &emulator).await;
        streams.push(watch(&fleet[0], &task_id).await);
    }
    for stream in &mut streams {
        assert_eq!(next_state(stream).await, (EventType::Snapshot, TaskState::Waiting));
    }

    let before = redis.script_calls().await;
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let calls = redis.script_calls().await - before;
    // 9 renewals and 3 heartbeats, with some slack; one renewal per task would be 108.
    assert!(calls <= 9 + 3 + 6, "{calls} scripts run in {window:?} for 12 leases held by one replica");
    // Kept past their TTL: renewed, all of them.
    assert_eq!(redis.keys("*:watch:*:lease").await.len(), 12);
}

#[tokio::test]
async fn a_change_reaches_the_other_replicas_watchers_when_it_is_announced_not_at_their_next_read() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // Followers would read the shared view only every 5 s (and at the lease's end, 3 s).
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "100ms"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "100ms"),
        ("STREAM_EXPORT_WATCH_FLEET_FOLLOW_INTERVAL", "5s"),
    ];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let task_id = held_task(&fleet[0], &emulator).await;
    // The first watcher's replica polls; the other follows.
    let mut polling = watch(&fleet[0], &task_id).await;
    assert_eq!(next_state(&mut polling).await, (EventType::Snapshot, TaskState::Waiting));
    let mut following = watch(&fleet[1], &task_id).await;
    assert_eq!(next_state(&mut following).await, (EventType::Snapshot, TaskState::Waiting));

    for state in [TaskState::Running, TaskState::Completed] {
        let delay = relay_delay(&emulator, &task_id, state, &mut polling, &mut following).await;
        assert!(delay <= Duration::from_millis(300), "{state:?} reached the other replica {delay:?} later");
    }
}

/// A task polled every 6 s: its follower checks the lease 5 s after its last read, in its
/// replica's next batch of reads (up to a follow interval, 5 s here, later). A change announced
/// while that check waits is relayed at once, not after it.
#[tokio::test]
async fn a_change_announced_while_a_follower_waits_for_its_lease_check_is_relayed_at_once() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "6s"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "6s"),
        ("STREAM_EXPORT_WATCH_FLEET_FOLLOW_INTERVAL", "5s"),
    ];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let mut streams = Vec::new();
    // The first task's follower starts its replica's batches of reads (one every 5 s from then).
    for settle in [Duration::from_secs(2), Duration::ZERO] {
        let task_id = held_task(&fleet[0], &emulator).await;
        let mut polling = watch(&fleet[0], &task_id).await;
        assert_eq!(next_state(&mut polling).await, (EventType::Snapshot, TaskState::Waiting));
        let mut following = watch(&fleet[1], &task_id).await;
        assert_eq!(next_state(&mut following).await, (EventType::Snapshot, TaskState::Waiting));
        streams.push((task_id, polling, following));
        tokio::time::sleep(settle).await;
    }
    // The second follower checks at 5 s, in the batch at about 8 s; its task is polled at 6 s.
    let (task_id, polling, following) = &mut streams[1];
    let delay = relay_delay(&emulator, task_id, TaskState::Running, polling, following).await;
    assert!(delay <= Duration::from_millis(300), "the change reached the other replica {delay:?} later");
}

#[tokio::test]
async fn followers_relay_an_announced_observation_without_reading_redis_again() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    let fleet = replicas_with(3, &emulator, &redis.url(), STEADY).await;
    let task_id = held_task(&fleet[0], &emulator).await;
    let mut streams = Vec::new();
    for replica in &fleet {
        let mut stream = watch(replica, &task_id).await;
        assert_eq!(next_state(&mut stream).await, (EventType::Snapshot, TaskState::Waiting));
        streams.push(stream);
    }

    let (calls, polls) = (redis.script_calls().await, status_reads(&emulator, std::slice::from_ref(&task_id)).await);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = redis.script_calls().await - calls;
    let polls = status_reads(&emulator, std::slice::from_ref(&task_id)).await - polls;
    // Each poll is published and its slot booked: two calls. Add the lease's renewals (3/s)
    // and the heartbeats (3 replicas, 1/s), and some slack; a read per follower per
    // observation would add two calls per poll.
    let bound = 2 * polls + 3 * 3 + 3 * 3 + 6;
    assert!(calls <= bound, "{calls} scripts run for {polls} polls in 3 s; at most {bound}");
    emulator.steer(&task_id, json!({"status": "completed"})).await;
    join_all(streams.iter_mut().map(terminal)).await;
}

/// Many tasks held, each watched on two replicas: one polls them all, the other follows them
/// all. The follower checks every lease when it would run out (every second here), and makes
/// those checks together.
#[tokio::test]
async fn a_replica_reads_all_the_tasks_it_follows_in_one_redis_call_per_follow_interval() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // No poll in the window; leases of 1 s, renewed every 333 ms, checked by the follower.
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "30s"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "30s"),
        ("STREAM_EXPORT_WATCH_FLEET_LEASE", "1s"),
    ];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let (mut streams, mut task_ids) = (Vec::new(), Vec::new());
    for _ in 0..30 {
        let task_id = held_task(&fleet[0], &emulator).await;
        task_ids.push(task_id.clone());
        let mut polled = watch(&fleet[0], &task_id).await;
        assert_eq!(next_state(&mut polled).await, (EventType::Snapshot, TaskState::Waiting));
        let mut followed = watch(&fleet[1], &task_id).await;
        assert_eq!(next_state(&mut followed).await, (EventType::Snapshot, TaskState::Waiting));
        streams.extend([polled, followed]);
    }

    let (before, reads) = (redis.script_calls().await, status_reads(&emulator, &task_ids).await);
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let calls = redis.script_calls().await - before;
    // The follower's checks: one call per follow interval (250 ms) at most, 12; the leader's
    // renewals, 9; heartbeats, 6; and some slack. One call per check would be about 90 more.
    assert!(calls <= 12 + 9 + 6 + 8, "{calls} scripts run in {window:?} for 30 tasks followed by one replica");
    // All still led by the first replica: nothing was taken over (a replica that takes a task
    // over polls it at once).
    assert_eq!(status_reads(&emulator, &task_ids).await - reads, 0, "a task was polled again");
    drop(streams);
}

/// One replica polls many tasks as fast as the fleet's budget allows, and books its slots
/// several at a time: the Redis calls follow the polls (one to share each), not twice them.
#[tokio::test]
async fn a_replica_books_several_budget_slots_in_one_redis_call() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // 20 tasks that would each be read 20 times a second, under a fleet budget of 40/s.
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "50ms"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "50ms"),
        ("STREAM_EXPORT_UPSTREAM_POLL_BUDGET", "40"),
    ];
    let fleet = replicas_with(1, &emulator, &redis.url(), &settings).await;
    let mut task_ids = Vec::new();
    let mut streams = Vec::new();
    for _ in 0..20 {
        let task_id = held_task(&fleet[0], &emulator).await;
        streams.push(watch(&fleet[0], &task_id).await);
        task_ids.push(task_id);
    }
    join_all(streams.iter_mut().map(next_state)).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (calls, reads) = (redis.script_calls().await, status_reads(&emulator, &task_ids).await);
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let calls = redis.script_calls().await - calls;
    let reads = status_reads(&emulator, &task_ids).await - reads;
    assert!(reads <= 40 * 3 + 2, "{reads} status reads in {window:?} at a fleet budget of 40/s");
    assert!(reads >= 40 * 3 / 2, "the budget is used ({reads} reads in {window:?})");
    // One call shares each poll; the bookings (up to 10 slots each), the renewals (9) and the
    // heartbeats (3) add a few. A booking per poll would double the calls.
    let bound = reads + reads / 4 + 9 + 3 + 6;
    assert!(calls <= bound, "{calls} scripts run for {reads} polls in {window:?}; at most {bound}");
    drop(streams);
}

/// While one replica keeps the fleet's budget busy with its tasks' polls, a task that another
/// replica starts watching gets its first poll within a fraction of a round, not after it.
#[tokio::test]
async fn a_new_task_on_one_replica_is_polled_before_the_tasks_another_keeps_polling() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // 60 tasks read every 50 ms at most, under 40/s: one round of polls takes 1.5 s.
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "50ms"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "50ms"),
        ("STREAM_EXPORT_UPSTREAM_POLL_BUDGET", "40"),
    ];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let mut streams = Vec::new();
    for _ in 0..60 {
        let task_id = held_task(&fleet[0], &emulator).await;
        streams.push(watch(&fleet[0], &task_id).await);
    }
    join_all(streams.iter_mut().map(next_state)).await;
    let new_task = held_task(&fleet[1], &emulator).await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let started = Instant::now();
    let mut stream = watch(&fleet[1], &new_task).await;
    assert_eq!(next_state(&mut stream).await, (EventType::Snapshot, TaskState::Waiting));
    let waited = started.elapsed();
    assert!(waited <= Duration::from_millis(700), "the new task's snapshot took {waited:?}; a round is 1.5 s");
    drop(streams);
}

/// Under a budget that binds, a task is polled less often than its shared view's TTL (three of
/// the longest poll intervals): the other replicas' watchers still get every change, the
/// terminal state included, and a late watcher elsewhere gets its snapshot at once.
#[tokio::test]
async fn followers_get_every_change_of_a_task_polled_less_often_than_its_view_lives() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // Views kept 1 s after a write (the lease); six tasks under 2 polls/s: each polled every 3 s.
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "100ms"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "200ms"),
        ("STREAM_EXPORT_WATCH_FLEET_LEASE", "1s"),
        ("STREAM_EXPORT_UPSTREAM_POLL_BUDGET", "2"),
    ];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let mut task_ids = Vec::new();
    for _ in 0..6 {
        task_ids.push(held_task(&fleet[0], &emulator).await);
    }
    let mut polled = Vec::new();
    for task_id in &task_ids {
        let mut stream = watch(&fleet[0], task_id).await;
        assert_eq!(next_state(&mut stream).await, (EventType::Snapshot, TaskState::Waiting));
        polled.push(stream);
    }
    let mut following = watch(&fleet[1], &task_ids[0]).await;
    assert_eq!(next_state(&mut following).await, (EventType::Snapshot, TaskState::Waiting));
    // Several polls of each task, each long after the last write of its view.
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Late watchers of the other five, at once: a view that expired would leave most of them
    // waiting for their task's next poll.
    let started = Instant::now();
    let mut late = Vec::new();
    for task_id in &task_ids[1..] {
        late.push(watch(&fleet[1], task_id).await);
    }
    join_all(late.iter_mut().map(next_state)).await;
    let waited = started.elapsed();
    assert!(waited <= Duration::from_millis(500), "the late watchers waited {waited:?} for their snapshots");

    emulator.steer(&task_ids[0], json!({"status": "running"})).await;
    assert_eq!(next_state(&mut following).await, (EventType::Changed, TaskState::Running));
    emulator.steer(&task_ids[0], json!({"status": "completed"})).await;
    terminal(&mut following).await;
    drop((polled, late));
}

/// A task's shared view lost in Redis (evicted, or a Redis restarted without persistence):
/// the observations written after it still reach the other replicas' watchers when announced,
/// not only at their next read.
#[tokio::test]
async fn followers_relay_the_changes_written_after_a_tasks_shared_view_was_lost() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // One poll every 2 s: the follower has seen one shared observation when the view goes.
    let settings = [("STREAM_EXPORT_WATCH_POLL_MIN", "2s"), ("STREAM_EXPORT_WATCH_POLL_MAX", "2s")];
    let fleet = replicas_with(2, &emulator, &redis.url(), &settings).await;
    let task_id = held_task(&fleet[0], &emulator).await;
    let mut polling = watch(&fleet[0], &task_id).await;
    assert_eq!(next_state(&mut polling).await, (EventType::Snapshot, TaskState::Waiting));
    let mut following = watch(&fleet[1], &task_id).await;
    assert_eq!(next_state(&mut following).await, (EventType::Snapshot, TaskState::Waiting));
    redis.delete(&redis.keys("*:watch:*:view").await).await;

    for state in [TaskState::Running, TaskState::Completed] {
        let delay = relay_delay(&emulator, &task_id, state, &mut polling, &mut following).await;
        assert!(delay <= Duration::from_millis(300), "{state:?} reached the other replica {delay:?} later");
    }
}

#[tokio::test]
async fn the_fleet_keeps_to_one_upstream_budget_with_many_tasks_watched_on_every_replica() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let redis = RedisServer::start(None).await;
    // Pollers want 20 reads per second per task; the budget allows 5 for the whole fleet.
    let settings = [
        ("STREAM_EXPORT_WATCH_POLL_MIN", "50ms"),
        ("STREAM_EXPORT_WATCH_POLL_MAX", "50ms"),
        ("STREAM_EXPORT_UPSTREAM_POLL_BUDGET", "5"),
    ];
    let fleet = replicas_with(3, &emulator, &redis.url(), &settings).await;
    let mut task_ids = Vec::new();
    for _ in 0..12 {
        task_ids.push(held_task(&fleet[0], &emulator).await);
    }
    let mut streams = Vec::new();
    for task_id in &task_ids {
        for replica in &fleet {
            streams.push(watch(replica, task_id).await);
        }
    }
    join_all(streams.iter_mut().map(next_state)).await;

    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = status_reads(&emulator, &task_ids).await;
    let window = Duration::from_secs(4);
    tokio::time::sleep(window).await;
    let reads = status_reads(&emulator, &task_ids).await - before;
    // Three replicas each keeping to 5/s would read about 60 times.
    assert!(reads <= 5 * 4 + 2, "{reads} status reads in {window:?} at a fleet budget of 5/s");
    assert!(reads >= 5 * 4 / 2, "the budget is used ({reads} reads in {window:?})");
    drop(streams);
}

#[tokio::test]
async fn watches_go_on_while_redis_is_down_and_the_fleet_polls_once_again_when_it_is_back() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let mut redis = RedisServer::start(None).await;
    let fleet = replicas_with(3, &emulator, &redis.url(), STEADY).await;
    let task_id = held_task(&fleet[0], &emulator).await;
    let mut streams = Vec::new();
    for replica in &fleet {
        streams.push(watch(replica, &task_id).await);
    }
    for stream in &mut streams {
        assert_eq!(next_state(stream).await, (EventType::Snapshot, TaskState::Waiting));
    }

    redis.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    emulator.steer(&task_id, json!({"status": "running"})).await;
    for stream in &mut streams {
        assert_eq!(next_state(stream).await, (EventType::Changed, TaskState::Running));
    }

    redis.restart().await;
    // Back in fleet mode within a few seconds: one replica polls again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let before = status_reads(&emulator, std::slice::from_ref(&task_id)).await;
    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let reads = status_reads(&emulator, std::slice::from_ref(&task_id)).await - before;
    // One poller reads about 20 times in 2 s; three polling on their own, about 60.
    assert!(reads <= 26, "{reads} status reads in {window:?} after Redis came back");

    emulator.steer(&task_id, json!({"status": "completed"})).await;
    for stream in &mut streams {
        terminal(stream).await;
    }
    for replica in &fleet {
        let log = replica.log();
        let outage_lines = log.matches("the fleet store (Redis) is unavailable").count();
        assert!(outage_lines <= 1, "one line per outage, not per call ({outage_lines}):\n{log}");
    }
}

/// Two replicas' budgets sharing one Redis: their slots interleave one period apart, a pause
/// seen by one holds the other, and a low window seen by one slows both.
#[tokio::test]
async fn replicas_take_turns_in_one_budget_and_share_what_stream_says_of_its_window() {
    use stream_export::{
        fleet::{Redis, RedisSettings, budget::FleetBudget, members::Members},
        task_watch::coordination::SlotBooker,
        upstream::RateLimit,
    };
    use tokio_util::sync::CancellationToken;

    let server = RedisServer::start(None).await;
    let settings = RedisSettings { url: server.url().into(), key_prefix: String::new() };
    let shutdown = CancellationToken::new();
    let budgets: Vec<FleetBudget> = (0..2)
        .map(|_| {
            let redis = Redis::new(&settings, API_KEY).expect("a valid URL");
            FleetBudget::new(redis.clone(), Members::start(redis, shutdown.clone()))
        })
        .collect();
    let period = Duration::from_millis(100);

    // Four slots booked at once: the other replica's next slot comes after all four.
    let (first, spacing) = budgets[0].reserve(period, 4).await.expect("Redis answers");
    let (after, _) = budgets[1].reserve(period, 1).await.expect("Redis answers");
    assert_eq!(spacing, period);
    let gap = after.saturating_sub(first);
    assert!(gap >= Duration::from_millis(390) && gap <= Duration::from_millis(430), "{first:?} then {after:?}");
    tokio::time::sleep(after).await;

    // Alternating bookings: each slot one period after the previous one, whoever booked it.
    let started = Instant::now();
    let mut slots = Vec::new();
    for round in 0..10 {
        let (wait, _) = budgets[round % 2].reserve(period, 1).await.expect("Redis answers");
        slots.push(started.elapsed() + wait);
    }
    for pair in slots.windows(2) {
        let gap = pair[1].saturating_sub(pair[0]);
        assert!(gap >= Duration::from_millis(90) && gap <= Duration::from_millis(130), "slots {slots:?}");
    }
    tokio::time::sleep(slots[9].saturating_sub(started.elapsed())).await;

    // A 429 on one replica: the other does not poll before the reset.
    budgets[0].pause(Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (wait, _) = budgets[1].reserve(period, 1).await.expect("Redis answers");
    assert!(wait >= Duration::from_millis(1700), "the other replica would poll in {wait:?}");
    tokio::time::sleep(wait).await;

    // A window running low on one replica (10 left for 5 s): both space their polls 500 ms apart.
    let reset = chrono::Utc::now() + chrono::Duration::seconds(5);
    budgets[1].share(RateLimit { limit: 100, remaining: 10, reset });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (first, _) = budgets[0].reserve(period, 1).await.expect("Redis answers");
    let (second, _) = budgets[1].reserve(period, 1).await.expect("Redis answers");
    let gap = second.saturating_sub(first);
    assert!(gap >= Duration::from_millis(400), "polls {gap:?} apart with 10 requests left for 5 s");
    shutdown.cancel();
}
