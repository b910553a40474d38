//! `job …`: export jobs. Their input (a channels file, a query, a users file) is read and checked
//! before anything is sent; `--wait` follows a job with `WatchExportJob`; `--output DIR` saves
//! each of its tasks as `export --output` saves one; `--archive URI` has the service copy them
//! into a bucket, and `job verify` has it read them back against the job's manifest.

use std::{
    io::IsTerminal,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use super::{
    JobCreateArgs, JobTemplateArgs, Session,
    export::{WINDOW_EXAMPLE, parse_channel, parse_time, unary, with_retries},
    failure::Failure,
    list::table,
    output::{Output, save_export},
    progress::{self, Mode},
    render::{self, instant, job_line, job_state_name, job_task_json},
    watch,
};
use crate::{
    contract::{json::to_struct, wire_struct::WireStruct},
    proto::{
        CancelExportJobRequest, ChannelList, ChannelQuery, ChannelRef, CreateExportJobRequest, ExportFormatVersion,
        ExportJob, ExportJobState, ExportJobTask, GetExportJobRequest, ListExportJobTasksRequest,
        ListExportJobsRequest, TaskState, UserList, VerifyExportJobRequest, create_export_job_request::Selector,
    },
};

/// The page size asked of the service.
const PAGE_SIZE: usize = 100;

/// The `CreateExportJobRequest` that `job create`'s arguments describe, its files read and every
/// line checked: a bad line is refused as `FILE:LINE: why`, before anything is sent.
pub fn create_request(args: &JobCreateArgs) -> Result<CreateExportJobRequest, Failure> {
    let template = &args.template;
    if template.users_file.is_some() && (args.since.is_some() || args.until.is_some() || template.options.any()) {
        return Err(Failure::Usage(
            "--since, --until and the channel options (--v2, --include-truncated, --include-soft-deleted, \
             --clear-deleted-text, --export-users) apply to channels, not to --users-file"
                .into(),
        ));
    }
    let request = template_request(template)?;
    let time = |flag: &str, text: Option<&String>| {
        text.map_or(Ok(None), |text| parse_time(text).map_err(|why| Failure::Usage(format!("{flag} {why}"))))
    };
    Ok(CreateExportJobRequest {
        messages_since: time("--since", args.since.as_ref())?,
        messages_until: time("--until", args.until.as_ref())?,
        // A create retried after UNAVAILABLE returns the first job, never starts a second.
        request_id: uuid::Uuid::new_v4().to_string(),
        ..request
    })
}

/// The job that `args` describe, without a window or a `request_id`: what `job create` sends
/// with its own, and the template of a schedule, whose windows the service sets.
pub fn template_request(args: &JobTemplateArgs) -> Result<CreateExportJobRequest, Failure> {
    let selector = if let Some(path) = &args.channels_file {
        Selector::Channels(ChannelList { channels: read_channels_file(path)? })
    } else if let Some(query) = &args.query {
        Selector::ChannelQuery(ChannelQuery { filter: Some(parse_query(query)?) })
    } else if let Some(path) = &args.users_file {
        Selector::Users(UserList { user_ids: read_users_file(path)? })
    } else {
        return Err(Failure::Usage("give --channels-file FILE, --query JSON or --users-file FILE".into()));
    };
    if args.verify && args.archive.is_none() {
        return Err(Failure::Usage(
            "--verify reads each archived file back: it needs --archive URI (where to archive)".into(),
        ));
    }
    let options = args.options;
    Ok(CreateExportJobRequest {
        selector: Some(selector),
        messages_since: None,
        messages_until: None,
        include_truncated_messages: options.include_truncated,
        include_soft_deleted_channels: options.include_soft_deleted,
        clear_deleted_message_text: options.clear_deleted_text,
        export_users: options.export_users,
        version: if options.v2 { ExportFormatVersion::V2 } else { ExportFormatVersion::V1 } as i32,
        request_id: String::new(),
        archive_uri: args.archive.clone().unwrap_or_default(),
        verify: args.verify,
    })
}

/// The lines of an input file that say something: numbered from 1, trimmed, without blank lines
/// and `#` comments.
fn meaningful_lines(flag: &str, path: &Path) -> Result<Vec<(usize, String)>, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| Failure::Usage(format!("{flag} {}: cannot read it: {error}", path.display())))?;
    Ok(text
        .lines()
        .enumerate()
        .map(|(index, line)| (index + 1, line.trim()))
        .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'))
        .map(|(number, line)| (number, line.to_owned()))
        .collect())
}

