//! Export schedules (issue 35): windows that tile time with no gap and no overlap, as Stream
//! received them; caught up in order, a bounded number at a time; paused and resumed; kept
//! across a restart; every bad input refused.

use std::{collections::BTreeSet, time::Duration};

use chrono::{DateTime, SubsecRound, Utc};
use stream_export::{
    config::StateSettings,
    emulator::EmulatorConfig,
    proto::{
        ChannelList, ChannelRef, CreateExportJobRequest, CreateExportScheduleRequest, DeleteExportScheduleRequest,
        ExportJob, ExportJobState, ExportSchedule, GetExportScheduleRequest, ListExportJobsRequest,
        ListExportSchedulesRequest, UpdateExportScheduleRequest, UserList, create_export_job_request::Selector,
    },
};
use tonic::Code;

use crate::common::{
    API_KEY, API_SECRET, Options, TestApp, assert_status,
    emulator::TestEmulator,
    schedules::{self, Received, assert_tiles, in_window_order},
    spawn_app_with, violated_fields,
};

/// A service whose schedules look for due windows often and whose jobs submit at once.
fn options(
    emulator: Option<&TestEmulator>,
    tweak: impl Fn(&mut stream_export::config::Settings) + Send + 'static,
) -> Options {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 4;
    Options {
        emulator: config,
        base_url_override: emulator.map(TestEmulator::base_url),
        tweak: Some(Box::new(move |settings| {
            settings.jobs.export_budget_per_minute = 6_000;
            settings.schedules.tick = Duration::from_millis(100);
            tweak(settings);
        })),
        ..Options::default()
    }
}

