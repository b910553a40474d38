//! The commands: submit channel and user exports, export one user, get and follow tasks.

use std::{future::Future, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, NaiveDate};
use prost_types::Timestamp;
use serde_json::{Value, json};
use tonic::{Code, Request, Status};

use crate::{
    client_cli::{
        ChannelsArgs, Session, UserArgs, UsersArgs,
        failure::{Failure, reason, retry_delay},
        output::{Output, Sink, item_json, save_export},
        progress::{self, Mode},
        render::{self, task_json},
        watch,
    },
    contract::status::reason as reasons,
    proto::{
        ChannelRef, ExportChannelsRequest, ExportFormatVersion, ExportUserRequest, ExportUsersRequest, GetTaskRequest,
        TaskState,
    },
};

/// A channel with a message window, as the usage errors show it.
pub const WINDOW_EXAMPLE: &str = "messaging:general@2024-02-01..2024-03-01";

/// Attempts of a call that fails with `UNAVAILABLE` (submits reuse their `request_id`).
const ATTEMPTS: u32 = 3;
/// Deadline of one unary call.
const UNARY_TIMEOUT: Duration = Duration::from_secs(60);

/// `export channels`; `output` is the checked `--output`.
pub async fn channels(session: &mut Session, args: ChannelsArgs, output: Option<Output>) -> Result<(), Failure> {
    let channels = args.channels.iter().map(|spec| parse_channel(spec)).collect::<Result<Vec<_>, _>>()?;
    // The file is created before the submit: an unwritable directory costs no export.
    let sink = output.as_ref().map(Output::open).transpose()?;
    // Stream leaves a soft-deleted channel out of the file unless asked: an empty file then
    // says why it may be empty.
    let empty_hint = (!args.options.include_soft_deleted).then_some(
        "the export holds no records: a soft-deleted channel is left out unless --include-soft-deleted is given",
    );
    let request = ExportChannelsRequest {
        channels,
        include_truncated_messages: args.options.include_truncated,
        include_soft_deleted_channels: args.options.include_soft_deleted,
        clear_deleted_message_text: args.options.clear_deleted_text,
        export_users: args.options.export_users,
        version: if args.options.v2 { ExportFormatVersion::V2 } else { ExportFormatVersion::V1 } as i32,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let client = session.client.clone();
    let task_id = with_retries(session, "submitting the export", || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.export_channels(unary(request)).await.map(|r| r.into_inner().task_id) }
    })
    .await?;
    submitted(session, &task_id, args.wait.wait, sink, empty_hint).await
}

/// `export users`; `output` is the checked `--output`.
pub async fn users(session: &mut Session, args: UsersArgs, output: Option<Output>) -> Result<(), Failure> {
    check_user_ids(&args.user_ids)?;
    let sink = output.as_ref().map(Output::open).transpose()?;
    let request = ExportUsersRequest { user_ids: args.user_ids, request_id: uuid::Uuid::new_v4().to_string() };
    let client = session.client.clone();
    let task_id = with_retries(session, "submitting the export", || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.export_users(unary(request)).await.map(|r| r.into_inner().task_id) }
    })
    .await?;
    submitted(session, &task_id, args.wait.wait, sink, None).await
}

/// After a submit: print the task id, or follow the task (and save its export).
async fn submitted(
    session: &mut Session,
    task_id: &str,
    wait: bool,
    sink: Option<Sink>,
    empty_hint: Option<&str>,
) -> Result<(), Failure> {
    if wait || sink.is_some() {
        session.display.submitted(task_id);
        return follow(session, task_id, sink, empty_hint).await;
    }
    // Without --wait the task id is the whole answer: alone on its line, for `$(...)`.
    session.display.result(json!({"event": "submitted", "task_id": task_id}), "", Some(task_id));
    Ok(())
}

/// Watches a task to its end; with a sink (opened before anything was submitted), saves its
/// export there. `empty_hint` is said when the export holds no record.
///
/// Stdout gets the answer a script wants: the result URL, or, once the records are saved to a
/// file, the task id (nothing when the records themselves went to stdout).
pub async fn follow(
    session: &mut Session,
    task_id: &str,
    sink: Option<Sink>,
    empty_hint: Option<&str>,
) -> Result<(), Failure> {
    session.set_pickup(task_id, sink.as_ref());
    let task = watch::follow(session, task_id).await?;
    if task.state() != TaskState::Completed {
        session.display.clear();
        return Err(Failure::TaskEnded(Box::new(task)));
    }
    let mut result = json!({"event": "result", "task": task_json(&task)});
    let url = task.result.as_ref().map(|r| r.url.as_str()).filter(|url| !url.is_empty());
    let (human, answer) = match sink {
        Some(sink) => {
            let destination = sink.name();
            let saved = save_export(session, task_id, sink).await?;
            result["output"] = json!(saved.path.as_ref().map(|path| path.display().to_string()));
            result["records"] = json!(saved.records);
            result["bytes"] = json!(saved.bytes);
            if saved.records == 0
                && let Some(hint) = empty_hint
            {
                session.display.note(&format!("note: {hint}"));
            }
            let human = format!(
                "task {task_id} COMPLETED: wrote {} records ({}) to {destination}",
                saved.records,
                progress::size(saved.bytes)
            );
            (human, saved.path.is_some().then_some(task_id))
        }
        None => (format!("task {task_id} COMPLETED: {}", url.unwrap_or("(no result URL)")), url),
    };
    session.display.result(result, &human, answer);
    Ok(())
}

