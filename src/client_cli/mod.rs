//! The command-line client for people: `stream-export export …` submits an export, shows that it
//! progresses and saves it to a file; `stream-export task …` does the same for an existing task;
//! `stream-export job …` runs export jobs of any number of channels or users;
//! `stream-export schedule …` has the service run one every interval.
//!
//! It talks to a running service over gRPC like any other client. Layout: this module holds the
//! arguments and the run loop (Ctrl-C, exit codes); [`connect`] the channel, TLS and bearer token;
//! [`export`] the submits; [`job`] the export job commands and their input files; [`schedule`]
//! the export schedule commands, whose template `job`'s input parsing builds; [`watch`]
//! `WatchTask` and `WatchExportJob` with resume; [`output`] `--output` (checked
//! before anything is submitted) and `ReadExport` into an atomically written JSON-lines file or
//! stdout, resumed after any interruption; [`progress`] what the person (or script) sees;
//! [`render`] JSON renderings; [`failure`] errors and their exit codes.

/// Prints a line on stdout. A closed stdout (`| head`) means nobody wants the rest: not a
/// reason to panic, as `println!` would.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

mod connect;
mod export;
mod failure;
mod job;
mod list;
mod output;
mod progress;
mod render;
mod schedule;
mod watch;

use std::{
    ffi::OsString,
    future::Future,
    path::PathBuf,
    process::ExitCode,
    sync::{Arc, Mutex},
};

use clap::{ArgGroup, Args, Subcommand};

pub use failure::{EXIT_FAILED, EXIT_INTERRUPTED, EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE, Failure};

use crate::{
    client_cli::{
        connect::Client,
        output::{Output, Sink},
        progress::Display,
    },
    proto::{CreateExportJobRequest, CreateExportScheduleRequest},
};

/// The exit codes, shown under `--help` of the client commands.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0    done (the export or job was submitted, completed and saved, as asked)
  1    the task failed or was canceled upstream, or the export job FAILED or was CANCELLED, or
       `job verify` found an archived file missing or different from the job's manifest
  2    bad usage: invalid arguments (an --output that cannot be written or already exists
       included: checked before anything is submitted), or the service rejected the request as
       invalid (INVALID_ARGUMENT)
  3    the service or Stream is unavailable: connection refused, UNAVAILABLE, DEADLINE_EXCEEDED,
       RESOURCE_EXHAUSTED (rate limits, overload): trying again later may work
  4    the service refused or failed otherwise: NOT_FOUND (no such task, job, schedule or user),
       UNAUTHENTICATED, PERMISSION_DENIED (e.g. an --archive outside the service's
       --archive-allow prefixes), FAILED_PRECONDITION (e.g. user too large for `export user`,
       archives not configured in the service, `job verify` of a job without an archive or
       whose manifest is not written yet), INTERNAL, DATA_LOSS, or the output file could not
       be written
  130  interrupted (Ctrl-C); no partial file is left behind; a submitted export goes on upstream
       (`stream-export task watch ID --output FILE` picks it up), a job in the service
       (`stream-export job watch ID --output DIR`)";

/// How to reach the service; accepted anywhere on the command line, before the command too
/// (see [`hoist_client_options`]).
#[derive(Args, Debug, Clone)]
pub struct ClientOptions {
    /// The service's URL; `https://` uses TLS; `HOST:PORT` alone means `http://HOST:PORT`.
    #[arg(long, global = true, env = "STREAM_EXPORT_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,

    /// Bearer token sent as `authorization: Bearer <token>` (when the service requires tokens).
    /// Prefer the environment variable: a flag shows in the process list.
    #[arg(long, global = true, env = "STREAM_EXPORT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM CA certificate to verify the service with (default: the bundled web PKI roots).
    #[arg(long, global = true, env = "STREAM_EXPORT_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,

    /// PEM client certificate, for a service that requires mutual TLS (with --client-key).
    #[arg(long, global = true, env = "STREAM_EXPORT_CLIENT_CERT", value_name = "FILE")]
    pub client_cert: Option<PathBuf>,

    /// PEM private key of --client-cert.
    #[arg(long, global = true, env = "STREAM_EXPORT_CLIENT_KEY", value_name = "FILE")]
    pub client_key: Option<PathBuf>,

