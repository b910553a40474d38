//! The commands: submit channel and user exports, export one user, get and follow tasks.

use std::{future::Future, io::Write, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use chrono::DateTime;
use prost_types::Timestamp;
use serde_json::{Value, json};
use tonic::{Code, Request, Status};

use crate::{
    client_cli::{
        ChannelsArgs, Session, UserArgs, UsersArgs, WaitArgs,
        failure::{Failure, retry_delay},
        output::{AtomicJsonl, item_json, save_export},
        progress::Mode,
        render::{self, task_json},
        watch,
    },
    proto::{
        ChannelRef, ExportChannelsRequest, ExportFormatVersion, ExportUserRequest, ExportUsersRequest, GetTaskRequest,
        TaskState,
    },
};

/// Attempts of a call that fails with `UNAVAILABLE` (submits reuse their `request_id`).
const ATTEMPTS: u32 = 3;
/// Deadline of one unary call.
const UNARY_TIMEOUT: Duration = Duration::from_secs(60);

/// `export channels`.
pub async fn channels(session: &mut Session, args: ChannelsArgs) -> Result<(), Failure> {
    let channels = args.channels.iter().map(|spec| parse_channel(spec)).collect::<Result<Vec<_>, _>>()?;
    let request = ExportChannelsRequest {
        channels,
        include_truncated_messages: args.include_truncated,
        include_soft_deleted_channels: args.include_soft_deleted,
        clear_deleted_message_text: args.clear_deleted_text,
        export_users: args.export_users,
        version: if args.v2 { ExportFormatVersion::V2 } else { ExportFormatVersion::V1 } as i32,
        request_id: uuid::Uuid::new_v4().to_string(),
    };
    let client = session.client.clone();
    let task_id = with_retries(session, "submitting the export", || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.export_channels(unary(request)).await.map(|r| r.into_inner().task_id) }
    })
    .await?;
    submitted(session, &task_id, args.wait).await
}

/// `export users`.
pub async fn users(session: &mut Session, args: UsersArgs) -> Result<(), Failure> {
    check_user_ids(&args.user_ids)?;
    let request = ExportUsersRequest { user_ids: args.user_ids, request_id: uuid::Uuid::new_v4().to_string() };
    let client = session.client.clone();
    let task_id = with_retries(session, "submitting the export", || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.export_users(unary(request)).await.map(|r| r.into_inner().task_id) }
    })
    .await?;
    submitted(session, &task_id, args.wait).await
}

/// After a submit: print the task id, or follow the task (and save its export).
async fn submitted(session: &mut Session, task_id: &str, wait: WaitArgs) -> Result<(), Failure> {
    if wait.wait || wait.output.is_some() {
        session.display.submitted(task_id);
        return follow(session, task_id, wait).await;
    }
    // Without --wait the task id is the whole answer: alone on its line, for `$(...)`.
    session.display.result(json!({"event": "submitted", "task_id": task_id}), task_id);
    Ok(())
}

/// Watches a task to its end; with an output file, saves its export there.
///
/// The output's temporary file is created first, so that an unwritable path fails at once rather
/// than after a long wait.
pub async fn follow(session: &mut Session, task_id: &str, wait: WaitArgs) -> Result<(), Failure> {
    let file = wait.output.as_deref().map(AtomicJsonl::create).transpose()?;
    let task = watch::follow(session, task_id).await?;
    if task.state() != TaskState::Completed {
        session.display.clear();
        return Err(Failure::TaskEnded(Box::new(task)));
    }
    let mut result = json!({"event": "result", "task": task_json(&task)});
    let human = match file {
        Some(file) => {
            let saved = save_export(session, task_id, file).await?;
            result["output"] = json!(saved.path.display().to_string());
            result["records"] = json!(saved.records);
            result["bytes"] = json!(saved.bytes);
            format!(
                "task {task_id} COMPLETED: wrote {} records ({} bytes) to {}",
                saved.records,
                saved.bytes,
                saved.path.display()
            )
        }
        None => {
            format!("task {task_id} COMPLETED: {}", task.result.as_ref().map_or("(no result URL)", |r| r.url.as_str()))
        }
    };
    session.display.result(result, &human);
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
    session.display.result(value, &human);
    Ok(())
}

/// `export user`: the synchronous export, as JSON lines to stdout or to a file.
pub async fn user(session: &mut Session, args: UserArgs) -> Result<(), Failure> {
    check_user_ids(std::slice::from_ref(&args.user_id))?;
    let client = session.client.clone();
    let export = with_retries(session, "exporting the user", || {
        let mut client = client.clone();
        let user_id = args.user_id.clone();
        async move { client.export_user(unary(ExportUserRequest { user_id })).await.map(|r| r.into_inner()) }
    })
    .await?;
    let records: Vec<(&str, Value)> = export
        .user
        .iter()
        .map(|item| ("user", item))
        .chain(export.messages.iter().map(|item| ("message", item)))
        .chain(export.reactions.iter().map(|item| ("reaction", item)))
        .map(|(kind, item)| item_json(item).map(|item| (kind, item)))
        .collect::<Result<_, _>>()?;
    match &args.output {
        Some(path) => {
            let mut file = AtomicJsonl::create(path)?;
            for (kind, item) in records {
                file.write(kind, item)?;
            }
            let (count, bytes) = (file.records, file.bytes);
            let path = file.commit()?;
            let value = json!({"event": "result", "user_id": args.user_id, "output": path.display().to_string(),
                               "records": count, "bytes": bytes});
            let human = format!("user {}: wrote {count} records ({bytes} bytes) to {}", args.user_id, path.display());
            session.display.result(value, &human);
        }
        None => {
            let mut stdout = std::io::stdout().lock();
            for (kind, item) in records {
                match writeln!(stdout, "{{\"type\":{},\"item\":{item}}}", Value::from(kind)) {
                    Ok(()) => {}
                    // The reader went away (`| head`): that is not an error of this command.
                    Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(error) => return Err(Failure::Local(format!("cannot write to stdout: {error}"))),
                }
            }
        }
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

/// Parses `TYPE:ID[@SINCE..UNTIL]` (RFC 3339 instants, either may be empty). A channel id may
/// itself contain `@`: only a last `@` followed by `..` starts a window.
pub fn parse_channel(spec: &str) -> Result<ChannelRef, Failure> {
    let bad = |why: &str| Failure::Usage(format!("channel {spec:?}: {why} (expected TYPE:ID[@SINCE..UNTIL])"));
    let (cid, window) = match spec.rsplit_once('@') {
        Some((cid, window)) if window.contains("..") => (cid, Some(window)),
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

fn parse_time(text: &str) -> Result<Option<Timestamp>, String> {
    if text.is_empty() {
        return Ok(None);
    }
    let instant = DateTime::parse_from_rfc3339(text).map_err(|error| format!("{text:?} is not RFC 3339: {error}"))?;
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
                "{action}: UNAVAILABLE ({}); retrying in {delay:?} ({attempt}/{})",
                status.message(),
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
}