/// `--channels-file`: one `TYPE:ID[@SINCE..UNTIL]` a line, parsed as `export channels` parses
/// its arguments.
fn read_channels_file(path: &Path) -> Result<Vec<ChannelRef>, Failure> {
    let lines = meaningful_lines("--channels-file", path)?;
    if lines.is_empty() {
        return Err(Failure::Usage(format!(
            "--channels-file {}: no channels (one TYPE:ID[@SINCE..UNTIL] a line, e.g. {WINDOW_EXAMPLE})",
            path.display()
        )));
    }
    lines
        .iter()
        .map(|(number, line)| {
            parse_channel(line).map_err(|failure| match failure {
                Failure::Usage(why) => Failure::Usage(format!("{}:{number}: {why}", path.display())),
                other => other,
            })
        })
        .collect()
}

/// `--users-file`: one user id a line.
fn read_users_file(path: &Path) -> Result<Vec<String>, Failure> {
    let lines = meaningful_lines("--users-file", path)?;
    if lines.is_empty() {
        return Err(Failure::Usage(format!("--users-file {}: no user ids (one a line)", path.display())));
    }
    Ok(lines.into_iter().map(|(_, id)| id).collect())
}

/// `--query`: a JSON object, Stream's `filter_conditions`.
fn parse_query(text: &str) -> Result<WireStruct, Failure> {
    let usage = |why: String| Failure::Usage(format!("--query {text}: {why}"));
    let value: Value = serde_json::from_str(text).map_err(|error| usage(format!("not JSON: {error}")))?;
    let Value::Object(filter) = value else {
        return Err(usage("not a JSON object (e.g. '{\"type\": \"messaging\", \"team\": \"acme\"}')".into()));
    };
    if filter.is_empty() {
        return Err(usage("an empty filter would match every channel; Stream refuses it".into()));
    }
    Ok(WireStruct::from(to_struct(filter)))
}