/// `task get`: the task once; a FAILED or CANCELED task exits 1.
pub async fn get(session: &mut Session, task_id: &str) -> Result<(), Failure> {
    let client = session.client.clone();
    let task = with_retries(session, "getting the task", || {
        let mut client = client.clone();
        let task_id = task_id.to_owned();
        async move { client.get_task(unary(GetTaskRequest { task_id })).await.map(|r| r.into_inner()) }
    })
    .await?;
    let value = json!({"event": "result", "task": task_json(&task)});
    let mut human = format!("task {}: {}", task.task_id, render::state_name(task.state()));
    if let Some(result) = &task.result {
        human.push_str(&format!("\nresult: {}", result.url));
    }
    if let Some(error) = &task.error {
        human.push_str(&format!("\nerror: {} {}", error.r#type, error.description));
    }
    if matches!(task.state(), TaskState::Failed | TaskState::Canceled) {
        if session.display.mode() != Mode::Json {
            say!("{human}");
        }
        return Err(Failure::TaskEnded(Box::new(task)));
    }
    session.display.clear();
    if session.display.mode() == Mode::Json {
        say!("{value}");
    } else {
        say!("{human}");
    }
    Ok(())
}

/// `export user`: the synchronous export, as JSON lines to stdout or to a file (`output`, checked).
pub async fn user(session: &mut Session, args: UserArgs, output: Option<Output>) -> Result<(), Failure> {
    check_user_ids(std::slice::from_ref(&args.user_id))?;
    let mut sink = output.unwrap_or(Output::Stdout).open()?;
    let client = session.client.clone();
    let export = with_retries(session, "exporting the user", || {
        let mut client = client.clone();
        let user_id = args.user_id.clone();
        async move { client.export_user(unary(ExportUserRequest { user_id })).await.map(|r| r.into_inner()) }
    })
    .await
    .map_err(|failure| match failure.status() {
        Some(status) if reason(status).as_deref() == Some(reasons::USER_EXPORT_TOO_LARGE) => {
            let reworded = Status::with_details_and_metadata(
                status.code(),
                format!(
                    "user {} has more than 10,000 messages, too many for a synchronous export; \
                     export it with `stream-export export users {} --output FILE`",
                    args.user_id, args.user_id
                ),
                status.details().to_vec().into(),
                status.metadata().clone(),
            );
            Failure::rpc("exporting the user")(reworded)
        }
        _ => failure,
    })?;
    let records: Vec<(&str, Value)> = export
        .user
        .iter()
        .map(|item| ("user", item))
        .chain(export.messages.iter().map(|item| ("message", item)))
        .chain(export.reactions.iter().map(|item| ("reaction", item)))
        .map(|(kind, item)| item_json(item).map(|item| (kind, item)))
        .collect::<Result<_, _>>()?;
    for (kind, item) in records {
        sink.write(kind, item)?;
        // The reader went away (`| head`): that is not an error of this command.
        if sink.closed() {
            return Ok(());
        }
    }
    let (count, bytes, destination) = (sink.records(), sink.bytes(), sink.name());
    // Records on stdout are the whole answer; a file gets a summary (on stderr, or as JSON).
    if let Some(path) = sink.commit()? {
        let value = json!({"event": "result", "user_id": args.user_id, "output": path.display().to_string(),
                           "records": count, "bytes": bytes});
        let human =
            format!("user {}: wrote {count} records ({}) to {destination}", args.user_id, progress::size(bytes));
        session.display.result(value, &human, None);
    }
    Ok(())
}

/// Refuses empty user ids before anything is sent.
pub fn check_user_ids(ids: &[String]) -> Result<(), Failure> {
    match ids.iter().position(|id| id.trim().is_empty()) {
        Some(index) => Err(Failure::Usage(format!("user id {} is empty", index + 1))),
        None => Ok(()),
    }
}

/// Parses `TYPE:ID[@SINCE..UNTIL]` (dates or RFC 3339 instants, either may be empty). A channel
/// id may itself contain `@`: only a last `@` followed by `..` starts a window, and a last `@`
/// followed by a time alone is refused as a window without its `..`.
pub fn parse_channel(spec: &str) -> Result<ChannelRef, Failure> {
    let bad = |why: &str| {
        Failure::Usage(format!("channel {spec:?}: {why} (expected TYPE:ID[@SINCE..UNTIL], e.g. {WINDOW_EXAMPLE})"))
    };
    let (cid, window) = match spec.rsplit_once('@') {
        Some((cid, window)) if window.contains("..") => (cid, Some(window)),
        Some((_, time)) if parse_time(time).is_ok_and(|t| t.is_some()) => {
            return Err(bad(&format!(
                "a window needs `..`: `@{time}..` for the messages since then, `@{time}..UNTIL` for a range"
            )));
        }
        _ => (spec, None),
    };
    let (kind, id) = cid.split_once(':').ok_or_else(|| bad("no `:` between type and id"))?;
    if kind.is_empty() || id.is_empty() {
        return Err(bad("empty type or id"));
    }
    let mut channel = ChannelRef { r#type: kind.to_owned(), id: id.to_owned(), ..Default::default() };
    if let Some(window) = window {
        let (since, until) = window.split_once("..").ok_or_else(|| bad("no `..` in the window"))?;
        channel.messages_since = parse_time(since).map_err(|why| bad(&format!("SINCE {why}")))?;
        channel.messages_until = parse_time(until).map_err(|why| bad(&format!("UNTIL {why}")))?;
        if since.is_empty() && until.is_empty() {
            return Err(bad("an empty window `@..`"));
        }
    }
    Ok(channel)
}

/// One end of a window: an RFC 3339 instant, or a date alone meaning its midnight UTC.
pub(crate) fn parse_time(text: &str) -> Result<Option<Timestamp>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).map(|t| t.and_utc().timestamp()).unwrap_or_default();
        return Ok(Some(Timestamp { seconds: midnight, nanos: 0 }));
    }
    let instant = DateTime::parse_from_rfc3339(text).map_err(|error| {
        format!(
            "{text:?} is neither a date (2024-02-01, UTC midnight) nor an RFC 3339 time (2024-02-01T12:00:00Z): {error}"
        )
    })?;
    Ok(Some(Timestamp { seconds: instant.timestamp(), nanos: instant.timestamp_subsec_nanos() as i32 }))
}

