//! Export schedules as tests check them: a schedule's jobs, and the windows Stream received
//! for them (read back from the emulator), which must tile time.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use reqwest::Method;
use stream_export::proto::{
    ExportJob, ExportSchedule, GetExportScheduleRequest, ListExportJobTasksRequest, ListExportJobsRequest,
    export_service_client::ExportServiceClient,
};
use tonic::transport::Channel;

use super::emulator::TestEmulator;

/// A window as Stream received it: `messages_since` (none for a full export) and
/// `messages_until`, RFC 3339 with microseconds.
pub type Received = (Option<String>, String);

/// The schedule as the service shows it now.
pub async fn schedule(client: &mut ExportServiceClient<Channel>, schedule_id: &str) -> ExportSchedule {
    let request = GetExportScheduleRequest { schedule_id: schedule_id.into() };
    client.get_export_schedule(request).await.expect("the schedule is read").into_inner()
}

/// Every job of the schedule (as `ListExportJobs` filters them), oldest first.
pub async fn jobs_of(client: &mut ExportServiceClient<Channel>, schedule_id: &str) -> Vec<ExportJob> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListExportJobsRequest { page_size: 1_000, page_token, schedule_id: schedule_id.into() };
        let page = client.list_export_jobs(request).await.expect("jobs").into_inner();
        assert!(page.jobs.iter().all(|job| job.schedule_id == schedule_id), "only the schedule's jobs: {page:?}");
        all.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    all.reverse();
    all
}

/// The window Stream received for each job's tasks, one per job (every channel of a job has
/// the same window).
pub async fn windows_received(
    client: &mut ExportServiceClient<Channel>,
    emulator: &TestEmulator,
    jobs: &[ExportJob],
) -> Vec<Received> {
    let mut windows = Vec::new();
    for job in jobs {
        let request =
            ListExportJobTasksRequest { job_id: job.job_id.clone(), page_size: 100, page_token: String::new() };
        let tasks = client.list_export_job_tasks(request).await.expect("tasks").into_inner().tasks;
        let mut seen = BTreeSet::new();
        for task in tasks.iter().flat_map(|task| task.earlier_task_ids.iter().chain([&task.task_id])) {
            let view = emulator.control(Method::GET, &format!("tasks/{task}"), None).await;
            for channel in view["channels"].as_array().expect("channels") {
                let since = channel["messages_since"].as_str().map(str::to_owned);
                let until = channel["messages_until"].as_str().expect("every window has an end").to_owned();
                seen.insert((since, until));
            }
        }
        assert_eq!(seen.len(), 1, "one window per job: {seen:?}");
        windows.extend(seen);
    }
    windows
}

fn parse(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).expect("RFC 3339").with_timezone(&Utc)
}

/// Checks that `windows`, in the order given, start at `start` and tile time: each ends 1 µs
/// before the next begins (no gap, no overlap, none twice).
pub fn assert_tiles(windows: &[Received], start: DateTime<Utc>) {
    let first = windows.first().and_then(|(since, _)| since.as_deref()).map(parse);
    assert_eq!(first, Some(start), "the first window starts at start_time");
    for pair in windows.windows(2) {
        let (_, until) = &pair[0];
        let (since, _) = &pair[1];
        let since = parse(since.as_deref().expect("an incremental window has a start"));
        assert_eq!(parse(until) + chrono::Duration::microseconds(1), since, "a gap or an overlap: {pair:?}");
    }
}

/// The windows in window order (by start; a full export first among equals).
pub fn in_window_order(mut windows: Vec<Received>) -> Vec<Received> {
    windows.sort_by_key(|(_, until)| parse(until));
    windows
}
