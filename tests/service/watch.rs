//! WatchTask: one poller per task whatever the number of watchers, ordered events ending in the
//! terminal state, heartbeats, resilience to transient upstream failures, the upstream budget,
//! and clean retirement of pollers.

use crate::common;

use std::time::{Duration, Instant};

use common::{Options, TestApp, assert_status, spawn_app, spawn_app_with};
use futures::future::join_all;
use serde_json::json;
use stream_export::{
    emulator::data::KNOWN_CHANNEL,
    proto::{ChannelRef, ExportChannelsRequest, TaskEvent, TaskState, WatchTaskRequest, task_event::EventType},
    task_watch::WatchSettings,
};
use tokio_stream::StreamExt;
use tonic::{Code, Status, Streaming};

/// Submits a channel export and freezes its task in `waiting`.
async fn held_task(app: &mut TestApp) -> String {
    let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
    let channel = ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() };
    let request = ExportChannelsRequest { channels: vec![channel], ..Default::default() };
    let task_id = app.client.export_channels(request).await.unwrap().into_inner().task_id;
    app.emulator.steer(&task_id, json!({"hold": true})).await;
    task_id
}

async fn watch(app: &TestApp, task_id: &str) -> Result<Streaming<TaskEvent>, Status> {
    let mut client = app.client.clone();
    client.watch_task(WatchTaskRequest { task_id: task_id.into() }).await.map(|r| r.into_inner())
}

/// Reads a stream to its end (bounded): the events, and the final status if it was not OK.
async fn drain(mut stream: Streaming<TaskEvent>) -> (Vec<TaskEvent>, Option<Status>) {
    let mut events = Vec::new();
    let read = async {
        while let Some(item) = stream.next().await {
            match item {
                Ok(event) => events.push(event),
                Err(status) => return Some(status),
            }
        }
        None
    };
    let end = tokio::time::timeout(Duration::from_secs(20), read).await.expect("the stream ends in time");
    (events, end)
}

/// The next event, or the status that ended the stream.
async fn next(stream: &mut Streaming<TaskEvent>) -> Result<TaskEvent, Status> {
    tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("an event in time")
        .expect("the stream is still open")
}

