//! `schedule …`: export schedules, an export job of every window of time that the service starts
//! on its own. What each window exports is read and checked as `job create` reads it (the
//! template's selector, options and archive), before anything is sent; `schedule pause` and
//! `schedule resume` change only `paused`.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use prost_types::{FieldMask, Timestamp};
use serde_json::json;
use tonic_types::StatusExt;

use super::{
    ScheduleCreateArgs, Session,
    export::{parse_time, unary, with_retries},
    failure::Failure,
    job::{lines_wanted, template_request},
    list::table,
    progress::Mode,
    render::{instant, schedule_line},
};
use crate::{
    contract::json::from_struct,
    proto::{
        CreateExportJobRequest, CreateExportScheduleRequest, DeleteExportScheduleRequest, ExportFormatVersion,
        ExportSchedule, GetExportScheduleRequest, ListExportSchedulesRequest, UpdateExportScheduleRequest,
        create_export_job_request::Selector,
    },
};

/// The page size asked of the service.
const PAGE_SIZE: usize = 100;

/// The `CreateExportScheduleRequest` that `schedule create`'s arguments describe: the durations
/// and the start parsed, the template read as `job create` reads its input, each refused (exit 2)
/// naming its flag before anything is sent.
pub fn create_request(args: &ScheduleCreateArgs) -> Result<CreateExportScheduleRequest, Failure> {
    if args.template.users_file.is_some() {
        return Err(Failure::Usage(
            "--users-file: a schedule exports channels, each window's messages (users have no messages to window); \
             give --channels-file FILE or --query JSON, or export users with `job create --users-file`"
                .into(),
        ));
    }
    let interval = duration("--every", &args.every)?;
    let lag = args.lag.as_deref().map(|text| duration("--lag", text)).transpose()?;
    let start_time = match parse_time(&args.start) {
        Ok(Some(start)) => start,
        Ok(None) => {
            return Err(Failure::Usage("--start: give the start of the first window (a date or a time)".into()));
        }
        Err(why) => return Err(Failure::Usage(format!("--start {why}"))),
    };
    let request_id = match &args.request_id {
        Some(id) => match uuid::Uuid::parse_str(id) {
            Ok(_) => id.clone(),
            Err(error) => return Err(Failure::Usage(format!("--request-id {id:?} is not a UUID: {error}"))),
        },
        // A create retried after UNAVAILABLE returns the first schedule, never makes a second.
        None => uuid::Uuid::new_v4().to_string(),
    };
    let template = template_request(&args.template)?;
    refuse_channel_windows(&template)?;
    Ok(CreateExportScheduleRequest {
        schedule: Some(ExportSchedule {
            template: Some(template),
            interval: Some(interval),
            start_time: Some(start_time),
            lag,
            paused: args.paused,
            full_every: args.full_every.unwrap_or(0),
            ..Default::default()
        }),
        request_id,
    })
}

/// A duration flag in a person's terms (`24h`, `1d`, `15m`, `90s`, `1h 30m`), as protobuf's.
fn duration(flag: &str, text: &str) -> Result<prost_types::Duration, Failure> {
    let usage = |why: String| Failure::Usage(format!("{flag} {text:?}: {why} (a duration such as 24h, 1d, 15m, 90s)"));
    let parsed = humantime::parse_duration(text.trim()).map_err(|error| usage(error.to_string()))?;
    let seconds = i64::try_from(parsed.as_secs()).map_err(|_| usage("too long".into()))?;
    Ok(prost_types::Duration { seconds, nanos: parsed.subsec_nanos() as i32 })
}

/// A schedule sets each window itself: a channel of `--channels-file` with a window of its own
/// would be refused by the service, so it is refused here, naming the channel.
fn refuse_channel_windows(template: &CreateExportJobRequest) -> Result<(), Failure> {
    let Some(Selector::Channels(list)) = &template.selector else { return Ok(()) };
    match list.channels.iter().find(|channel| channel.messages_since.is_some() || channel.messages_until.is_some()) {
        Some(channel) => Err(Failure::Usage(format!(
            "--channels-file: channel {}:{} has a window of its own (@SINCE..UNTIL); a schedule sets each \
             window's, so list its channels as TYPE:ID alone",
            channel.r#type, channel.id
        ))),
        None => Ok(()),
    }
}