/// `--output DIR`, checked before anything is sent: an existing directory where a file can be
/// created (a probe file is created and removed), so that a typo costs no job.
pub fn checked_directory(path: Option<&Path>) -> Result<Option<PathBuf>, Failure> {
    let Some(path) = path else { return Ok(None) };
    let usage = |why: String| Failure::Usage(format!("--output {}: {why}", path.display()));
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {}
        Ok(_) => return Err(usage("not a directory (a job saves one file per task into a directory)".into())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(usage("no such directory; create it first".into()));
        }
        Err(error) => return Err(usage(error.to_string())),
    }
    let probe = path.join(format!(".stream-export-probe.{}", uuid::Uuid::new_v4().simple()));
    std::fs::File::create_new(&probe).map_err(|error| usage(format!("cannot create a file in it: {error}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(Some(path.to_owned()))
}

/// `job create`: creates the job from the checked `request`; prints its id, or follows it
/// (`wait`, or a `directory` to save its tasks into).
pub async fn create(
    session: &mut Session,
    request: Box<CreateExportJobRequest>,
    wait: bool,
    directory: Option<PathBuf>,
) -> Result<(), Failure> {
    let client = session.client.clone();
    let job = with_retries(session, "creating the job", || {
        let mut client = client.clone();
        let request = CreateExportJobRequest::clone(&request);
        async move { client.create_export_job(unary(request)).await.map(|r| r.into_inner()) }
    })
    .await?;
    if wait || directory.is_some() {
        session.display.job_created(&job);
        return follow(session, &job.job_id, directory).await;
    }
    // Without --wait the job id is the whole answer: alone on its line, for `$(...)`.
    let value = job_line("job_created", &job);
    let human = format!("created job {} ({})", job.job_id, job_state_name(job.state()));
    session.display.result(value, &human, Some(&job.job_id));
    Ok(())
}

/// Follows a job to its end; once it SUCCEEDED, saves its tasks into `directory` if given. A
/// job that FAILED or was CANCELLED is a failure (exit 1) that says why; the tasks that
/// completed before a FAILED job's end are still saved (they stay readable), so that only the
/// failed shards are missing.
pub async fn follow(session: &mut Session, job_id: &str, directory: Option<PathBuf>) -> Result<(), Failure> {
    session.set_job_pickup(job_id, directory.as_deref());
    let job = watch::follow_job(session, job_id).await?;
    if job.state() != ExportJobState::Succeeded {
        if let Some(directory) = directory.as_deref().filter(|_| job.state() == ExportJobState::Failed) {
            let saved = save_tasks(session, job_id, directory, Completed::Only).await?;
            session.display.note(&format!(
                "job {job_id} FAILED; the tasks that completed ({}) are saved in {}",
                saved.written + saved.kept,
                directory.display()
            ));
        }
        session.display.clear();
        return Err(Failure::JobEnded(Box::new(job)));
    }
    let mut result = job_line("result", &job);
    let summary = summary(&job);
    let human = match directory {
        Some(directory) => {
            let saved = save_tasks(session, job_id, &directory, Completed::All).await?;
            result["output"] = json!(directory.display().to_string());
            result["files"] = json!(saved.written + saved.kept);
            result["files_kept"] = json!(saved.kept);
            result["records"] = json!(saved.records);
            result["bytes"] = json!(saved.bytes);
            let kept = match saved.kept {
                0 => String::new(),
                kept => format!(" ({kept} saved before, kept)"),
            };
            format!(
                "job {job_id} SUCCEEDED, {summary}: wrote {} records ({}) to {} files in {}{kept}",
                saved.records,
                progress::size(saved.bytes),
                saved.written,
                directory.display()
            )
        }
        None => format!("job {job_id} SUCCEEDED, {summary}"),
    };
    let human = match job.manifest_uri.as_str() {
        "" => human,
        manifest => format!("{human}; manifest {manifest}"),
    };
    session.display.result(result, &human, Some(job_id));
    Ok(())
}

/// What a job amounts to: `10/10 tasks done, 250 channels` (then `, 10/10 archived (1.50 MiB)`
/// for an archived job).
fn summary(job: &ExportJob) -> String {
    let progress = job.progress.unwrap_or_default();
    let mut text = format!("{}/{} tasks done", progress.tasks_completed, progress.tasks_total);
    if progress.tasks_failed > 0 {
        text.push_str(&format!(" ({} failed)", progress.tasks_failed));
    }
    if progress.users_total > 0 {
        text.push_str(&format!(", {} users", progress.users_total));
    } else {
        text.push_str(&format!(", {} channels", progress.channels_total));
    }
    if let Some(archived) = progress::archived(job) {
        text.push_str(&format!(", {archived}"));
    }
    text
}

/// What saving a job's tasks amounts to.
#[derive(Debug, Default)]
struct SavedTasks {
    written: u64,
    kept: u64,
    records: u64,
    bytes: u64,
}

/// Which of a job's tasks [`save_tasks`] expects to have completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Completed {
    /// Every one (a SUCCEEDED job): a shard without a task is an error.
    All,
    /// Only some (a FAILED job): the others are skipped.
    Only,
}

/// Saves the tasks of a job into `directory`, one `SHARD-TASKID.jsonl` file per shard, each as
/// `export --output` saves a task (atomically, reads resumed). A file already there was saved
/// complete by an earlier run (files appear only complete) and is kept.
async fn save_tasks(
    session: &mut Session,
    job_id: &str,
    directory: &Path,
    completed: Completed,
) -> Result<SavedTasks, Failure> {
    let tasks = all_tasks(session, job_id).await?;
    let mut saved = SavedTasks::default();
    for task in tasks {
        if completed == Completed::Only && task.state() != TaskState::Completed {
            continue;
        }
        if task.task_id.is_empty() {
            return Err(Failure::Local(format!("shard {} of job {job_id} has no task to read", task.shard)));
        }
        let path = directory.join(shard_file_name(&task));
        if path.exists() {
            saved.kept += 1;
            continue;
        }
        let sink = Output::File { path, overwrite: false }.open()?;
        let file = save_export(session, &task.task_id, sink).await?;
        saved.written += 1;
        saved.records += file.records;
        saved.bytes += file.bytes;
    }
    Ok(saved)
}

/// `SHARD-TASKID.jsonl`, the shard zero-padded so that files list in shard order; anything but
/// letters, digits, `-` and `_` in the task id becomes `_`.
fn shard_file_name(task: &ExportJobTask) -> String {
    let task_id: String =
        task.task_id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("{:05}-{task_id}.jsonl", task.shard)
}

/// Every shard of a job, following `ListExportJobTasks` pages.
async fn all_tasks(session: &mut Session, job_id: &str) -> Result<Vec<ExportJobTask>, Failure> {
    let mut tasks = Vec::new();
    let mut page_token = String::new();
    loop {
        let client = session.client.clone();
        let token = page_token.clone();
        let page = with_retries(session, "listing the job's tasks", || {
            let request = ListExportJobTasksRequest {
                job_id: job_id.to_owned(),
                page_size: PAGE_SIZE as i32,
                page_token: token.clone(),
            };
            let mut client = client.clone();
            async move { client.list_export_job_tasks(unary(request)).await.map(|r| r.into_inner()) }
        })
        .await?;
        tasks.extend(page.tasks);
        if page.next_page_token.is_empty() {
            return Ok(tasks);
        }
        page_token = page.next_page_token;
    }
}

/// The job in a few lines for a person: state, progress, where it archives and its manifest
/// once written, and the error when FAILED.
fn describe(job: &ExportJob) -> String {
    let mut text = format!("job {}: {}, {}", job.job_id, job_state_name(job.state()), summary(job));
    if let Some(archive) = render::archive_uri(job) {
        text.push_str(&format!("\narchive: {archive}"));
    }
    if !job.manifest_uri.is_empty() {
        text.push_str(&format!("\nmanifest: {}", job.manifest_uri));
    }
    if let Some(error) = &job.error {
        text.push_str(&format!("\nerror: {}", render::job_error_text(error)));
    }
    text
}

/// Prints `job` as the answer of a command: JSON with `--json`, its description otherwise.
fn print_job(session: &mut Session, job: &ExportJob) {
    session.display.clear();
    if session.display.mode() == Mode::Json {
        say!("{}", job_line("result", job));
    } else {
        say!("{}", describe(job));
    }
}

/// `job get`: the job once; one that FAILED or was CANCELLED exits 1.
pub async fn get(session: &mut Session, job_id: &str) -> Result<(), Failure> {
    let client = session.client.clone();
    let job = with_retries(session, "getting the job", || {
        let mut client = client.clone();
        let job_id = job_id.to_owned();
        async move { client.get_export_job(unary(GetExportJobRequest { job_id })).await.map(|r| r.into_inner()) }
    })
    .await?;
    if matches!(job.state(), ExportJobState::Failed | ExportJobState::Cancelled) {
        if session.display.mode() != Mode::Json {
            say!("{}", describe(&job));
        }
        return Err(Failure::JobEnded(Box::new(job)));
    }
    print_job(session, &job);
    Ok(())
}

/// `job verify`: the service reads the job's manifest and every file it lists back from the
/// archive. Prints the manifest, what was checked and one line per file missing or different
/// (`KEY: missing`); any such file is a failure (exit 1).
pub async fn verify(session: &mut Session, job_id: &str) -> Result<(), Failure> {
    let client = session.client.clone();
    let verified = with_retries(session, "verifying the job's archive", || {
        let mut client = client.clone();
        let job_id = job_id.to_owned();
        async move { client.verify_export_job(unary(VerifyExportJobRequest { job_id })).await.map(|r| r.into_inner()) }
    })
    .await?;
    session.display.clear();
    let json = session.display.mode() == Mode::Json;
    if !json {
        say!("manifest: {}", verified.manifest_uri);
        let checked =
            format!("checked: {} objects, {}", verified.objects_checked, progress::size(verified.bytes_checked));
        match verified.mismatches.len() {
            0 => say!("{checked}, all match the manifest"),
            differ => say!("{checked}, {differ} missing or different from the manifest:"),
        }
        for mismatch in &verified.mismatches {
            say!("{}", render::mismatch_text(mismatch));
        }
    }
    if !verified.mismatches.is_empty() {
        return Err(Failure::ArchiveDiffers { job_id: job_id.to_owned(), verified: Box::new(verified) });
    }
    if json {
        say!("{}", json!({"event": "result", "job_id": job_id, "verification": render::verification_json(&verified)}));
    }
    Ok(())
}

/// `job cancel`: asks the service to cancel, and prints the job as it answered (CANCELLING,
/// CANCELLED, or the state a job that had already ended ended in).
pub async fn cancel(session: &mut Session, job_id: &str) -> Result<(), Failure> {
    let client = session.client.clone();
    let job = with_retries(session, "cancelling the job", || {
        let mut client = client.clone();
        let job_id = job_id.to_owned();
        async move { client.cancel_export_job(unary(CancelExportJobRequest { job_id })).await.map(|r| r.into_inner()) }
    })
    .await?;
    print_job(session, &job);
    Ok(())
}

/// Whether listings are JSON lines (`--json`, or stdout not a terminal) rather than a table.
pub(super) fn lines_wanted(session: &Session) -> bool {
    session.display.mode() == Mode::Json || !std::io::stdout().is_terminal()
}

/// `job list`: up to `limit` jobs (of one schedule, when given), newest first, following pages
/// as needed.
pub async fn list(session: &mut Session, limit: usize, schedule: Option<String>) -> Result<(), Failure> {
    let schedule_id = schedule.unwrap_or_default();
    let mut jobs = Vec::new();
    let mut page_token = String::new();
    while jobs.len() < limit {
        let client = session.client.clone();
        let page_size = i32::try_from((limit - jobs.len()).min(PAGE_SIZE)).unwrap_or(i32::MAX);
        let token = page_token.clone();
        let page = with_retries(session, "listing jobs", || {
            let (mut client, page_token, schedule_id) = (client.clone(), token.clone(), schedule_id.clone());
            async move {
                client
                    .list_export_jobs(unary(ListExportJobsRequest { page_size, page_token, schedule_id }))
                    .await
                    .map(|r| r.into_inner())
            }
        })
        .await?;
        jobs.extend(page.jobs);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    jobs.truncate(limit);
    if lines_wanted(session) {
        for job in &jobs {
            say!("{}", job_line("job", job));
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|job| {
            let progress = job.progress.unwrap_or_default();
            let created = job
                .create_time
                .as_ref()
                .and_then(instant)
                .map_or_else(String::new, |at| at.format("%Y-%m-%d %H:%M:%S").to_string());
            vec![
                job.job_id.clone(),
                job.owner.clone(),
                job_state_name(job.state()).to_owned(),
                format!("{}/{}", progress.tasks_completed, progress.tasks_total),
                subject(job),
                created,
            ]
        })
        .collect();
    table(&["JOB ID", "OWNER", "STATE", "TASKS DONE", "EXPORTS", "CREATED (UTC)"], &rows, "(no jobs)");
    Ok(())
}

/// What a job exports, in a few words: `250 channels`, `a query`, `40 users`.
fn subject(job: &ExportJob) -> String {
    let progress = job.progress.unwrap_or_default();
    match job.request.as_ref().and_then(|request| request.selector.as_ref()) {
        Some(Selector::Users(list)) => format!("{} users", list.user_ids.len()),
        Some(Selector::ChannelQuery(_)) if progress.channels_total == 0 => "a channel query".into(),
        Some(Selector::ChannelQuery(_)) => format!("{} channels (query)", progress.channels_total),
        Some(Selector::Channels(list)) => format!("{} channels", list.channels.len()),
        None => String::new(),
    }
}

/// `job tasks`: every shard of the job: its number, state, attempts, task and size.
pub async fn tasks(session: &mut Session, job_id: &str) -> Result<(), Failure> {
    let tasks = all_tasks(session, job_id).await?;
    if lines_wanted(session) {
        for task in &tasks {
            say!("{}", job_task_json(task));
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|task| {
            let size = if task.user_ids.is_empty() {
                format!("{} channels", task.channels.len())
            } else {
                format!("{} users", task.user_ids.len())
            };
            let task_id = if task.task_id.is_empty() { "-".to_owned() } else { task.task_id.clone() };
            vec![
                task.shard.to_string(),
                render::state_name(task.state()).to_owned(),
                task.attempts.to_string(),
                task_id,
                size,
            ]
        })
        .collect();
    table(&["SHARD", "STATE", "ATTEMPTS", "TASK ID", "EXPORTS"], &rows, "(no tasks yet: the job is planning)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("job-input-{}", uuid::Uuid::new_v4()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_channels_file_skips_blanks_and_comments_and_names_a_bad_line() {
        let path = temp_file("# February\nmessaging:a\n\n  messaging:b@2024-02-01..  \n");
        let channels = read_channels_file(&path).unwrap();
        assert_eq!(channels.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(channels[1].messages_since.unwrap().seconds, 1_706_745_600);
        std::fs::write(&path, "messaging:a\n# ok\nno-colon\n").unwrap();
        let Err(Failure::Usage(message)) = read_channels_file(&path) else { panic!("a bad line is refused") };
        assert!(message.starts_with(&format!("{}:3: ", path.display())), "{message}");
        std::fs::write(&path, "# nothing\n\n").unwrap();
        assert!(matches!(read_channels_file(&path), Err(Failure::Usage(_))), "no channels");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_query_is_a_non_empty_json_object() {
        let filter = parse_query(r#"{"type": "messaging", "team": {"$in": ["a", "b"]}}"#).unwrap();
        assert_eq!(filter.to_struct().unwrap().fields.len(), 2);
        for bad in ["{}", "[1]", "{type: messaging}"] {
            assert!(matches!(parse_query(bad), Err(Failure::Usage(_))), "{bad}");
        }
    }

    #[test]
    fn shard_files_list_in_shard_order() {
        let task = ExportJobTask { shard: 7, task_id: "a1-b/2".into(), ..Default::default() };
        assert_eq!(shard_file_name(&task), "00007-a1-b_2.jsonl");
    }
}