fn summary(events: &[TaskEvent]) -> Vec<(u64, EventType, TaskState)> {
    events
        .iter()
        .map(|e| (e.sequence, e.r#type(), e.task.as_ref().map_or(TaskState::Unspecified, |t| t.state())))
        .collect()
}

async fn status_reads(app: &TestApp, task_id: &str) -> u64 {
    let counters = app.emulator.control(reqwest::Method::GET, "counters", None).await;
    counters["tasks"][task_id].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn two_hundred_watchers_share_one_poller_and_see_the_same_sequence() {
    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    let started = Instant::now();

    let mut streams =
        join_all((0..200).map(|_| watch(&app, &task_id))).await.into_iter().map(Result::unwrap).collect::<Vec<_>>();
    let snapshots = join_all(streams.iter_mut().map(next)).await;
    assert!(snapshots.iter().all(|s| s.as_ref().is_ok_and(|e| e.r#type() == EventType::Snapshot)));

    for status in ["running", "completed"] {
        app.emulator.steer(&task_id, json!({"status": status})).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let outcomes = join_all(streams.into_iter().map(drain)).await;
    let elapsed = started.elapsed();

    let expected = vec![
        (1, EventType::Snapshot, TaskState::Waiting),
        (2, EventType::Changed, TaskState::Running),
        (3, EventType::Changed, TaskState::Completed),
    ];
    for (events, end) in &outcomes {
        assert!(end.is_none(), "the stream ends with OK, not {end:?}");
        let mut all = vec![snapshots[0].as_ref().unwrap().clone()];
        all.extend(events.iter().cloned());
        assert_eq!(summary(&all), expected);
        let result =
            events.last().unwrap().task.as_ref().unwrap().result.as_ref().expect("COMPLETED carries the result");
        assert!(!result.url.is_empty() && result.url_expire_time.is_some());
    }
    // One poller's worth: at most one read per minimum poll interval (50 ms in tests), not 200x.
    let reads = status_reads(&app, &task_id).await;
    let one_poller = elapsed.as_millis() as u64 / 50 + 2;
    assert!(reads <= one_poller, "{reads} status reads in {elapsed:?} (one poller makes at most {one_poller})");
    app.stop().await;
}

#[tokio::test]
async fn a_failing_task_ends_with_failed_and_its_error() {
    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    let mut stream = watch(&app, &task_id).await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().r#type(), EventType::Snapshot);
    app.emulator
        .steer(&task_id, json!({"status": "failed", "error": {"type": "export_error", "description": "boom"}}))
        .await;
    let (events, end) = drain(stream).await;
    assert!(end.is_none(), "OK after the terminal state, not {end:?}");
    let last = events.last().expect("a FAILED event").task.clone().unwrap();
    assert_eq!(last.state(), TaskState::Failed);
    assert_eq!(last.error.unwrap().description, "boom");
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_task_is_not_found() {
    let app = spawn_app().await;
    let stream = watch(&app, &uuid::Uuid::new_v4().to_string()).await.unwrap();
    let (events, end) = drain(stream).await;
    assert!(events.is_empty());
    assert_status(&end.expect("an error status"), Code::NotFound, "TASK_NOT_FOUND");
    app.stop().await;
}

#[tokio::test]
async fn heartbeats_arrive_on_a_quiet_task_and_say_when_upstream_was_polled() {
    let watch_settings = WatchSettings { heartbeat_interval: Duration::from_millis(300), ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let task_id = held_task(&mut app).await;
    let mut stream = watch(&app, &task_id).await.unwrap();
    let snapshot = next(&mut stream).await.unwrap();
    let first = next(&mut stream).await.unwrap();
    let second = next(&mut stream).await.unwrap();
    assert_eq!(
        summary(&[snapshot.clone(), first.clone(), second.clone()]),
        vec![
            (1, EventType::Snapshot, TaskState::Waiting),
            (2, EventType::Heartbeat, TaskState::Waiting),
            (3, EventType::Heartbeat, TaskState::Waiting),
        ]
    );
    let seconds = |e: &TaskEvent| e.observe_time.as_ref().map(|t| (t.seconds, t.nanos)).unwrap();
    assert!(seconds(&second) > seconds(&snapshot), "a heartbeat reports the latest poll");
    app.stop().await;
}

#[tokio::test]
async fn transient_failures_mid_watch_do_not_break_it() {
    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    let mut stream = watch(&app, &task_id).await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().r#type(), EventType::Snapshot);
    app.emulator.inject("get_task", 2, json!({"kind": "status", "status": 503, "code": -1, "message": "down"})).await;
    app.emulator.inject("get_task", 1, json!({"kind": "non_json", "status": 429, "body": "Too Many Requests"})).await;
    app.emulator.inject("get_task", 1, json!({"kind": "drop"})).await;
    app.emulator.steer(&task_id, json!({"status": "completed"})).await;
    let (events, end) = drain(stream).await;
    assert!(end.is_none(), "{end:?}");
    assert_eq!(summary(&events), vec![(2, EventType::Changed, TaskState::Completed)]);
    app.stop().await;
}

#[tokio::test]
async fn persistent_failure_ends_the_watch_with_unavailable_and_retry_info() {
    let watch_settings = WatchSettings { failure_budget: Duration::from_millis(500), ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let task_id = held_task(&mut app).await;
    let mut stream = watch(&app, &task_id).await.unwrap();
    assert_eq!(next(&mut stream).await.unwrap().r#type(), EventType::Snapshot);
    app.emulator
        .inject("get_task", 1000, json!({"kind": "status", "status": 500, "code": -1, "message": "down"}))
        .await;
    let (_, end) = drain(stream).await;
    let details = assert_status(&end.expect("an error status"), Code::Unavailable, "UPSTREAM_FAILING");
    assert!(details.retry_info().is_some());
    app.stop().await;
}

#[tokio::test]
async fn the_upstream_budget_caps_the_poll_rate_across_many_tasks() {
    let budget = 20.0;
    let watch_settings = WatchSettings { upstream_budget_per_second: budget, ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let mut streams = Vec::new();
    for _ in 0..40 {
        let task_id = held_task(&mut app).await;
        streams.push(watch(&app, &task_id).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = app.emulator.requests("get_task").await;
    let window = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let polled = app.emulator.requests("get_task").await - before;
    let seconds = window.elapsed().as_secs_f64();
    // 40 tasks at a 50 ms minimum interval would want up to 800 requests per second.
    assert!(polled as f64 <= budget * seconds + 2.0, "{polled} requests in {seconds:.2}s over a budget of {budget}/s");
    assert!(polled as f64 >= budget * seconds * 0.5, "the budget is used: {polled} requests in {seconds:.2}s");
    // Every task still gets polled: freshness degrades evenly.
    let counters = app.emulator.control(reqwest::Method::GET, "counters", None).await;
    let tasks = counters["tasks"].as_object().unwrap();
    assert!(tasks.values().all(|reads| reads.as_u64().unwrap() >= 1), "every task is polled: {tasks:?}");
    drop(streams);
    app.stop().await;
}

#[tokio::test]
async fn the_poller_stops_when_the_last_watcher_leaves() {
    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    let mut streams = vec![watch(&app, &task_id).await.unwrap(), watch(&app, &task_id).await.unwrap()];
    for stream in &mut streams {
        next(stream).await.unwrap();
    }
    assert_eq!((app.hub.watched_tasks(), app.hub.open_streams()), (1, 2));
    drop(streams);
    // Within one (maximum, 400 ms in tests) poll interval the poller notices and retires.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!((app.hub.watched_tasks(), app.hub.active_pollers(), app.hub.open_streams()), (0, 0, 0));
    let reads = status_reads(&app, &task_id).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(status_reads(&app, &task_id).await, reads, "no status request after the last watcher left");
    app.stop().await;
}

#[tokio::test]
async fn a_late_watcher_of_a_finished_task_gets_the_answer_without_an_upstream_call() {
    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    app.emulator.steer(&task_id, json!({"status": "completed"})).await;
    let (events, _) = drain(watch(&app, &task_id).await.unwrap()).await;
    assert_eq!(summary(&events), vec![(1, EventType::Snapshot, TaskState::Completed)]);
    let reads = status_reads(&app, &task_id).await;
    let (late, end) = drain(watch(&app, &task_id).await.unwrap()).await;
    assert!(end.is_none());
    assert_eq!(summary(&late), vec![(1, EventType::Snapshot, TaskState::Completed)]);
    assert_eq!(status_reads(&app, &task_id).await, reads, "served from the retained final state");
    app.stop().await;
}

#[tokio::test]
async fn streams_past_the_limit_are_refused() {
    let watch_settings = WatchSettings { max_streams: 2, ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let task_id = held_task(&mut app).await;
    let mut first = watch(&app, &task_id).await.unwrap();
    let _second = watch(&app, &task_id).await.unwrap();
    next(&mut first).await.unwrap();
    let refused = match watch(&app, &task_id).await {
        Err(status) => status,
        Ok(mut stream) => next(&mut stream).await.expect_err("a third stream is refused"),
    };
    assert_status(&refused, Code::ResourceExhausted, "WATCH_LIMIT_REACHED");
    drop(first);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(watch(&app, &task_id).await.is_ok(), "a slot frees up when a stream ends");
    app.stop().await;
}

#[tokio::test]
async fn the_server_ends_long_streams_and_shutdown_as_resumable_interruptions() {
    let watch_settings = WatchSettings { max_stream_lifetime: Duration::from_millis(400), ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let task_id = held_task(&mut app).await;
    let (events, end) = drain(watch(&app, &task_id).await.unwrap()).await;
    assert_eq!(events.len(), 1, "the snapshot, then the interruption");
    let details = assert_status(&end.expect("interrupted"), Code::Unavailable, "WATCH_INTERRUPTED");
    assert!(details.retry_info().is_some());

    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    let mut stream = watch(&app, &task_id).await.unwrap();
    next(&mut stream).await.unwrap();
    let stopping = tokio::spawn(app.stop());
    let (_, end) = drain(stream).await;
    assert_status(&end.expect("interrupted"), Code::Unavailable, "WATCH_INTERRUPTED");
    tokio::time::timeout(Duration::from_secs(5), stopping).await.expect("the server stops").unwrap();
}

#[tokio::test]
async fn the_callers_deadline_is_honoured() {
    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    let mut request = tonic::Request::new(WatchTaskRequest { task_id: task_id.clone() });
    request.set_timeout(Duration::from_millis(400));
    let stream = app.client.watch_task(request).await.unwrap().into_inner();
    let started = Instant::now();
    let (events, end) = drain(stream).await;
    assert_eq!(events.len(), 1);
    assert_eq!(end.expect("an error status").code(), Code::DeadlineExceeded);
    assert!(started.elapsed() < Duration::from_secs(2));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.hub.watched_tasks(), 0, "the poller retired after the deadline");
    app.stop().await;
}

#[tokio::test]
async fn the_poller_slows_down_as_streams_rate_limit_runs_low() {
    let mut app = spawn_app().await;
    // Stream's windows are clock minutes: start at the top of one (on the emulator's clock), so
    // that no new window opens during the test and hides a poller that spent the whole window.
    let clock = app.emulator.control(reqwest::Method::GET, "clock", None).await;
    let now = chrono::DateTime::parse_from_rfc3339(clock["now"].as_str().unwrap()).unwrap();
    let to_next_minute = 60 - i64::from(chrono::Timelike::second(&now));
    app.emulator.control(reqwest::Method::POST, "clock", Some(json!({"advance_secs": to_next_minute}))).await;
    app.emulator.control(reqwest::Method::PUT, "rate_limits", Some(json!({"get_task": 10}))).await;
    let task_id = held_task(&mut app).await;
    let mut stream = watch(&app, &task_id).await.unwrap();
    next(&mut stream).await.unwrap();
    // Unpaced, a 50 ms..400 ms poller would spend 10 requests a minute within about 3.5 s.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut client = app.client.clone();
    let request = stream_export::proto::GetTaskRequest { task_id: task_id.clone() };
    assert!(client.get_task(request).await.is_ok(), "the poller left part of Stream's window unused");
    app.emulator.steer(&task_id, json!({"status": "completed"})).await;
    drop(stream);
    app.stop().await;
}

/// Opens `count` watches of random (unknown) ids at once and cancels each after `held`.
async fn watch_and_cancel_bogus_ids(app: &TestApp, count: usize, held: Duration) {
    join_all((0..count).map(|_| async {
        let stream = watch(app, &uuid::Uuid::new_v4().to_string()).await.unwrap();
        tokio::time::sleep(held).await;
        drop(stream);
    }))
    .await;
}

#[tokio::test]
async fn watches_are_admitted_like_unary_calls() {
    let mut app = spawn_app().await;
    let task_id = held_task(&mut app).await;
    // Draining: refused with the status unary calls get.
    app.hub.shutdown();
    let mut client = app.client.clone();
    let unary = client
        .get_task(stream_export::proto::GetTaskRequest { task_id: task_id.clone() })
        .await
        .expect_err("refused while draining");
    assert_status(&unary, Code::Unavailable, "SHUTTING_DOWN");
    let refused = match watch(&app, &task_id).await {
        Err(status) => status,
        Ok(stream) => drain(stream).await.1.expect("an error status"),
    };
    assert_status(&refused, Code::Unavailable, "SHUTTING_DOWN");
    app.stop().await;

    // At the in-flight limit: shed like unary calls.
    let tweak: common::SettingsTweak = Box::new(|settings| settings.limits.max_in_flight = 0);
    let app = spawn_app_with(Options { tweak: Some(tweak), ..Options::default() }).await;
    let refused = match watch(&app, &uuid::Uuid::new_v4().to_string()).await {
        Err(status) => status,
        Ok(stream) => drain(stream).await.1.expect("an error status"),
    };
    assert_status(&refused, Code::ResourceExhausted, "OVERLOADED");
    app.stop().await;
}

#[tokio::test]
async fn heartbeats_arrive_before_a_delayed_snapshot() {
    let watch_settings = WatchSettings { heartbeat_interval: Duration::from_millis(300), ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let task_id = held_task(&mut app).await;
    app.emulator.inject("get_task", 1, json!({"kind": "delay", "ms": 2000})).await;
    let mut stream = watch(&app, &task_id).await.unwrap();
    let mut events = vec![next(&mut stream).await.unwrap()];
    while events.last().unwrap().r#type() == EventType::Heartbeat {
        events.push(next(&mut stream).await.unwrap());
    }
    let kinds: Vec<_> = events.iter().map(|e| (e.sequence, e.r#type(), e.task.is_some())).collect();
    assert!(events.len() >= 3, "heartbeats every 300 ms while the first poll takes 2 s: {kinds:?}");
    let (snapshot, heartbeats) = events.split_last().unwrap();
    assert!(heartbeats.iter().all(|e| e.task.is_none() && e.observe_time.is_none()), "{kinds:?}");
    assert_eq!(snapshot.r#type(), EventType::Snapshot, "{kinds:?}");
    assert_eq!(snapshot.task.as_ref().map(|t| t.state()), Some(TaskState::Waiting));
    assert!(events.iter().zip(1..).all(|(e, n)| e.sequence == n), "{kinds:?}");
    drop(stream);
    app.stop().await;
}

#[tokio::test]
async fn cancelled_watchers_of_bogus_ids_do_not_delay_a_real_tasks_first_event() {
    // 200 cancelled watchers at 2 requests/s: had each kept its budget slot, the real task's
    // first poll would come about 100 s later.
    let watch_settings = WatchSettings { upstream_budget_per_second: 2.0, ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let task_id = held_task(&mut app).await;
    watch_and_cancel_bogus_ids(&app, 200, Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    let mut stream = watch(&app, &task_id).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(15), stream.next()).await;
    let waited = started.elapsed();
    let first = first.unwrap_or_else(|_| panic!("no event after {waited:?}: cancelled watchers held budget slots"));
    assert_eq!(first.unwrap().unwrap().r#type(), EventType::Snapshot);
    assert!(app.emulator.requests("get_task").await < 20, "departed watchers' polls were still sent");
    drop(stream);
    app.stop().await;
}

#[tokio::test]
async fn a_new_watchers_snapshot_does_not_queue_behind_other_tasks_polls() {
    // 30 watched tasks at 6 requests/s: a round of their polls takes 5 s.
    let watch_settings = WatchSettings { upstream_budget_per_second: 6.0, ..Options::default().watch };
    let mut app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let mut streams = Vec::new();
    for _ in 0..30 {
        let task_id = held_task(&mut app).await;
        streams.push(watch(&app, &task_id).await.unwrap());
    }
    let newcomer = held_task(&mut app).await;
    // Let the first round pass, so that every poller waits in the queue for its next poll.
    tokio::time::sleep(Duration::from_secs(6)).await;

    let started = Instant::now();
    let mut stream = watch(&app, &newcomer).await.unwrap();
    let snapshot = tokio::time::timeout(Duration::from_secs(3), stream.next()).await;
    let waited = started.elapsed();
    let snapshot = snapshot.unwrap_or_else(|_| panic!("no snapshot after {waited:?}: it queued behind periodic polls"));
    assert_eq!(snapshot.unwrap().unwrap().r#type(), EventType::Snapshot);
    drop((stream, streams));
    app.stop().await;
}

#[tokio::test]
async fn repeated_watches_of_an_unknown_id_ask_upstream_once() {
    let app = spawn_app().await;
    let unknown = uuid::Uuid::new_v4().to_string();
    for _ in 0..5 {
        let (events, end) = drain(watch(&app, &unknown).await.unwrap()).await;
        assert!(events.is_empty());
        assert_status(&end.expect("an error status"), Code::NotFound, "TASK_NOT_FOUND");
    }
    // Five concurrent ones too.
    let ends = join_all((0..5).map(|_| async { drain(watch(&app, &unknown).await.unwrap()).await.1 })).await;
    for end in ends {
        assert_status(&end.expect("an error status"), Code::NotFound, "TASK_NOT_FOUND");
    }
    assert_eq!(app.emulator.requests("get_task").await, 1, "NOT_FOUND is remembered for a while");
    app.stop().await;
}

#[tokio::test]
async fn not_found_is_forgotten_after_its_ttl() {
    let watch_settings = WatchSettings { not_found_retention: Duration::from_millis(200), ..Options::default().watch };
    let app = spawn_app_with(Options { watch: watch_settings, ..Options::default() }).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    drain(watch(&app, &unknown).await.unwrap()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(app.hub.watched_tasks(), 0, "the negative entry expired");
    drain(watch(&app, &unknown).await.unwrap()).await;
    assert_eq!(app.emulator.requests("get_task").await, 2);
    app.stop().await;
}

#[tokio::test]
async fn one_callers_flood_of_watches_holds_back_neither_another_callers_snapshot_nor_its_streams() {
    const FLOODER: &str = "flooder-token-0123456789";
    const PATIENT: &str = "patient-token-0123456789";
    let path = std::env::temp_dir().join(format!("stream-export-watch-tokens-{}", uuid::Uuid::new_v4()));
    std::fs::write(&path, format!("flooder {FLOODER}\npatient {PATIENT}\n")).unwrap();
    let tokens = path.clone();
    let mut app = spawn_app_with(Options {
        watch: WatchSettings {
            poll_interval_min: Duration::from_millis(50),
            poll_interval_max: Duration::from_millis(400),
            upstream_budget_per_second: 5.0,
            max_streams_per_caller: 30,
            ..WatchSettings::default()
        },
        tweak: Some(Box::new(move |settings| {
            settings.access.tokens_file = Some(tokens);
        })),
        ..Options::default()
    })
    .await;
    let _ = std::fs::remove_file(&path);
    let as_caller = |token: &str, task_id: &str| {
        let mut request = tonic::Request::new(WatchTaskRequest { task_id: task_id.into() });
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    };
    let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
    let channel = ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() };
    let mut submit = tonic::Request::new(ExportChannelsRequest { channels: vec![channel], ..Default::default() });
    submit.metadata_mut().insert("authorization", format!("Bearer {PATIENT}").parse().unwrap());
    let task_id = app.client.export_channels(submit).await.unwrap().into_inner().task_id;
    app.emulator.steer(&task_id, json!({"hold": true})).await;

    // Thirty watches of tasks that stay open: thirty first polls queued at 5 a second.
    let mut held = Vec::new();
    for _ in 0..31 {
        let other = app.emulator.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
        app.emulator.steer(&other, json!({"hold": true})).await;
        held.push(other);
    }
    let mut client = app.client.clone();
    let mut flood = Vec::new();
    for other in &held[..30] {
        flood.push(client.watch_task(as_caller(FLOODER, other)).await.expect("within the caller's limit"));
    }
    let refused = client.watch_task(as_caller(FLOODER, &held[30])).await;
    assert_status(&refused.expect_err("one past the caller's limit"), Code::ResourceExhausted, "WATCH_LIMIT_REACHED");

    // The other caller's first poll takes its turn: its snapshot does not wait behind thirty
    // (six seconds at this budget).
    let started = Instant::now();
    let mut stream = client.watch_task(as_caller(PATIENT, &task_id)).await.expect("another caller").into_inner();
    let snapshot = stream.next().await.expect("a snapshot").expect("an event");
    assert_eq!(snapshot.r#type(), EventType::Snapshot);
    assert!(started.elapsed() < Duration::from_secs(3), "the snapshot waited {:?}", started.elapsed());
    drop(flood);
    app.stop().await;
}