    /// Machine-readable output: one JSON object per line on stdout (task or job id, events,
    /// result, error).
    #[arg(long, global = true)]
    pub json: bool,
}

/// `stream-export export …`.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct ExportCommand {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    what: ExportWhat,
}

/// What to export.
#[derive(Subcommand, Debug)]
enum ExportWhat {
    /// Export 1–25 channels (asynchronous: prints the task id, or waits with --wait/--output).
    #[command(after_help = EXIT_CODES_HELP)]
    Channels(ChannelsArgs),
    /// Export 1–25 users (asynchronous: prints the task id, or waits with --wait/--output).
    #[command(after_help = EXIT_CODES_HELP)]
    Users(UsersArgs),
    /// Export one user synchronously, as JSON lines (to stdout, or to --output).
    #[command(after_help = EXIT_CODES_HELP)]
    User(UserArgs),
}

/// Arguments of `export channels`.
#[derive(Args, Debug)]
pub struct ChannelsArgs {
    /// Channels as TYPE:ID, optionally with a message window SINCE..UNTIL, either end open; each
    /// end a date (UTC midnight) or an RFC 3339 time: `messaging:general@2024-02-01..2024-03-01`,
    /// `messaging:general@2024-02-01T12:00:00Z..`.
    #[arg(required = true, value_name = "TYPE:ID[@SINCE..UNTIL]")]
    channels: Vec<String>,
    #[command(flatten)]
    options: ChannelOptions,
    #[command(flatten)]
    wait: WaitArgs,
}

/// The options of a channel export, shared by `export channels` and `job create`.
#[derive(Args, Debug, Clone, Copy)]
pub struct ChannelOptions {
    /// Export format V2 (JSON lines upstream) instead of V1 (one JSON document).
    #[arg(long)]
    v2: bool,
    /// Also export messages hidden by a channel truncation.
    #[arg(long)]
    include_truncated: bool,
    /// Also export soft-deleted channels.
    #[arg(long)]
    include_soft_deleted: bool,
    /// Clear the text of deleted messages.
    #[arg(long)]
    clear_deleted_text: bool,
    /// Also export the users referenced by the channels.
    #[arg(long)]
    export_users: bool,
}

impl ChannelOptions {
    /// Whether any option is given (they mean nothing to a users export).
    fn any(self) -> bool {
        self.v2 || self.include_truncated || self.include_soft_deleted || self.clear_deleted_text || self.export_users
    }
}

/// Arguments of `export users`.
#[derive(Args, Debug)]
pub struct UsersArgs {
    /// The user ids.
    #[arg(required = true, value_name = "ID")]
    user_ids: Vec<String>,
    #[command(flatten)]
    wait: WaitArgs,
}

/// Waiting for an asynchronous export, and saving it.
#[derive(Args, Debug, Clone)]
pub struct WaitArgs {
    /// Watch the task until it ends, showing its progress.
    #[arg(long)]
    wait: bool,
    /// Save the export's records to FILE as JSON lines `{"type": kind, "item": {...}}`
    /// (written atomically: a temporary file, then a rename), or to stdout with `-`. Implies
    /// --wait. An existing FILE is refused unless --overwrite is given.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Replace --output FILE if it exists.
    #[arg(long, requires = "output")]
    overwrite: bool,
}

/// Arguments of `export user`.
#[derive(Args, Debug)]
pub struct UserArgs {
    /// The user id.
    #[arg(value_name = "ID")]
    user_id: String,
    /// Write the records to FILE (atomically) instead of stdout (`-` is stdout). An existing
    /// FILE is refused unless --overwrite is given.
    #[arg(long, short, value_name = "FILE")]
    output: Option<PathBuf>,
    /// Replace --output FILE if it exists.
    #[arg(long, requires = "output")]
    overwrite: bool,
}

/// `stream-export task …`.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct TaskCommand {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    what: TaskWhat,
}