/// A unary request with the client's deadline.
pub(crate) fn unary<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(UNARY_TIMEOUT);
    request
}

/// Runs `call` up to [`ATTEMPTS`] times while it fails with `UNAVAILABLE`, waiting the
/// `RetryInfo` delay (or 0.5 s, 1 s) between attempts. A submit's closure reuses its request,
/// `request_id` included, so that a retry never starts a second export.
pub(crate) async fn with_retries<T, F, Fut>(session: &mut Session, action: &'static str, call: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let delays = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(500))
        .with_factor(2.0)
        .with_max_times(ATTEMPTS as usize - 1);
    let mut attempt = 0;
    call.retry(delays)
        .sleep(tokio::time::sleep)
        .when(|status| status.code() == Code::Unavailable)
        .adjust(|status, delay| delay.map(|fallback| retry_delay(status, fallback)))
        .notify(|status, delay| {
            attempt += 1;
            session.display.note(&format!(
                "{action}: UNAVAILABLE ({}); retrying in {} ({attempt}/{})",
                status.message(),
                progress::seconds(delay),
                ATTEMPTS - 1
            ));
        })
        .await
        .map_err(Failure::rpc(action))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_specs() {
        let plain = parse_channel("messaging:general").unwrap();
        assert_eq!((plain.r#type.as_str(), plain.id.as_str()), ("messaging", "general"));
        assert!(plain.messages_since.is_none() && plain.messages_until.is_none());

        let open = parse_channel("messaging:general@2024-02-01T00:00:00Z..").unwrap();
        assert_eq!(open.messages_since.unwrap().seconds, 1_706_745_600);
        assert!(open.messages_until.is_none());

        let both = parse_channel("team:a@b@2024-02-01T00:00:00Z..2024-03-01T00:00:00+01:00").unwrap();
        assert_eq!(both.id, "a@b");
        assert_eq!(both.messages_until.unwrap().seconds, 1_709_247_600);

        assert_eq!(parse_channel("messaging:user@example").unwrap().id, "user@example");
        for bad in ["general", ":general", "messaging:", "messaging:general@yesterday..", "messaging:general@.."] {
            assert!(matches!(parse_channel(bad), Err(Failure::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn dates_alone_are_utc_midnight_and_a_window_without_dots_is_refused() {
        let dates = parse_channel(WINDOW_EXAMPLE).unwrap();
        assert_eq!(dates.messages_since.unwrap().seconds, 1_706_745_600, "2024-02-01T00:00:00Z");
        assert_eq!(dates.messages_until.unwrap().seconds, 1_709_251_200, "2024-03-01T00:00:00Z");
        for spec in ["messaging:general@2024-02-01", "messaging:general@2024-02-01T00:00:00Z"] {
            let Err(Failure::Usage(message)) = parse_channel(spec) else { panic!("{spec} is refused") };
            assert!(message.contains("needs `..`") && message.contains(WINDOW_EXAMPLE), "{message}");
        }
        let Err(Failure::Usage(message)) = parse_channel("messaging:general@2024-02-01T00:00..") else {
            panic!("a time without a zone is refused")
        };
        assert!(message.contains("2024-02-01T12:00:00Z"), "with an example: {message}");
    }
}