fn channels(count: usize) -> Vec<ChannelRef> {
    (0..count)
        .map(|n| ChannelRef { r#type: "messaging".into(), id: format!("bulk-{n:06}"), ..Default::default() })
        .collect()
}

fn template() -> CreateExportJobRequest {
    CreateExportJobRequest {
        selector: Some(Selector::Channels(ChannelList { channels: channels(2) })),
        ..Default::default()
    }
}

fn seconds(seconds: i64) -> prost_types::Duration {
    prost_types::Duration { seconds, nanos: 0 }
}

fn at(instant: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: instant.timestamp(), nanos: instant.timestamp_subsec_nanos() as i32 }
}

/// A schedule of 1 s windows with no lag, from `start`.
fn every_second(start: DateTime<Utc>) -> ExportSchedule {
    ExportSchedule {
        template: Some(template()),
        interval: Some(seconds(1)),
        start_time: Some(at(start)),
        lag: Some(seconds(0)),
        ..Default::default()
    }
}

async fn create(app: &TestApp, schedule: ExportSchedule) -> ExportSchedule {
    let request = CreateExportScheduleRequest { schedule: Some(schedule), request_id: String::new() };
    app.client.clone().create_export_schedule(request).await.expect("the schedule is created").into_inner()
}

async fn get(app: &TestApp, schedule_id: &str) -> ExportSchedule {
    let request = GetExportScheduleRequest { schedule_id: schedule_id.into() };
    app.client.clone().get_export_schedule(request).await.expect("the schedule is read").into_inner()
}

async fn set_paused(app: &TestApp, schedule_id: &str, paused: bool) -> ExportSchedule {
    let request = UpdateExportScheduleRequest {
        schedule: Some(ExportSchedule { schedule_id: schedule_id.into(), paused, ..Default::default() }),
        update_mask: Some(prost_types::FieldMask { paths: vec!["paused".into()] }),
    };
    app.client.clone().update_export_schedule(request).await.expect("the schedule is updated").into_inner()
}

/// Reads the schedule until `done` holds of it (at most `within`), checking at each read that
/// no more of its jobs run at once than the catch-up allows.
async fn until(
    app: &TestApp,
    schedule_id: &str,
    within: Duration,
    catch_up: usize,
    done: impl Fn(&ExportSchedule) -> bool,
) -> ExportSchedule {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let schedule = get(app, schedule_id).await;
        assert!(schedule.running_job_ids.len() <= catch_up, "more jobs at once than the catch-up: {schedule:?}");
        if done(&schedule) {
            return schedule;
        }
        assert!(tokio::time::Instant::now() < deadline, "the schedule did not get there in time: {schedule:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn jobs_of(app: &TestApp, schedule_id: &str) -> Vec<ExportJob> {
    schedules::jobs_of(&mut app.client.clone(), schedule_id).await
}

async fn windows_received(app: &TestApp, emulator: &TestEmulator, jobs: &[ExportJob]) -> Vec<Received> {
    schedules::windows_received(&mut app.client.clone(), emulator, jobs).await
}

#[tokio::test]
async fn thirty_windows_tile_with_no_gap_and_no_overlap_as_stream_received_them() {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 4;
    let emulator = TestEmulator::spawn(config).await;
    let app = spawn_app_with(options(Some(&emulator), |settings| settings.schedules.catch_up = 4)).await;
    // A backfill: thirty windows have ended when the schedule is created.
    let start = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(30);
    let schedule = create(&app, every_second(start)).await;
    assert_eq!(schedule.next_window_start, Some(at(start)));
    assert_eq!(schedule.windows_started, 0);
    assert_eq!(schedule.template.as_ref().and_then(|template| template.messages_since), None);

    let id = schedule.schedule_id.clone();
    until(&app, &id, Duration::from_secs(60), 4, |schedule| schedule.windows_started >= 30).await;
    // Let the first thirty jobs end, then compare what Stream received.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let jobs = loop {
        let jobs: Vec<ExportJob> = jobs_of(&app, &id).await.into_iter().take(30).collect();
        if jobs.len() == 30 && jobs.iter().all(|job| job.state() == ExportJobState::Succeeded) {
            break jobs;
        }
        assert!(tokio::time::Instant::now() < deadline, "the jobs did not succeed: {jobs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let request_ids: BTreeSet<String> = jobs
        .iter()
        .map(|job| job.request.as_ref().map(|request| request.request_id.clone()).unwrap_or_default())
        .collect();
    assert_eq!(request_ids.len(), 30, "one job per window");
    assert!(request_ids.iter().all(|id| id.starts_with(&format!("schedule:{}:window:", schedule.schedule_id))));
    let windows = windows_received(&app, &emulator, &jobs).await;
    let in_creation_order = windows.clone();
    let windows = in_window_order(windows);
    assert_eq!(in_creation_order, windows, "the jobs were created in window order");
    assert_tiles(&windows, start);

    let schedule = get(&app, &id).await;
    assert!(!schedule.last_succeeded_job_id.is_empty(), "{schedule:?}");
    assert_eq!(schedule.last_job_id, jobs_of(&app, &id).await.last().map(|job| job.job_id.clone()).unwrap_or_default());
    app.stop().await;
}

#[tokio::test]
async fn a_paused_schedule_starts_nothing_and_catches_up_in_order_when_resumed() {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 4;
    let emulator = TestEmulator::spawn(config).await;
    let app = spawn_app_with(options(Some(&emulator), |_| {})).await;
    let start = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(2);
    let id = create(&app, every_second(start)).await.schedule_id;
    until(&app, &id, Duration::from_secs(10), 3, |schedule| schedule.windows_started >= 2).await;

    let paused = set_paused(&app, &id, true).await;
    assert!(paused.paused);
    let started = get(&app, &id).await.windows_started;
    let jobs_before = jobs_of(&app, &id).await.len();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(get(&app, &id).await.windows_started, started, "no window starts while paused");
    assert_eq!(jobs_of(&app, &id).await.len(), jobs_before, "no job while paused");

    let resumed = set_paused(&app, &id, false).await;
    assert!(!resumed.paused);
    // The three windows that ended while paused, and the next.
    until(&app, &id, Duration::from_secs(15), 3, |schedule| schedule.windows_started >= started + 4).await;
    let jobs = jobs_of(&app, &id).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jobs_of(&app, &id).await.iter().take(jobs.len()).any(|job| !job.state().is_terminal()) {
        assert!(tokio::time::Instant::now() < deadline, "the jobs did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let windows = windows_received(&app, &emulator, &jobs).await;
    assert_tiles(&windows, start);
    app.stop().await;
}

#[tokio::test]
async fn a_restart_on_the_same_state_directory_neither_skips_nor_repeats_a_window() {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 4;
    let emulator = TestEmulator::spawn(config).await;
    let dir = std::env::temp_dir().join(format!("stream-export-schedules-{}", uuid::Uuid::new_v4()));
    let service = || {
        let dir = dir.clone();
        options(Some(&emulator), move |settings| settings.state = StateSettings::Dir(dir.clone()))
    };
    let app = spawn_app_with(service()).await;
    let start = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(3);
    let id = create(&app, every_second(start)).await.schedule_id;
    until(&app, &id, Duration::from_secs(10), 3, |schedule| schedule.windows_started >= 4).await;
    app.stop().await;
    // Down for about three windows.
    tokio::time::sleep(Duration::from_millis(3_000)).await;

    let restarted = spawn_app_with(service()).await;
    let before = get(&restarted, &id).await.windows_started;
    until(&restarted, &id, Duration::from_secs(15), 3, |schedule| schedule.windows_started >= before + 4).await;
    let jobs = jobs_of(&restarted, &id).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jobs_of(&restarted, &id).await.iter().take(jobs.len()).any(|job| !job.state().is_terminal()) {
        assert!(tokio::time::Instant::now() < deadline, "the jobs did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let windows = windows_received(&restarted, &emulator, &jobs).await;
    assert_tiles(&windows, start);
    restarted.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn every_nth_window_of_full_every_exports_everything_up_to_its_end() {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = 4;
    let emulator = TestEmulator::spawn(config).await;
    let app = spawn_app_with(options(Some(&emulator), |_| {})).await;
    let start = Utc::now().trunc_subsecs(0) - chrono::Duration::seconds(4);
    let id = create(&app, ExportSchedule { full_every: 2, ..every_second(start) }).await.schedule_id;
    until(&app, &id, Duration::from_secs(10), 3, |schedule| schedule.windows_started >= 4).await;
    let jobs: Vec<ExportJob> = jobs_of(&app, &id).await.into_iter().take(4).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while jobs_of(&app, &id).await.iter().take(4).any(|job| !job.state().is_terminal()) {
        assert!(tokio::time::Instant::now() < deadline, "the jobs did not end");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let windows = windows_received(&app, &emulator, &jobs).await;
    let full: Vec<bool> = windows.iter().map(|(since, _)| since.is_none()).collect();
    assert_eq!(full, [false, true, false, true], "{windows:?}");
    app.stop().await;
}

#[tokio::test]
async fn bad_schedules_and_updates_are_refused_with_the_field_named_and_nothing_started() {
    let app = spawn_app_with(options(None, |settings| {
        settings.schedules.max_per_caller = 2;
        settings.jobs.max_channels = 2;
    }))
    .await;
    let mut client = app.client.clone();
    let now = Utc::now().trunc_subsecs(0);
    let refused = |schedule: Option<ExportSchedule>, request_id: &str| CreateExportScheduleRequest {
        schedule,
        request_id: request_id.into(),
    };
    let cases: Vec<(CreateExportScheduleRequest, &str)> = vec![
        (refused(None, ""), "schedule"),
        (refused(Some(ExportSchedule { template: None, ..every_second(now) }), ""), "schedule.template"),
        (refused(Some(ExportSchedule { interval: Some(seconds(0)), ..every_second(now) }), ""), "schedule.interval"),
        (refused(Some(ExportSchedule { interval: None, ..every_second(now) }), ""), "schedule.interval"),
        (refused(Some(ExportSchedule { start_time: None, ..every_second(now) }), ""), "schedule.start_time"),
        (refused(Some(ExportSchedule { lag: Some(seconds(8 * 24 * 3600)), ..every_second(now) }), ""), "schedule.lag"),
        (refused(Some(ExportSchedule { lag: Some(seconds(-1)), ..every_second(now) }), ""), "schedule.lag"),
        (
            refused(
                Some(ExportSchedule { start_time: Some(at(now - chrono::Duration::days(2))), ..every_second(now) }),
                "",
            ),
            "schedule.start_time",
        ),
        (refused(Some(every_second(now)), "not-a-uuid"), "request_id"),
        (
            refused(
                Some(ExportSchedule {
                    start_time: Some(prost_types::Timestamp { seconds: now.timestamp(), nanos: 123_456_789 }),
                    ..every_second(now)
                }),
                "",
            ),
            "schedule.start_time",
        ),
        (
            refused(
                Some(ExportSchedule {
                    template: Some(CreateExportJobRequest {
                        selector: Some(Selector::Users(UserList { user_ids: vec!["u1".into()] })),
                        ..Default::default()
                    }),
                    ..every_second(now)
                }),
                "",
            ),
            "schedule.template.users",
        ),
        (
            refused(
                Some(ExportSchedule {
                    template: Some(CreateExportJobRequest {
                        selector: Some(Selector::Channels(ChannelList {
                            channels: vec![ChannelRef {
                                r#type: "messaging".into(),
                                id: "bulk-000000".into(),
                                messages_since: Some(at(now)),
                                ..Default::default()
                            }],
                        })),
                        ..Default::default()
                    }),
                    ..every_second(now)
                }),
                "",
            ),
            "schedule.template.channels.channels[0]",
        ),
        (
            refused(
                Some(ExportSchedule {
                    template: Some(CreateExportJobRequest { selector: None, ..Default::default() }),
                    ..every_second(now)
                }),
                "",
            ),
            "schedule.template.selector",
        ),
    ];
    for (request, field) in cases {
        let status = client.create_export_schedule(request.clone()).await.expect_err(field);
        let details = assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST");
        assert!(violated_fields(&details).iter().any(|found| found == field), "{field}: {status:?}");
    }
    let three = CreateExportJobRequest {
        selector: Some(Selector::Channels(ChannelList { channels: channels(3) })),
        ..Default::default()
    };
    let too_large = refused(Some(ExportSchedule { template: Some(three), ..every_second(now) }), "");
    let status = client.create_export_schedule(too_large).await.unwrap_err();
    let details = assert_status(&status, Code::ResourceExhausted, "JOB_TOO_LARGE");
    assert_eq!(violated_fields(&details), ["schedule.template.channels.channels"]);
    let listed = client.list_export_schedules(ListExportSchedulesRequest::default()).await.unwrap().into_inner();
    assert!(listed.schedules.is_empty(), "nothing was stored");

    // Idempotent creates; the same request id with another schedule is refused.
    let request_id = uuid::Uuid::new_v4().to_string();
    let later = now + chrono::Duration::hours(1);
    let first =
        client.create_export_schedule(refused(Some(every_second(later)), &request_id)).await.unwrap().into_inner();
    let again =
        client.create_export_schedule(refused(Some(every_second(later)), &request_id)).await.unwrap().into_inner();
    assert_eq!(first.schedule_id, again.schedule_id);
    let other = ExportSchedule { interval: Some(seconds(2)), ..every_second(later) };
    let status = client.create_export_schedule(refused(Some(other), &request_id)).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "REQUEST_ID_REUSED");

    // The caller's cap.
    client.create_export_schedule(refused(Some(every_second(later)), "")).await.unwrap();
    let status = client.create_export_schedule(refused(Some(every_second(later)), "")).await.unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "SCHEDULE_LIMIT_REACHED");

    // Updates name their fields; an unknown one is refused.
    let update = |paths: Vec<&str>, schedule: ExportSchedule| UpdateExportScheduleRequest {
        schedule: Some(schedule),
        update_mask: Some(prost_types::FieldMask { paths: paths.into_iter().map(str::to_owned).collect() }),
    };
    let id = first.schedule_id.clone();
    let named = ExportSchedule { schedule_id: id.clone(), ..Default::default() };
    for (paths, field) in
        [(vec!["owner"], "update_mask"), (vec![], "update_mask"), (vec!["interval"], "schedule.interval")]
    {
        let status = client.update_export_schedule(update(paths, named.clone())).await.unwrap_err();
        let details = assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST");
        assert_eq!(violated_fields(&details), [field], "{status:?}");
    }
    let longer = ExportSchedule { interval: Some(seconds(3600)), lag: Some(seconds(60)), ..named.clone() };
    let changed = client.update_export_schedule(update(vec!["interval", "lag"], longer)).await.unwrap().into_inner();
    assert_eq!((changed.interval, changed.lag), (Some(seconds(3600)), Some(seconds(60))));
    assert_eq!(changed.template, first.template, "fields not named stay");
    let cleared = client.update_export_schedule(update(vec!["lag"], named.clone())).await.unwrap().into_inner();
    assert_eq!(cleared.lag, Some(seconds(15 * 60)), "a lag cleared is the default, as at create");

    // Unknown and malformed ids; a deleted schedule is gone, its id unknown.
    let status = client.get_export_schedule(GetExportScheduleRequest { schedule_id: "nope".into() }).await.unwrap_err();
    assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST");
    let unknown = uuid::Uuid::new_v4().to_string();
    let status = client.get_export_schedule(GetExportScheduleRequest { schedule_id: unknown }).await.unwrap_err();
    assert_status(&status, Code::NotFound, "SCHEDULE_NOT_FOUND");
    client.delete_export_schedule(DeleteExportScheduleRequest { schedule_id: id.clone() }).await.unwrap();
    let status = client.get_export_schedule(GetExportScheduleRequest { schedule_id: id.clone() }).await.unwrap_err();
    assert_status(&status, Code::NotFound, "SCHEDULE_NOT_FOUND");
    let status = client.delete_export_schedule(DeleteExportScheduleRequest { schedule_id: id }).await.unwrap_err();
    assert_status(&status, Code::NotFound, "SCHEDULE_NOT_FOUND");
    let listing = ListExportJobsRequest { schedule_id: "nope".into(), ..Default::default() };
    let status = client.list_export_jobs(listing).await.unwrap_err();
    let details = assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST");
    assert_eq!(violated_fields(&details), ["schedule_id"]);
    assert_eq!(app.emulator.exports_created().await, 0, "no schedule above started a window");
    app.stop().await;
}

#[tokio::test]
async fn schedules_are_listed_newest_first_in_pages() {
    let app = spawn_app_with(options(None, |_| {})).await;
    let later = Utc::now().trunc_subsecs(0) + chrono::Duration::hours(1);
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(create(&app, every_second(later)).await.schedule_id);
    }
    created.reverse();
    let mut listed = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListExportSchedulesRequest { page_size: 2, page_token };
        let page = app.client.clone().list_export_schedules(request).await.unwrap().into_inner();
        assert!(page.schedules.len() <= 2);
        listed.extend(page.schedules.into_iter().map(|schedule| schedule.schedule_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, created);
    app.stop().await;
}