/// What to do with a task.
#[derive(Subcommand, Debug)]
enum TaskWhat {
    /// Show a task's state once (exit 1 if it failed or was canceled).
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        /// The task id.
        task_id: String,
    },
    /// List the tasks submitted through the service that you may see, newest first (a table
    /// on a terminal; JSON lines with --json or when the output is not a terminal).
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// The most tasks to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Watch a task until it ends, and optionally save its export (this is how an export
    /// interrupted with Ctrl-C is picked up).
    #[command(after_help = EXIT_CODES_HELP)]
    Watch {
        /// The task id.
        task_id: String,
        /// Save the export's records to FILE as JSON lines (atomically), or to stdout with `-`.
        /// An existing FILE is refused unless --overwrite is given.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace --output FILE if it exists.
        #[arg(long, requires = "output")]
        overwrite: bool,
    },
}

/// `stream-export job …`.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct JobCommand {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    what: JobWhat,
}

/// What to do with export jobs.
#[derive(Subcommand, Debug)]
enum JobWhat {
    /// Start an export job: every channel of a file or of a QueryChannels filter, or every user
    /// of a file, cut by the service into tasks of 25 (prints the job id, or follows it with
    /// --wait/--output).
    #[command(after_help = EXIT_CODES_HELP)]
    Create(Box<JobCreateArgs>),
    /// Show a job's state and progress once (exit 1 if it FAILED or was CANCELLED).
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        /// The job id.
        job_id: String,
    },
    /// List the jobs you may see, newest first (a table on a terminal; JSON lines with --json or
    /// when the output is not a terminal).
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// The most jobs to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only the jobs this export schedule started.
        #[arg(long, value_name = "SCHEDULE_ID")]
        schedule: Option<String>,
    },
    /// Follow a job until it ends, and optionally save its tasks' records (this is how a job
    /// left with Ctrl-C, or a save interrupted, is picked up).
    #[command(after_help = EXIT_CODES_HELP)]
    Watch {
        /// The job id.
        job_id: String,
        #[command(flatten)]
        output: JobOutputArgs,
    },
    /// List a job's tasks, one per shard: shard, state, attempts, task id, channels or users (a
    /// table on a terminal; JSON lines with --json or when the output is not a terminal).
    #[command(after_help = EXIT_CODES_HELP)]
    Tasks {
        /// The job id.
        job_id: String,
    },
    /// Check an archived job's files: the service reads the job's manifest and every file it
    /// lists back from the archive, comparing sizes and SHA-256. Prints the manifest, what was
    /// checked, and one line per file missing or different (then exits 1).
    #[command(after_help = EXIT_CODES_HELP)]
    Verify {
        /// The job id.
        job_id: String,
    },
    /// Cancel a job: the service stops submitting its tasks within seconds (tasks already
    /// submitted run to their end upstream and stay readable). Prints the job's state.
    #[command(after_help = EXIT_CODES_HELP)]
    Cancel {
        /// The job id.
        job_id: String,
    },
}

/// Arguments of `job create`.
#[derive(Args, Debug)]
pub struct JobCreateArgs {
    #[command(flatten)]
    template: JobTemplateArgs,
    /// Only messages created since TIME (a date, UTC midnight, or an RFC 3339 time), for every
    /// channel without a window of its own.
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only messages created before TIME (a date or an RFC 3339 time), for every channel without
    /// a window of its own.
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// Follow the job until it ends, showing its progress.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    output: JobOutputArgs,
}

/// What an export job exports, with its options and archive: `job create`'s, and the template
/// of each job that `schedule create` has the service start.
#[derive(Args, Debug)]
#[command(group(ArgGroup::new("selector").required(true).args(["channels_file", "query", "users_file"])))]
pub struct JobTemplateArgs {
    /// The channels, from FILE: one TYPE:ID[@SINCE..UNTIL] a line, as `export channels` takes
    /// them (a schedule's channels take no window: it sets each window's); blank lines and lines
    /// starting with `#` are skipped.
    #[arg(long, value_name = "FILE")]
    channels_file: Option<PathBuf>,
    /// Every channel that a QueryChannels filter matches when the job is planned: Stream's
    /// `filter_conditions` as a JSON object, e.g. '{"type": "messaging", "team": "acme"}'.
    #[arg(long, value_name = "JSON")]
    query: Option<String>,
    /// The users, from FILE: one user id a line; blank lines and lines starting with `#` are
    /// skipped (`job create` only: a schedule exports channels).
    #[arg(long, value_name = "FILE")]
    users_file: Option<PathBuf>,
    #[command(flatten)]
    options: ChannelOptions,
    /// Copy each task's file, as soon as its task completes, under URI (`s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix`, `file:///path`), into `URI/JOB_ID/`,
    /// with a `manifest.json` written last. The service must allow the prefix (its
    /// `--archive-allow`); it uses its own cloud credentials, the client needs none.
    #[arg(long, value_name = "URI", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    archive: Option<String>,
    /// With --archive: read each archived file back after its upload and compare its SHA-256.
    #[arg(long)]
    verify: bool,
}