/// The flag of each `schedule create` field the service may name in a `BadRequest`.
const FLAGS: &[(&str, &str)] = &[
    ("schedule.interval", "--every"),
    ("schedule.start_time", "--start"),
    ("schedule.lag", "--lag"),
    ("schedule.full_every", "--full-every"),
    ("schedule.template.archive_uri", "--archive"),
    ("request_id", "--request-id"),
];

/// For a create the service refused as invalid: the flags its `BadRequest` fields stand for.
fn flags_named(failure: &Failure) -> Option<String> {
    let details = failure.status()?.get_error_details();
    let bad = details.bad_request()?;
    let mut flags: Vec<&str> = Vec::new();
    for violation in &bad.field_violations {
        let flag = FLAGS.iter().find(|(field, _)| violation.field == *field).map(|(_, flag)| *flag);
        if let Some(flag) = flag.filter(|flag| !flags.contains(flag)) {
            flags.push(flag);
        }
    }
    (!flags.is_empty()).then(|| format!("see {}", flags.join(", ")))
}

/// `schedule create`: creates the schedule; prints it (its id alone on stdout, for `$(...)`).
pub async fn create(session: &mut Session, request: CreateExportScheduleRequest) -> Result<(), Failure> {
    let client = session.client.clone();
    let schedule = with_retries(session, "creating the schedule", || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.create_export_schedule(unary(request)).await.map(|r| r.into_inner()) }
    })
    .await
    .map_err(|failure| match flags_named(&failure) {
        Some(advice) => failure.advised(advice),
        None => failure,
    })?;
    let human = format!("created {}", describe(&schedule));
    session.display.result(schedule_line("schedule_created", &schedule), &human, Some(&schedule.schedule_id));
    Ok(())
}

/// `schedule get`: the schedule once.
pub async fn get(session: &mut Session, schedule_id: &str) -> Result<(), Failure> {
    let client = session.client.clone();
    let schedule = with_retries(session, "getting the schedule", || {
        let mut client = client.clone();
        let schedule_id = schedule_id.to_owned();
        async move {
            client.get_export_schedule(unary(GetExportScheduleRequest { schedule_id })).await.map(|r| r.into_inner())
        }
    })
    .await?;
    print_schedule(session, &schedule);
    Ok(())
}

/// `schedule pause` and `schedule resume`: `UpdateExportSchedule` of `paused` alone; prints the
/// schedule as the service answered.
pub async fn set_paused(session: &mut Session, schedule_id: &str, paused: bool) -> Result<(), Failure> {
    let client = session.client.clone();
    let action = if paused { "pausing the schedule" } else { "resuming the schedule" };
    let schedule = with_retries(session, action, || {
        let mut client = client.clone();
        let request = UpdateExportScheduleRequest {
            schedule: Some(ExportSchedule { schedule_id: schedule_id.to_owned(), paused, ..Default::default() }),
            update_mask: Some(FieldMask { paths: vec!["paused".into()] }),
        };
        async move { client.update_export_schedule(unary(request)).await.map(|r| r.into_inner()) }
    })
    .await?;
    print_schedule(session, &schedule);
    Ok(())
}

/// `schedule delete`: the schedule starts no more windows; its jobs run on.
pub async fn delete(session: &mut Session, schedule_id: &str) -> Result<(), Failure> {
    let client = session.client.clone();
    with_retries(session, "deleting the schedule", || {
        let mut client = client.clone();
        let schedule_id = schedule_id.to_owned();
        async move { client.delete_export_schedule(unary(DeleteExportScheduleRequest { schedule_id })).await }
    })
    .await?;
    let value = json!({"event": "result", "schedule_id": schedule_id, "deleted": true});
    let human = format!("deleted schedule {schedule_id}; the jobs it started stay, and run on");
    session.display.result(value, &human, None);
    Ok(())
}

