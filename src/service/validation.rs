//! Checks a request before anything goes upstream, reporting every problem at once with a
//! field path a client can point at (`channels[3].id`).

use std::collections::{HashMap, hash_map::Entry};

use chrono::{DateTime, Utc};
use tonic_types::FieldViolation;

use crate::{
    export_file::Encoding,
    jobs::schedules::{MAX_LAG, MIN_INTERVAL},
    proto::{
        ChannelRef, CreateExportJobRequest, ExportChannelsRequest, ExportFormatVersion, ExportSchedule,
        ExportUsersRequest, RecordEncoding, create_export_job_request::Selector,
    },
    upstream::wire::{ChannelExport, ExportChannelsBody, ExportUsersBody},
};

/// Most channels or users one upstream export accepts.
pub const MAX_ITEMS_PER_EXPORT: usize = 25;
/// Longest channel type or channel id Stream accepts.
pub const MAX_CHANNEL_FIELD_LEN: usize = 64;
/// Longest user id Stream accepts.
pub const MAX_USER_ID_LEN: usize = 255;

/// Collects the problems of one request.
#[derive(Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldViolation>> {
        if self.0.is_empty() { Ok(value) } else { Err(self.0) }
    }
}

/// Validates an `ExportChannels` request and builds the upstream body.
pub fn export_channels(request: &ExportChannelsRequest) -> Result<ExportChannelsBody, Vec<FieldViolation>> {
    let mut problems = Violations::default();
    check_count(&mut problems, "channels", request.channels.len());
    let mut first_seen: HashMap<(&str, &str), usize> = HashMap::new();
    let mut channels = Vec::with_capacity(request.channels.len());
    for (index, channel) in request.channels.iter().enumerate() {
        let field = format!("channels[{index}]");
        check_channel_field(
            &mut problems,
            &format!("{field}.type"),
            &channel.r#type,
            is_type_char,
            "letters, digits, '_' and '-'",
        );
        check_channel_field(
            &mut problems,
            &format!("{field}.id"),
            &channel.id,
            is_id_char,
            "letters, digits, '!', '-', '_' and '@'",
        );
        match first_seen.entry((&channel.r#type, &channel.id)) {
            Entry::Occupied(first) => problems
                .add(&field, format!("duplicates channels[{}] ({}:{})", first.get(), channel.r#type, channel.id)),
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
        channels.push(channel_export(&mut problems, &field, channel));
    }
    let version = match ExportFormatVersion::try_from(request.version) {
        Ok(ExportFormatVersion::Unspecified) => None,
        Ok(ExportFormatVersion::V1) => Some("v1"),
        Ok(ExportFormatVersion::V2) => Some("v2"),
        Err(_) => {
            problems.add("version", format!("unknown export format version {}", request.version));
            None
        }
    };
    check_request_id(&mut problems, &request.request_id);
    problems.finish(ExportChannelsBody {
        channels,
        include_truncated_messages: request.include_truncated_messages,
        include_soft_deleted_channels: request.include_soft_deleted_channels,
        clear_deleted_message_text: request.clear_deleted_message_text,
        export_users: request.export_users,
        version,
    })
}

/// Validates an `ExportUsers` request and builds the upstream body.
pub fn export_users(request: &ExportUsersRequest) -> Result<ExportUsersBody, Vec<FieldViolation>> {
    let mut problems = Violations::default();
    check_count(&mut problems, "user_ids", request.user_ids.len());
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    for (index, user_id) in request.user_ids.iter().enumerate() {
        let field = format!("user_ids[{index}]");
        check_user_id(&mut problems, &field, user_id);
        match first_seen.entry(user_id) {
            Entry::Occupied(first) => problems.add(&field, format!("duplicates user_ids[{}] ({user_id})", first.get())),
            Entry::Vacant(slot) => {
                slot.insert(index);
            }
        }
    }
    check_request_id(&mut problems, &request.request_id);
    problems.finish(ExportUsersBody { user_ids: request.user_ids.clone() })
}

/// Validates a `CreateExportJob` request: its selector (at least one channel or user, each by
/// the rules of `ExportChannels`/`ExportUsers`; duplicates are allowed, and dropped when the
/// job is planned), its window, options and `request_id`. The cap on a list's length is the
/// handler's (`RESOURCE_EXHAUSTED`).
pub fn create_export_job(request: &CreateExportJobRequest) -> Result<(), Vec<FieldViolation>> {
    let mut problems = Violations::default();
    let count = |problems: &mut Violations, field: &str, count: usize| {
        if count == 0 {
            problems.add(field, "must list at least one entry");
        }
    };
    match &request.selector {
        None => problems.add("selector", "is required: channels, channel_query or users"),
        Some(Selector::Channels(list)) => {
            count(&mut problems, "channels.channels", list.channels.len());
            for (index, channel) in list.channels.iter().enumerate() {
                let field = format!("channels.channels[{index}]");
                let type_rule = "letters, digits, '_' and '-'";
                check_channel_field(&mut problems, &format!("{field}.type"), &channel.r#type, is_type_char, type_rule);
                let id_rule = "letters, digits, '!', '-', '_' and '@'";
                check_channel_field(&mut problems, &format!("{field}.id"), &channel.id, is_id_char, id_rule);
                channel_export(&mut problems, &field, channel);
            }
        }
        Some(Selector::ChannelQuery(query)) => {
            let empty =
                query.filter.as_ref().is_none_or(|filter| filter.to_struct().is_ok_and(|f| f.fields.is_empty()));
            if empty {
                problems.add("channel_query.filter", "is required and must not be empty, as Stream requires");
            }
        }
        Some(Selector::Users(list)) => {
            count(&mut problems, "users.user_ids", list.user_ids.len());
            for (index, user_id) in list.user_ids.iter().enumerate() {
                check_user_id(&mut problems, &format!("users.user_ids[{index}]"), user_id);
            }
        }
    }
    let window = ChannelRef {
        messages_since: request.messages_since,
        messages_until: request.messages_until,
        ..ChannelRef::default()
    };
    let mut window_problems = Violations::default();
    channel_export(&mut window_problems, "", &window);
    for problem in window_problems.0 {
        problems.add(problem.field.trim_start_matches('.'), problem.description);
    }
    if ExportFormatVersion::try_from(request.version).is_err() {
        problems.add("version", format!("unknown export format version {}", request.version));
    }
    check_request_id(&mut problems, &request.request_id);
    if !request.archive_uri.is_empty()
        && let Err(why) = crate::archive::Location::parse(&request.archive_uri)
    {
        problems.add("archive_uri", why);
    }
    if request.verify && request.archive_uri.is_empty() {
        problems.add("verify", "needs an archive_uri: only archived objects are read back");
    }
    problems.finish(())
}

/// Validates a job id and returns its canonical spelling (the service gives UUIDs).
pub fn job_id(job_id: &str) -> Result<String, Vec<FieldViolation>> {
    let mut problems = Violations::default();
    if job_id.is_empty() {
        problems.add("job_id", "is required");
    }
    let canonical = uuid::Uuid::try_parse(job_id).map(|uuid| uuid.hyphenated().to_string());
    if canonical.is_err() && !job_id.is_empty() {
        problems.add("job_id", "must be a job id as CreateExportJob returned it (a UUID)");
    }
    problems.finish(canonical.unwrap_or_default())
}

/// Checks a schedule id and returns its canonical spelling (a lower-case hyphenated UUID).
pub fn schedule_id(field: &str, schedule_id: &str) -> Result<String, Vec<FieldViolation>> {
    let mut problems = Violations::default();
    let canonical = uuid::Uuid::try_parse(schedule_id).map(|uuid| uuid.hyphenated().to_string());
    if schedule_id.is_empty() {
        problems.add(field, "is required");
    } else if canonical.is_err() {
        problems.add(field, "must be a schedule id as CreateExportSchedule returned it (a UUID)");
    }
    problems.finish(canonical.unwrap_or_default())
}

/// Checks an optional idempotency key (a UUID), as the submits' `request_id`.
pub fn request_id(request_id: &str) -> Result<(), Vec<FieldViolation>> {
    let mut problems = Violations::default();
    check_request_id(&mut problems, request_id);
    problems.finish(())
}

/// Validates the user id of an `ExportUser` request.
pub fn user_id(user_id: &str) -> Result<(), Vec<FieldViolation>> {
    let mut problems = Violations::default();
    check_user_id(&mut problems, "user_id", user_id);
    problems.finish(())
}

/// Validates a `ReadExport` request: its task id (in its canonical spelling, see [`task_id`])
/// and its record encoding.
pub fn read_export(task_id: &str, encoding: i32) -> Result<(String, Encoding), Vec<FieldViolation>> {
    let mut problems = Violations::default();
    let task_id = canonical_task_id(&mut problems, task_id);
    let encoding = match RecordEncoding::try_from(encoding) {
        Ok(RecordEncoding::Unspecified | RecordEncoding::Struct) => Encoding::Struct,
        Ok(RecordEncoding::Json) => Encoding::Json,
        Err(_) => {
            problems.add("encoding", format!("{encoding} is not a RecordEncoding (1: STRUCT, 2: JSON)"));
            Encoding::Struct
        }
    };
    problems.finish((task_id, encoding))
}

/// Validates a task id and returns its one canonical spelling.
///
/// Stream's task ids are UUIDs, and Stream (like the emulator) accepts every spelling of one:
/// upper case, braces, `urn:uuid:`, 32 hex digits. The registry, the policies, the hub and the
/// upstream call must all see the same string, or another spelling of a task would be a task
/// with no owner that policies cannot match, and a second poller. So the id is canonicalised
/// here, once, and everything after validation uses only that.
pub fn task_id(task_id: &str) -> Result<String, Vec<FieldViolation>> {
    let mut problems = Violations::default();
    let task_id = canonical_task_id(&mut problems, task_id);
    problems.finish(task_id)
}

/// The lower-case hyphenated form of a task id, or a violation (and an empty string).
fn canonical_task_id(problems: &mut Violations, task_id: &str) -> String {
    if task_id.is_empty() {
        problems.add("task_id", "is required");
        return String::new();
    }
    match uuid::Uuid::try_parse(task_id) {
        Ok(uuid) => uuid.hyphenated().to_string(),
        Err(_) => {
            problems.add(
                "task_id",
                "must be a task id as a submit returned it (a UUID, e.g. 0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10)",
            );
            String::new()
        }
    }
}

fn check_count(problems: &mut Violations, field: &str, count: usize) {
    if count == 0 || count > MAX_ITEMS_PER_EXPORT {
        problems.add(field, format!("must list 1 to {MAX_ITEMS_PER_EXPORT} entries, got {count}"));
    }
}

fn check_channel_field(problems: &mut Violations, field: &str, value: &str, allowed: fn(char) -> bool, rule: &str) {
    if value.is_empty() {
        problems.add(field, "is required");
    } else if value.chars().count() > MAX_CHANNEL_FIELD_LEN {
        problems.add(field, format!("must be at most {MAX_CHANNEL_FIELD_LEN} characters"));
    } else if let Some(bad) = value.chars().find(|c| !allowed(*c)) {
        problems.add(field, format!("contains {bad:?}; allowed are {rule}"));
    }
}

fn is_type_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-')
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '!' | '-' | '_' | '@')
}

/// Checks the time window of one channel and converts it.
fn channel_export(problems: &mut Violations, field: &str, channel: &ChannelRef) -> ChannelExport {
    let mut instant = |name: &str, timestamp: &Option<prost_types::Timestamp>| -> Option<DateTime<Utc>> {
        let timestamp = timestamp.as_ref()?;
        let converted = u32::try_from(timestamp.nanos)
            .ok()
            .filter(|nanos| *nanos < 1_000_000_000)
            .and_then(|nanos| DateTime::from_timestamp(timestamp.seconds, nanos));
        if converted.is_none() {
            problems.add(format!("{field}.{name}"), "is not a valid timestamp");
        }
        converted
    };
    let since = instant("messages_since", &channel.messages_since);
    let until = instant("messages_until", &channel.messages_until);
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        problems.add(format!("{field}.messages_until"), "must be later than messages_since");
    }
    ChannelExport {
        channel_type: channel.r#type.clone(),
        id: channel.id.clone(),
        messages_since: since,
        messages_until: until,
    }
}

fn check_user_id(problems: &mut Violations, field: &str, user_id: &str) {
    check_token(problems, field, user_id, MAX_USER_ID_LEN);
    // A user id is a path segment upstream (`/users/{id}/export`): `.` and `..` would be read
    // as dot segments by any proxy that normalises paths, and reach another endpoint.
    if matches!(user_id, "." | "..") {
        problems.add(field, "must not be \".\" or \"..\"");
    }
}

/// An identifier: present, not too long, no white space or control characters.
fn check_token(problems: &mut Violations, field: &str, value: &str, max_len: usize) {
    if value.is_empty() {
        problems.add(field, "is required");
    } else if value.chars().count() > max_len {
        problems.add(field, format!("must be at most {max_len} characters"));
    } else if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        problems.add(field, "must not contain white space or control characters");
    }
}

/// An idempotency key, when given, is a UUID (any version, any standard form).
fn check_request_id(problems: &mut Violations, request_id: &str) {
    if !request_id.is_empty() && uuid::Uuid::try_parse(request_id).is_err() {
        problems.add("request_id", "must be a UUID, e.g. 0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10");
    }
}

/// Validates what a caller sets of an `ExportSchedule` (`field` is its path, `schedule`): the
/// template (a job request over channels, without windows of its own), the interval, the
/// start and the lag. The template's window and `request_id` are the schedule's, not checked.
pub fn export_schedule(field: &str, schedule: &ExportSchedule) -> Result<(), Vec<FieldViolation>> {
    let mut problems = Violations::default();
    schedule_template(&mut problems, field, schedule.template.as_ref());
    schedule_timing(&mut problems, field, schedule);
    match &schedule.start_time {
        None => problems.add(format!("{field}.start_time"), "is required: the start of the first window"),
        Some(start)
            if DateTime::from_timestamp(start.seconds, 0).is_none() || !(0..1_000_000_000).contains(&start.nanos) =>
        {
            problems.add(format!("{field}.start_time"), "is not a valid timestamp");
        }
        Some(start) if start.nanos % 1_000 != 0 => {
            problems.add(format!("{field}.start_time"), "must be whole microseconds, as Stream's timestamps are");
        }
        Some(_) => {}
    }
    problems.finish(())
}

/// Validates the fields of a schedule that `UpdateExportSchedule` may change and `paths` names.
pub fn export_schedule_update(schedule: &ExportSchedule, paths: &[String]) -> Result<(), Vec<FieldViolation>> {
    let mut problems = Violations::default();
    if paths.is_empty() {
        problems.add(
            "update_mask",
            "is required: name the fields to change, of paused, template, interval, lag, full_every",
        );
    }
    for path in paths {
        match path.as_str() {
            "template" => schedule_template(&mut problems, "schedule", schedule.template.as_ref()),
            "interval" | "lag" => {}
            "paused" | "full_every" => {}
            other => problems.add(
                "update_mask",
                format!("cannot change {other:?}: only paused, template, interval, lag and full_every can change"),
            ),
        }
    }
    if paths.iter().any(|path| path == "interval" || path == "lag") {
        let mut timing = Violations::default();
        schedule_timing(&mut timing, "schedule", schedule);
        // Only the named fields' problems: the other one is not changing.
        timing.0.retain(|problem| paths.iter().any(|path| problem.field == format!("schedule.{path}")));
        problems.0.extend(timing.0);
    }
    problems.finish(())
}

fn schedule_template(problems: &mut Violations, field: &str, template: Option<&CreateExportJobRequest>) {
    let Some(template) = template else {
        return problems.add(format!("{field}.template"), "is required: the export job each window starts");
    };
    if matches!(template.selector, Some(Selector::Users(_))) {
        problems.add(
            format!("{field}.template.users"),
            "a schedule exports channels, whose messages have windows; a users export has none (use CreateExportJob)",
        );
        return;
    }
    if let Some(Selector::Channels(list)) = &template.selector {
        for (index, channel) in list.channels.iter().enumerate() {
            if channel.messages_since.is_some() || channel.messages_until.is_some() {
                problems.add(
                    format!("{field}.template.channels.channels[{index}]"),
                    "has a window of its own: a schedule sets every channel's window",
                );
            }
        }
    }
    let windowless = CreateExportJobRequest {
        messages_since: None,
        messages_until: None,
        request_id: String::new(),
        ..template.clone()
    };
    if let Err(found) = create_export_job(&windowless) {
        for problem in found {
            problems.add(format!("{field}.template.{}", problem.field), problem.description);
        }
    }
}

fn schedule_timing(problems: &mut Violations, field: &str, schedule: &ExportSchedule) {
    let valid =
        |duration: &prost_types::Duration| duration.seconds >= 0 && (0..1_000_000_000).contains(&duration.nanos);
    match &schedule.interval {
        None => problems.add(format!("{field}.interval"), "is required: the length of each window, e.g. 86400s"),
        Some(interval) if !valid(interval) || (interval.seconds as u64) < MIN_INTERVAL.as_secs() => {
            problems.add(format!("{field}.interval"), "must be at least 1s (schedules are meant for hours and days)");
        }
        Some(interval) if interval.nanos % 1_000 != 0 => {
            problems.add(format!("{field}.interval"), "must be whole microseconds, as Stream's timestamps are");
        }
        Some(_) => {}
    }
    if let Some(lag) = &schedule.lag {
        let too_long = u64::try_from(lag.seconds).is_ok_and(|seconds| seconds > MAX_LAG.as_secs());
        if !valid(lag) || too_long {
            problems.add(format!("{field}.lag"), format!("must be between 0s and {}s (7 days)", MAX_LAG.as_secs()));
        } else if lag.nanos % 1_000 != 0 {
            problems.add(format!("{field}.lag"), "must be whole microseconds, as Stream's timestamps are");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channel(kind: &str, id: &str) -> ChannelRef {
        ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }
    }

    fn fields(violations: &[FieldViolation]) -> Vec<&str> {
        violations.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let request = ExportChannelsRequest {
            channels: vec![
                channel("messaging", "general"),
                channel("", "x"),
                channel("messaging", "bad id"),
                channel("messaging", "general"),
            ],
            ..Default::default()
        };
        let violations = export_channels(&request).unwrap_err();
        assert_eq!(fields(&violations), ["channels[1].type", "channels[2].id", "channels[3]"]);
        assert!(violations[2].description.contains("channels[0]"));
    }

    #[test]
    fn a_later_duplicate_points_at_the_first_occurrence() {
        let request = ExportChannelsRequest {
            channels: vec![channel("t", "a"), channel("t", "a"), channel("t", "a")],
            ..Default::default()
        };
        let violations = export_channels(&request).unwrap_err();
        assert!(violations.iter().all(|v| v.description.contains("channels[0]")));
    }

    #[test]
    fn window_must_be_ordered() {
        let mut c = channel("messaging", "general");
        c.messages_since = Some(prost_types::Timestamp { seconds: 100, nanos: 0 });
        c.messages_until = Some(prost_types::Timestamp { seconds: 100, nanos: 0 });
        let violations =
            export_channels(&ExportChannelsRequest { channels: vec![c], ..Default::default() }).unwrap_err();
        assert_eq!(fields(&violations), ["channels[0].messages_until"]);
    }

    #[test]
    fn version_maps_to_upstream_strings() {
        let mut request = ExportChannelsRequest { channels: vec![channel("messaging", "a")], ..Default::default() };
        assert_eq!(export_channels(&request).unwrap().version, None);
        request.version = ExportFormatVersion::V2 as i32;
        assert_eq!(export_channels(&request).unwrap().version, Some("v2"));
        request.version = 42;
        assert_eq!(fields(&export_channels(&request).unwrap_err()), ["version"]);
    }

    #[test]
    fn user_ids_are_counted_and_unique() {
        let many = ExportUsersRequest { user_ids: (0..26).map(|i| format!("u{i}")).collect(), ..Default::default() };
        assert_eq!(fields(&export_users(&many).unwrap_err()), ["user_ids"]);
        let dup = ExportUsersRequest { user_ids: vec!["a".into(), "".into(), "a".into()], ..Default::default() };
        assert_eq!(fields(&export_users(&dup).unwrap_err()), ["user_ids[1]", "user_ids[2]"]);
    }

    #[test]
    fn every_spelling_of_a_task_id_is_one_id() {
        let canonical = "0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10";
        for spelling in [
            canonical,
            "0B6C7D7E-52D9-4F4E-9D4A-3C1D2B8E9F10",
            "{0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10}",
            "urn:uuid:0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10",
            "0b6c7d7e52d94f4e9d4a3c1d2b8e9f10",
        ] {
            assert_eq!(task_id(spelling).unwrap(), canonical, "{spelling}");
        }
    }

    #[test]
    fn a_task_id_that_is_no_uuid_is_refused() {
        for bad in ["", "t-1", "..", "0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f1", "0b6c7d7e-52d9-4f4e-9d4a-3c1d2b8e9f10/x"] {
            assert_eq!(fields(&task_id(bad).unwrap_err()), ["task_id"], "{bad:?}");
        }
        assert_eq!(fields(&read_export("T", 0).unwrap_err()), ["task_id"]);
    }

    #[test]
    fn dot_segments_are_no_user_ids() {
        for bad in [".", ".."] {
            assert_eq!(fields(&user_id(bad).unwrap_err()), ["user_id"], "{bad:?}");
        }
        assert!(user_id("john.doe").is_ok());
        assert!(user_id("...").is_ok());
    }
}