/// Saving a job's records.
#[derive(Args, Debug, Clone)]
pub struct JobOutputArgs {
    /// Once the job SUCCEEDED, save each task's records to DIR (an existing, writable directory)
    /// as JSON lines, one file per shard, `SHARD-TASKID.jsonl`, each written atomically. A file
    /// already there is kept, so that running `job watch ID --output DIR` again resumes a save.
    /// Implies --wait.
    #[arg(long, short, value_name = "DIR")]
    output: Option<PathBuf>,
}

/// `stream-export schedule …`.
#[derive(Args, Debug)]
#[command(after_help = EXIT_CODES_HELP)]
pub struct ScheduleCommand {
    #[command(flatten)]
    options: ClientOptions,
    #[command(subcommand)]
    what: ScheduleWhat,
}

/// What to do with export schedules.
#[derive(Subcommand, Debug)]
enum ScheduleWhat {
    /// Create an export schedule: the service starts an export job for every window of --every
    /// from --start, once the window has ended and --lag has passed; windows already past are
    /// caught up in order. Prints the schedule (its id alone on stdout).
    #[command(after_help = EXIT_CODES_HELP)]
    Create(Box<ScheduleCreateArgs>),
    /// Show a schedule: what it exports, its interval and lag, whether it is paused, its next
    /// window, the windows started, its running jobs and its last job of each end.
    #[command(after_help = EXIT_CODES_HELP)]
    Get {
        /// The schedule id.
        schedule_id: String,
    },
    /// List the schedules you may see, newest first (a table on a terminal; JSON lines with
    /// --json or when the output is not a terminal).
    #[command(after_help = EXIT_CODES_HELP)]
    List {
        /// The most schedules to list.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Pause a schedule: no window starts until it is resumed. Prints the schedule.
    #[command(after_help = EXIT_CODES_HELP)]
    Pause {
        /// The schedule id.
        schedule_id: String,
    },
    /// Resume a paused schedule: the windows that ended meanwhile start, in order. Prints the
    /// schedule.
    #[command(after_help = EXIT_CODES_HELP)]
    Resume {
        /// The schedule id.
        schedule_id: String,
    },
    /// Delete a schedule: no window starts after it; the jobs it started stay, and run on.
    #[command(after_help = EXIT_CODES_HELP)]
    Delete {
        /// The schedule id.
        schedule_id: String,
    },
}

/// Arguments of `schedule create`.
#[derive(Args, Debug)]
pub struct ScheduleCreateArgs {
    /// The length of each window, e.g. 24h, 1d, 6h, 15m, 90s (at least 1s; meant for hours
    /// and days).
    #[arg(long, value_name = "DURATION")]
    every: String,
    /// The start of the first window (a date, UTC midnight, or an RFC 3339 time); a time in the
    /// past has the windows since then exported, in order (a backfill).
    #[arg(long, value_name = "TIME")]
    start: String,
    /// How long after a window ends its job starts, for messages that arrive late, e.g. 15m, 0s
    /// (default: the service's, 15 minutes).
    #[arg(long, value_name = "DURATION")]
    lag: Option<String>,
    /// Every Nth window's job exports everything up to the window's end, catching the edits and
    /// deletions that the windows before missed.
    #[arg(long, value_name = "N")]
    full_every: Option<u32>,
    /// Create the schedule paused: no window starts until `schedule resume`.
    #[arg(long)]
    paused: bool,
    #[command(flatten)]
    template: JobTemplateArgs,
    /// The create's idempotency key (a UUID): creating again with the same one returns the first
    /// schedule rather than a second one (default: a fresh one, reused on the client's retries).
    #[arg(long, value_name = "UUID")]
    request_id: Option<String>,
}

/// What every command works with: the client, the display, and what to say on Ctrl-C.
pub(crate) struct Session {
    client: Client,
    display: Display,
    pickup: Pickup,
}

/// Once a task exists, how a person picks it up after Ctrl-C.
type Pickup = Arc<Mutex<Option<String>>>;

impl Session {
    /// The task being followed (and saved to `sink`): what Ctrl-C leaves running upstream.
    fn set_pickup(&self, task_id: &str, sink: Option<&Sink>) {
        let command = match sink {
            Some(Sink::File(file)) => {
                format!("`stream-export task watch {task_id} --output {}`", file.path().display())
            }
            Some(Sink::Stdout(_)) => format!("`stream-export task watch {task_id} --output -`"),
            None => format!("`stream-export task watch {task_id}` (with --output FILE to save it)"),
        };
        let text = format!("the export {task_id} continues upstream; {command} picks it up");
        if let Ok(mut pickup) = self.pickup.lock() {
            *pickup = Some(text);
        }
    }