/// `schedule list`: up to `limit` schedules, newest first, following pages as needed.
pub async fn list(session: &mut Session, limit: usize) -> Result<(), Failure> {
    let mut schedules = Vec::new();
    let mut page_token = String::new();
    while schedules.len() < limit {
        let client = session.client.clone();
        let page_size = i32::try_from((limit - schedules.len()).min(PAGE_SIZE)).unwrap_or(i32::MAX);
        let token = page_token.clone();
        let page = with_retries(session, "listing schedules", || {
            let (mut client, page_token) = (client.clone(), token.clone());
            async move {
                client
                    .list_export_schedules(unary(ListExportSchedulesRequest { page_size, page_token }))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
        schedules.extend(page.schedules);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    schedules.truncate(limit);
    if lines_wanted(session) {
        for schedule in &schedules {
            say!("{}", schedule_line("schedule", schedule));
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = schedules
        .iter()
        .map(|schedule| {
            vec![
                schedule.schedule_id.clone(),
                schedule.owner.clone(),
                state(schedule).to_owned(),
                schedule.interval.as_ref().map_or_else(String::new, human_duration),
                schedule.next_window_start.as_ref().map_or_else(String::new, time_text),
                schedule.windows_started.to_string(),
                subject(schedule.template.as_ref()),
            ]
        })
        .collect();
    table(
        &["SCHEDULE ID", "OWNER", "STATE", "EVERY", "NEXT WINDOW (UTC)", "WINDOWS", "EXPORTS"],
        &rows,
        "(no schedules)",
    );
    Ok(())
}

/// Prints `schedule` as the answer of a command: JSON with `--json`, its description otherwise.
fn print_schedule(session: &mut Session, schedule: &ExportSchedule) {
    session.display.clear();
    if session.display.mode() == Mode::Json {
        say!("{}", schedule_line("result", schedule));
    } else {
        say!("{}", describe(schedule));
    }
}

/// `PAUSED` or `ACTIVE`.
fn state(schedule: &ExportSchedule) -> &'static str {
    if schedule.paused { "PAUSED" } else { "ACTIVE" }
}

/// A duration as a person writes it: `1day`, `6h`, `15m`, `1m 30s`.
fn human_duration(duration: &prost_types::Duration) -> String {
    let exact = Duration::new(duration.seconds.max(0).unsigned_abs(), duration.nanos.max(0).unsigned_abs());
    humantime::format_duration(exact).to_string()
}

/// An instant in RFC 3339, UTC, with a fraction only when it has one.
fn time_text(timestamp: &Timestamp) -> String {
    instant(timestamp).map_or_else(String::new, |at| rfc3339(&at))
}

fn rfc3339(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// `at` moved by `duration`; nothing when either is missing or the sum is out of range.
fn after(at: Option<DateTime<Utc>>, duration: Option<&prost_types::Duration>) -> Option<DateTime<Utc>> {
    let duration = duration?;
    let by = TimeDelta::try_seconds(duration.seconds)? + TimeDelta::nanoseconds(i64::from(duration.nanos));
    at?.checked_add_signed(by)
}

/// What each window exports, in a few words: `3 channels`, `the channels matching {…}`.
fn subject(template: Option<&CreateExportJobRequest>) -> String {
    match template.and_then(|template| template.selector.as_ref()) {
        Some(Selector::Channels(list)) => format!("{} channels", list.channels.len()),
        Some(Selector::ChannelQuery(query)) => match query.filter.as_ref().and_then(|filter| filter.to_struct().ok()) {
            Some(filter) => format!("the channels matching {}", from_struct(&filter)),
            None => "the channels of a query".into(),
        },
        Some(Selector::Users(list)) => format!("{} users", list.user_ids.len()),
        None => String::new(),
    }
}

/// The schedule in a few lines for a person: state, interval and lag; what each window exports
/// and where it archives; the next window and when its job starts; the windows started, the
/// jobs running and the last of each end.
fn describe(schedule: &ExportSchedule) -> String {
    let id = |id: &str| if id.is_empty() { "none".to_owned() } else { id.to_owned() };
    let interval = schedule.interval.as_ref().map_or_else(|| "?".into(), human_duration);
    let lag = schedule.lag.as_ref().map_or_else(|| "the service's default".into(), human_duration);
    let mut text = format!("schedule {}: {}, every {interval}, lag {lag}", schedule.schedule_id, state(schedule));
    if schedule.full_every > 0 {
        text.push_str(&format!(", a full export every {} windows", schedule.full_every));
    }
    if let Some(template) = &schedule.template {
        text.push_str(&format!("\nexports: {}", subject(Some(template))));
        if template.version() == ExportFormatVersion::V2 {
            text.push_str(", format v2");
        }
        if !template.archive_uri.is_empty() {
            let verify = if template.verify { " (read back)" } else { "" };
            text.push_str(&format!("\narchive: {}{verify}", template.archive_uri));
        }
    }
    if let Some(start) = schedule.start_time.as_ref() {
        text.push_str(&format!("\nfirst window: {}", time_text(start)));
    }
    let next = schedule.next_window_start.as_ref().and_then(instant);
    if let Some(next) = next {
        text.push_str(&format!("\nnext window: {}", rfc3339(&next)));
        let end = after(Some(next), schedule.interval.as_ref());
        if let Some(end) = end {
            text.push_str(&format!("..{}", rfc3339(&end)));
        }
        if let Some(starts) = after(end, schedule.lag.as_ref()) {
            text.push_str(&format!(", its job starts after {}", rfc3339(&starts)));
        }
    }
    let running = match schedule.running_job_ids.as_slice() {
        [] => "none".to_owned(),
        ids => ids.join(", "),
    };
    text.push_str(&format!("\nwindows started: {}; running jobs: {running}", schedule.windows_started));
    text.push_str(&format!(
        "\nlast job: {}; last succeeded: {}; last failed: {}; last cancelled: {}",
        id(&schedule.last_job_id),
        id(&schedule.last_succeeded_job_id),
        id(&schedule.last_failed_job_id),
        id(&schedule.last_cancelled_job_id)
    ));
    if !schedule.owner.is_empty() {
        text.push_str(&format!("\nowner: {}", schedule.owner));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_a_persons_terms_and_a_bad_one_names_its_flag() {
        for (text, seconds, nanos) in [("24h", 86_400, 0), ("1d", 86_400, 0), ("15m", 900, 0), ("90s", 90, 0)] {
            assert_eq!(duration("--every", text).unwrap(), prost_types::Duration { seconds, nanos }, "{text}");
        }
        assert_eq!(duration("--lag", "1h 30m").unwrap().seconds, 5_400);
        assert_eq!(duration("--lag", "1500ms").unwrap(), prost_types::Duration { seconds: 1, nanos: 500_000_000 });
        for bad in ["24x", "", "15", "-1h"] {
            let Err(Failure::Usage(message)) = duration("--lag", bad) else { panic!("{bad:?} is refused") };
            assert!(message.starts_with("--lag "), "{message}");
        }
    }

    #[test]
    fn a_schedule_is_described_with_its_next_window_and_when_its_job_starts() {
        let schedule = ExportSchedule {
            schedule_id: "s1".into(),
            interval: Some(prost_types::Duration { seconds: 86_400, nanos: 0 }),
            lag: Some(prost_types::Duration { seconds: 900, nanos: 0 }),
            next_window_start: Some(Timestamp { seconds: 1_767_225_600, nanos: 0 }),
            windows_started: 2,
            running_job_ids: vec!["j2".into()],
            last_job_id: "j2".into(),
            last_succeeded_job_id: "j1".into(),
            ..Default::default()
        };
        let text = describe(&schedule);
        assert!(text.starts_with("schedule s1: ACTIVE, every 1day, lag 15m\n"), "{text}");
        assert!(
            text.contains(
                "next window: 2026-01-01T00:00:00Z..2026-01-02T00:00:00Z, its job starts after 2026-01-02T00:15:00Z"
            ),
            "{text}"
        );
        assert!(text.contains("windows started: 2; running jobs: j2"), "{text}");
        assert!(text.contains("last job: j2; last succeeded: j1; last failed: none"), "{text}");
    }
}