    /// The job being followed (its tasks saved to `directory`): what Ctrl-C leaves running.
    fn set_job_pickup(&self, job_id: &str, directory: Option<&std::path::Path>) {
        let command = match directory {
            Some(directory) => format!("`stream-export job watch {job_id} --output {}`", directory.display()),
            None => format!("`stream-export job watch {job_id}`"),
        };
        let text = format!("the job {job_id} continues in the service; {command} picks it up");
        if let Ok(mut pickup) = self.pickup.lock() {
            *pickup = Some(text);
        }
    }
}

/// `--output` checked before anything is sent; `-` (stdout) cannot share stdout with `--json`.
fn checked_output(path: Option<&PathBuf>, overwrite: bool, json: bool) -> Result<Option<Output>, Failure> {
    let Some(path) = path else { return Ok(None) };
    let output = Output::check(path, overwrite)?;
    if json && output == Output::Stdout {
        return Err(Failure::Usage(
            "--output - writes the records to stdout, where --json writes its events: use one or the other".into(),
        ));
    }
    Ok(Some(output))
}

/// The flags of [`ClientOptions`] that take a value.
const CLIENT_OPTIONS_WITH_VALUE: &[&str] = &["--server", "--token", "--ca-cert", "--client-cert", "--client-key"];

/// The client commands, which take [`ClientOptions`].
const CLIENT_COMMANDS: &[&str] = &["export", "task", "job", "schedule"];

/// Moves the client options given before the command (`stream-export --server URL export …`)
/// after it, where clap expects them; any other arguments are returned as they were.
pub fn hoist_client_options(args: Vec<OsString>) -> Vec<OsString> {
    let Some(command) =
        args.iter().skip(1).position(|arg| CLIENT_COMMANDS.iter().any(|command| arg == *command)).map(|i| i + 1)
    else {
        return args;
    };
    let mut hoisted = Vec::new();
    let mut index = 1;
    let mut before = vec![args[0].clone()];
    while index < command {
        let arg = &args[index];
        let text = arg.to_string_lossy();
        let name = text.split_once('=').map_or(&*text, |(name, _)| name);
        if CLIENT_OPTIONS_WITH_VALUE.contains(&name) {
            hoisted.push(arg.clone());
            if !text.contains('=') && index + 1 < command {
                index += 1;
                hoisted.push(args[index].clone());
            }
        } else if text == "--json" {
            hoisted.push(arg.clone());
        } else {
            // Not a client option (`--help`, a typo): leave everything for clap to judge.
            return args;
        }
        index += 1;
    }
    if hoisted.is_empty() {
        return args;
    }
    before.push(args[command].clone());
    before.extend(hoisted);
    before.extend(args[command + 1..].iter().cloned());
    before
}

/// Runs `stream-export export …`; returns the process exit code.
///
/// The arguments, `--output` included, are checked before anything is sent.
pub async fn run_export(command: ExportCommand) -> ExitCode {
    let ExportCommand { options, what } = command;
    let json = options.json;
    let checked = match &what {
        ExportWhat::Channels(args) => args
            .channels
            .iter()
            .try_for_each(|spec| export::parse_channel(spec).map(drop))
            .and_then(|()| checked_output(args.wait.output.as_ref(), args.wait.overwrite, json)),
        ExportWhat::Users(args) => export::check_user_ids(&args.user_ids)
            .and_then(|()| checked_output(args.wait.output.as_ref(), args.wait.overwrite, json)),
        ExportWhat::User(args) => export::check_user_ids(std::slice::from_ref(&args.user_id))
            .and_then(|()| checked_output(args.output.as_ref(), args.overwrite, false)),
    };
    let output = match checked {
        Ok(output) => output,
        Err(failure) => {
            failure.report(json);
            return ExitCode::from(failure.exit_code());
        }
    };
    run(options, |session| async move {
        let mut session = session?;
        match what {
            ExportWhat::Channels(args) => export::channels(&mut session, args, output).await,
            ExportWhat::Users(args) => export::users(&mut session, args, output).await,
            ExportWhat::User(args) => export::user(&mut session, args, output).await,
        }
    })
    .await
}

/// Runs `stream-export task …`; returns the process exit code.
pub async fn run_task(command: TaskCommand) -> ExitCode {
    let TaskCommand { options, what } = command;
    let output = match &what {
        TaskWhat::Watch { output, overwrite, .. } => checked_output(output.as_ref(), *overwrite, options.json),
        TaskWhat::Get { .. } | TaskWhat::List { .. } => Ok(None),
    };
    let output = match output {
        Ok(output) => output,
        Err(failure) => {
            failure.report(options.json);
            return ExitCode::from(failure.exit_code());
        }
    };
    run(options, |session| async move {
        let mut session = session?;
        match what {
            TaskWhat::Get { task_id } => export::get(&mut session, &task_id).await,
            TaskWhat::List { limit } => list::list(&mut session, limit).await,
            TaskWhat::Watch { task_id, .. } => {
                let sink = output.as_ref().map(Output::open).transpose()?;
                export::follow(&mut session, &task_id, sink, None).await
            }
        }
    })
    .await
}

/// Runs `stream-export job …`; returns the process exit code.
///
/// The arguments, the input files and `--output` are checked before anything is sent.
pub async fn run_job(command: JobCommand) -> ExitCode {
    let JobCommand { options, what } = command;
    let checked = match CheckedJob::check(what) {
        Ok(checked) => checked,
        Err(failure) => {
            failure.report(options.json);
            return ExitCode::from(failure.exit_code());
        }
    };
    run(options, |session| async move {
        let mut session = session?;
        match checked {
            CheckedJob::Create { request, wait, directory } => {
                job::create(&mut session, request, wait, directory).await
            }
            CheckedJob::Get(job_id) => job::get(&mut session, &job_id).await,
            CheckedJob::List(limit, schedule) => job::list(&mut session, limit, schedule).await,
            CheckedJob::Watch { job_id, directory } => job::follow(&mut session, &job_id, directory).await,
            CheckedJob::Tasks(job_id) => job::tasks(&mut session, &job_id).await,
            CheckedJob::Verify(job_id) => job::verify(&mut session, &job_id).await,
            CheckedJob::Cancel(job_id) => job::cancel(&mut session, &job_id).await,
        }
    })
    .await
}

/// A `job` command with its input files read and its arguments and `--output` checked.
enum CheckedJob {
    Create { request: Box<CreateExportJobRequest>, wait: bool, directory: Option<PathBuf> },
    Get(String),
    List(usize, Option<String>),
    Watch { job_id: String, directory: Option<PathBuf> },
    Tasks(String),
    Verify(String),
    Cancel(String),
}

impl CheckedJob {
    fn check(what: JobWhat) -> Result<Self, Failure> {
        Ok(match what {
            JobWhat::Create(args) => CheckedJob::Create {
                request: Box::new(job::create_request(&args)?),
                wait: args.wait,
                directory: job::checked_directory(args.output.output.as_deref())?,
            },
            JobWhat::Get { job_id } => CheckedJob::Get(job_id),
            JobWhat::List { limit, schedule } => CheckedJob::List(limit, schedule),
            JobWhat::Watch { job_id, output } => {
                CheckedJob::Watch { directory: job::checked_directory(output.output.as_deref())?, job_id }
            }
            JobWhat::Tasks { job_id } => CheckedJob::Tasks(job_id),
            JobWhat::Verify { job_id } => CheckedJob::Verify(job_id),
            JobWhat::Cancel { job_id } => CheckedJob::Cancel(job_id),
        })
    }
}

/// Runs `stream-export schedule …`; returns the process exit code.
///
/// The arguments and the template's input file are checked before anything is sent.
pub async fn run_schedule(command: ScheduleCommand) -> ExitCode {
    let ScheduleCommand { options, what } = command;
    let checked = match CheckedSchedule::check(what) {
        Ok(checked) => checked,
        Err(failure) => {
            failure.report(options.json);
            return ExitCode::from(failure.exit_code());
        }
    };
    run(options, |session| async move {
        let mut session = session?;
        match checked {
            CheckedSchedule::Create(request) => schedule::create(&mut session, *request).await,
            CheckedSchedule::Get(schedule_id) => schedule::get(&mut session, &schedule_id).await,
            CheckedSchedule::List(limit) => schedule::list(&mut session, limit).await,
            CheckedSchedule::Pause(schedule_id) => schedule::set_paused(&mut session, &schedule_id, true).await,
            CheckedSchedule::Resume(schedule_id) => schedule::set_paused(&mut session, &schedule_id, false).await,
            CheckedSchedule::Delete(schedule_id) => schedule::delete(&mut session, &schedule_id).await,
        }
    })
    .await
}

/// A `schedule` command with its arguments checked and its template's file read.
enum CheckedSchedule {
    Create(Box<CreateExportScheduleRequest>),
    Get(String),
    List(usize),
    Pause(String),
    Resume(String),
    Delete(String),
}

impl CheckedSchedule {
    fn check(what: ScheduleWhat) -> Result<Self, Failure> {
        Ok(match what {
            ScheduleWhat::Create(args) => CheckedSchedule::Create(Box::new(schedule::create_request(&args)?)),
            ScheduleWhat::Get { schedule_id } => CheckedSchedule::Get(schedule_id),
            ScheduleWhat::List { limit } => CheckedSchedule::List(limit),
            ScheduleWhat::Pause { schedule_id } => CheckedSchedule::Pause(schedule_id),
            ScheduleWhat::Resume { schedule_id } => CheckedSchedule::Resume(schedule_id),
            ScheduleWhat::Delete { schedule_id } => CheckedSchedule::Delete(schedule_id),
        })
    }
}

/// Connects, runs `work` until it ends or Ctrl-C, and reports a failure in one line.
///
/// On Ctrl-C the work's future is dropped, which removes a temporary output file (see
/// [`output::AtomicJsonl`]) and clears the progress display; the message says that a submitted
/// export goes on upstream, and how to pick it up.
async fn run<F, Fut>(options: ClientOptions, work: F) -> ExitCode
where
    F: FnOnce(Result<Session, Failure>) -> Fut,
    Fut: Future<Output = Result<(), Failure>>,
{
    let json = options.json;
    let pickup = Pickup::default();
    let work = async {
        let session = connect::connect(&options).await.map(|client| Session {
            client,
            display: Display::new(json),
            pickup: Arc::clone(&pickup),
        });
        work(session).await
    };
    let outcome = tokio::select! {
        outcome = work => outcome,
        _ = tokio::signal::ctrl_c() => Err(Failure::Interrupted(pickup.lock().ok().and_then(|p| p.clone()))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            let failure = failure.explained(&options.server);
            failure.report(json);
            ExitCode::from(failure.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hoisted(line: &str) -> String {
        let args = line.split(' ').map(OsString::from).collect();
        hoist_client_options(args).iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn client_options_before_the_command_move_after_it() {
        assert_eq!(hoisted("se --server h:1 --token=t export users u"), "se export --server h:1 --token=t users u");
        assert_eq!(hoisted("se --json task get x"), "se task --json get x");
        assert_eq!(hoisted("se --server h:1 job list"), "se job --server h:1 list");
        assert_eq!(hoisted("se --json schedule get x"), "se schedule --json get x");
        assert_eq!(hoisted("se export users u --server h:1"), "se export users u --server h:1", "already in place");
        assert_eq!(hoisted("se --listen x serve"), "se --listen x serve", "not a client command");
        assert_eq!(hoisted("se --bogus export users u"), "se --bogus export users u", "clap judges the rest");
    }
}
