//! The command-line client (`stream-export export …`, `stream-export task …`) as a person or a
//! script runs it: child processes of the real binary against the real service (a child process
//! too) in front of an in-process emulator that the tests steer. Checks the files, the output and
//! the exit codes.

use crate::common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Output, Stdio},
    time::Duration,
};

use common::{
    API_KEY, API_SECRET, TestEmulator,
    pki::Pki,
    process::ServiceProcess,
    records::{expected_records, normalised},
};
use serde_json::{Value, json};
use stream_export::emulator::{
    EmulatorConfig,
    data::{DELETED_CHANNEL, HEAVY_CHANNEL, HEAVY_USER, KNOWN_CHANNEL, KNOWN_USER, TEAM_CHANNEL, UNKNOWN_USER},
};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_stream-export");

/// The emulator, the service in front of it, and a scratch directory (also for `cli_schedules`).
pub(crate) struct Env {
    pub(crate) emulator: TestEmulator,
    service: ServiceProcess,
    /// The `serve` flags, for a replacement service.
    service_args: Vec<String>,
    dir: PathBuf,
}

/// The service's environment: credentials of the emulator, quiet logs.
const SERVICE_ENV: &[(&str, &str)] =
    &[("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET), ("RUST_LOG", "warn")];

async fn setup() -> Env {
    setup_with(&[]).await
}

/// The same, with more `serve` flags.
async fn setup_with(extra: &[&str]) -> Env {
    setup_over(EmulatorConfig::new(API_KEY, API_SECRET), extra).await
}

/// The same, with emulator settings.
async fn setup_over(config: EmulatorConfig, extra: &[&str]) -> Env {
    let emulator = TestEmulator::spawn(config).await;
    let base_url = emulator.base_url();
    let mut args = vec!["--stream-base-url", &base_url, "--watch-poll-min", "50ms", "--watch-poll-max", "300ms"];
    args.extend(["--upstream-poll-budget", "200"]);
    args.extend(extra);
    let service = ServiceProcess::start(&args, SERVICE_ENV);
    service.wait_ready(true).await;
    let dir = std::env::temp_dir().join(format!("cli-client-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let service_args = args.iter().map(|arg| arg.to_string()).collect();
    Env { emulator, service, service_args, dir }
}

impl Env {
    /// Kills the service with SIGKILL, as a crash or an OOM would, and starts a new one on the
    /// same port.
    async fn replace_service(&mut self) {
        self.service.kill();
        let args: Vec<&str> = self.service_args.iter().map(String::as_str).collect();
        self.service = ServiceProcess::start_on(self.service.port, &args, SERVICE_ENV);
        self.service.wait_ready(true).await;
    }

    /// The client binary with `--server` set, a clean environment and piped output.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env_clear()
            .env("STREAM_EXPORT_SERVER", self.service.url("http"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Runs the client to its end.
    pub(crate) async fn run(&self, args: &[&str]) -> Output {
        finish(self.command(args).spawn().unwrap()).await
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Every file in the scratch directory (temporary ones included).
    fn files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits (bounded) for a child to end and collects its output.
async fn finish(child: Child) -> Output {
    tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
        .await
        .expect("the client ends in time")
        .expect("the client runs")
}

pub(crate) fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
pub(crate) fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    assert!(!text(&output.stderr).contains("panicked"), "{}", text(&output.stderr));
}

/// Every stdout line of a `--json` run, each parsed (the test fails on a line that is not JSON).
pub(crate) fn json_lines(output: &Output) -> Vec<Value> {
    text(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect()
}

/// The records of a saved file, as (type, item).
fn saved_records(path: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line).unwrap();
            (value["type"].as_str().unwrap().to_owned(), value["item"].clone())
        })
        .collect()
}

fn kinds(records: &[(String, Value)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (kind, _) in records {
        *counts.entry(kind.clone()).or_default() += 1;
    }
    counts
}

/// The `result` object of a `--json` run.
fn result_of(lines: &[Value]) -> &Value {
    lines.iter().find(|l| l["event"] == "result").unwrap_or_else(|| panic!("no result line in {lines:?}"))
}

#[tokio::test]
async fn channel_exports_v1_and_v2_are_saved_record_for_record() {
    let env = setup().await;
    for (name, version) in [("v1.jsonl", None), ("v2.jsonl", Some("--v2"))] {
        let path = env.path(name);
        let path_text = path.to_str().unwrap();
        let mut args = vec!["export", "channels", KNOWN_CHANNEL, TEAM_CHANNEL, "--include-truncated", "--export-users"];
        args.extend(version);
        args.extend(["--output", path_text, "--json"]);
        let output = env.run(&args).await;
        assert_exit(&output, 0);

        let lines = json_lines(&output);
        assert_eq!(lines[0]["event"], "submitted", "{lines:?}");
        let task_id = lines[0]["task_id"].as_str().unwrap();
        assert!(lines.iter().any(|l| l["event"] == "task_event" && l["type"] == "SNAPSHOT"), "{lines:?}");
        let result = result_of(&lines);
        assert_eq!(result["task"]["task_id"], task_id);
        assert_eq!(result["task"]["state"], "COMPLETED");

        // The same records as the export file itself, downloaded directly.
        let url = result["task"]["result"]["url"].as_str().unwrap();
        let body = env.emulator.http.get(url).send().await.unwrap().text().await.unwrap();
        let expected = expected_records(&body);
        let saved = saved_records(&path);
        assert_eq!(result["records"], json!(saved.len()));
        assert_eq!(kinds(&saved), kinds(&expected), "{name}");
        for (index, ((kind, item), (want_kind, want_item))) in saved.iter().zip(&expected).enumerate() {
            assert_eq!(kind, want_kind, "{name} record {index}");
            assert_eq!(normalised(item), normalised(want_item), "{name} record {index}");
        }
        assert!(["channel", "member", "message", "reaction", "user"].iter().all(|k| kinds(&saved).contains_key(*k)));
    }
    assert_eq!(env.files(), ["v1.jsonl", "v2.jsonl"], "no temporary file is left");
}

#[tokio::test]
async fn users_and_user_exports_are_saved() {
    let env = setup().await;
    let path = env.path("users.jsonl");
    let output = env.run(&["export", "users", KNOWN_USER, "user-02", "--output", path.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    // Progress in plain lines on stderr; on stdout only the task id, for `$(…)`.
    let stderr = text(&output.stderr);
    assert!(stderr.lines().next().unwrap().starts_with("submitted task "), "plain lines: {stderr}");
    assert!(stderr.contains("COMPLETED"), "{stderr}");
    let stdout = text(&output.stdout);
    assert!(uuid::Uuid::parse_str(stdout.trim()).is_ok() && stdout.lines().count() == 1, "the task id: {stdout:?}");
    // One size unit: binary, as on the progress display.
    assert!(stderr.contains("iB) to ") && !stderr.contains("bytes)"), "{stderr}");
    let saved = saved_records(&path);
    let users: Vec<&Value> = saved.iter().filter(|(k, _)| k == "user").map(|(_, item)| &item["id"]).collect();
    assert_eq!(users, [&json!(KNOWN_USER), &json!("user-02")]);
    assert!(kinds(&saved)["message"] > 0);

    let path = env.path("user.jsonl");
    let output = env.run(&["export", "user", KNOWN_USER, "--output", path.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    let saved = saved_records(&path);
    assert_eq!(saved[0].0, "user");
    assert_eq!(saved[0].1["id"], KNOWN_USER);
    assert!(kinds(&saved)["message"] > 0 && kinds(&saved)["reaction"] > 0, "{:?}", kinds(&saved));

    // Without --output the records go to stdout, the same lines.
    let output = env.run(&["export", "user", KNOWN_USER]).await;
    assert_exit(&output, 0);
    assert_eq!(text(&output.stdout), std::fs::read_to_string(&path).unwrap());

    // Refusals: exit 4, one line on stderr, no file.
    for user in [HEAVY_USER, UNKNOWN_USER] {
        let path = env.path("refused.jsonl");
        let output = env.run(&["export", "user", user, "--output", path.to_str().unwrap()]).await;
        assert_exit(&output, 4);
        assert_eq!(text(&output.stderr).lines().count(), 1, "{}", text(&output.stderr));
        assert!(!path.exists());
    }
    let output = env.run(&["export", "user", HEAVY_USER, "--json"]).await;
    assert_exit(&output, 4);
    let lines = json_lines(&output);
    assert_eq!(lines.last().unwrap()["reason"], "USER_EXPORT_TOO_LARGE");
    assert_eq!(lines.last().unwrap()["code"], "FAILED_PRECONDITION", "gRPC's name of the code");
    // The way out, in the CLI's own terms rather than an RPC's name.
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("`stream-export export users {HEAVY_USER}")), "{stderr}");
    assert!(!stderr.contains("ExportUsers"), "{stderr}");
    assert_eq!(env.files(), ["user.jsonl", "users.jsonl"]);
}

#[tokio::test]
async fn task_get_and_task_watch_follow_an_existing_task() {
    let env = setup().await;
    let output = env.run(&["export", "channels", &format!("{KNOWN_CHANNEL}@2024-02-01T00:00:00Z.."), "--v2"]).await;
    assert_exit(&output, 0);
    let task_id = text(&output.stdout).trim().to_owned();
    assert!(uuid::Uuid::parse_str(&task_id).is_ok(), "without --wait the task id alone: {task_id:?}");
    env.emulator.steer(&task_id, json!({"hold": true})).await;

    let output = env.run(&["task", "get", &task_id]).await;
    assert_exit(&output, 0);
    assert!(text(&output.stdout).contains("WAITING"), "{}", text(&output.stdout));
    let output = env.run(&["task", "get", &task_id, "--json"]).await;
    assert_eq!(result_of(&json_lines(&output))["task"]["state"], "WAITING");

    let path = env.path("watched.jsonl");
    let watcher = env.command(&["task", "watch", &task_id, "--output", path.to_str().unwrap()]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.emulator.steer(&task_id, json!({"status": "running"})).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.emulator.steer(&task_id, json!({"status": "completed"})).await;
    let output = finish(watcher).await;
    assert_exit(&output, 0);
    let stderr = text(&output.stderr);
    for state in ["WAITING", "RUNNING", "COMPLETED"] {
        assert!(stderr.contains(state), "one line per change: {stderr}");
    }
    assert_eq!(text(&output.stdout).trim(), task_id, "stdout: the task id alone");
    let saved = saved_records(&path);
    assert_eq!(saved[0].0, "channel");
    // The window applies: every message is from February on.
    let messages: Vec<&Value> = saved.iter().filter(|(kind, _)| kind == "message").map(|(_, item)| item).collect();
    assert!(!messages.is_empty());
    assert!(messages.iter().all(|m| m["created_at"].as_str() >= Some("2024-02-01")), "{:?}", messages[0]);

    let output = env.run(&["task", "get", "5b7d2d8c-1111-4222-8333-444455556666"]).await;
    assert_exit(&output, 4);

    // `task list` (stdout is not a terminal here: JSON lines) shows the task, last seen completed.
    let output = env.run(&["task", "list"]).await;
    assert_exit(&output, 0);
    let listed = json_lines(&output);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["task_id"], task_id.as_str());
    assert_eq!(listed[0]["rpc"], "ExportChannels");
    assert_eq!(listed[0]["channels"], json!([KNOWN_CHANNEL]));
    assert_eq!(listed[0]["last_observed"]["state"], "COMPLETED");
}

#[tokio::test]
async fn a_failed_task_exits_1() {
    let env = setup().await;
    let output = env.run(&["export", "users", KNOWN_USER, "--json"]).await;
    let task_id = json_lines(&output)[0]["task_id"].as_str().unwrap().to_owned();
    env.emulator.steer(&task_id, json!({"hold": true})).await;

    let path = env.path("failed.jsonl");
    let watcher =
        env.command(&["task", "watch", &task_id, "--json", "--output", path.to_str().unwrap()]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.emulator
        .steer(&task_id, json!({"status": "failed", "error": {"type": "export_error", "description": "disk full"}}))
        .await;
    let output = finish(watcher).await;
    assert_exit(&output, 1);
    assert!(text(&output.stderr).contains("disk full"), "{}", text(&output.stderr));
    let lines = json_lines(&output);
    let last = lines.last().unwrap();
    assert_eq!(
        (&last["event"], &last["task"]["state"], last["exit_code"].as_u64()),
        (&json!("error"), &json!("FAILED"), Some(1))
    );
    assert!(env.files().is_empty(), "no file, no temporary file: {:?}", env.files());

    let output = env.run(&["task", "get", &task_id]).await;
    assert_exit(&output, 1);
}

#[tokio::test]
async fn unavailable_service_or_upstream_exits_3_and_submits_are_retried_with_the_same_request_id() {
    let env = setup().await;
    // Nothing listens there.
    let closed = format!("http://127.0.0.1:{}", common::process::free_port());
    let output = env.run(&["export", "channels", KNOWN_CHANNEL, "--server", &closed]).await;
    assert_exit(&output, 3);
    assert_eq!(text(&output.stderr).lines().count(), 1, "{}", text(&output.stderr));
    assert!(text(&output.stderr).contains("cannot connect"), "{}", text(&output.stderr));

    // Stream keeps failing: the client tries 3 times, then exits 3.
    env.emulator.inject("export_channels", 10, json!({"kind": "status", "status": 503})).await;
    let output = env.run(&["export", "channels", KNOWN_CHANNEL, "--json"]).await;
    assert_exit(&output, 3);
    assert_eq!(json_lines(&output).last().unwrap()["code"], "UNAVAILABLE");
    assert_eq!(env.emulator.requests("export_channels").await, 3);
    assert_eq!(env.emulator.exports_created().await, 0);
    env.emulator.clear_faults().await;

    // One lost answer: the retry (same request_id) succeeds, and exactly one export exists.
    env.emulator.reset_counters().await;
    env.emulator.inject("export_channels", 1, json!({"kind": "status", "status": 503})).await;
    let output = env.run(&["export", "channels", KNOWN_CHANNEL]).await;
    assert_exit(&output, 0);
    assert_eq!(env.emulator.requests("export_channels").await, 2);
    assert_eq!(env.emulator.exports_created().await, 1);
}

#[tokio::test]
async fn bad_usage_exits_2_before_anything_is_sent() {
    let env = setup().await;
    let cases: &[&[&str]] = &[
        &["export", "channels"],
        &["export", "channels", "general"],
        &["export", "channels", "messaging:general@yesterday.."],
        &["export", "channels", "messaging:general@2024-03-01T00:00:00Z..2024-02-01T00:00:00Z"],
        &["export", "users", ""],
        &["export", "frobnicate"],
        &["task", "get"],
        &["export", "user", KNOWN_USER, "--ca-cert", "/nonexistent.pem"],
        &["task", "get", "x", "--server", "ftp://127.0.0.1:1"],
    ];
    for args in cases {
        let output = env.run(args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output.stderr));
        assert!(!text(&output.stderr).is_empty(), "{args:?} says why");
    }
    // (The reversed window is refused by the service: INVALID_ARGUMENT, also 2.)
    assert_eq!(env.emulator.exports_created().await, 0);
}

#[tokio::test]
async fn a_broken_download_is_resumed() {
    let env = setup().await;
    env.emulator.inject("download", 1, json!({"kind": "truncated"})).await;
    let path = env.path("heavy.jsonl");
    let output = env.run(&["export", "channels", HEAVY_CHANNEL, "--v2", "--output", path.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    assert!(text(&output.stderr).contains("resuming"), "{}", text(&output.stderr));
    let saved = saved_records(&path);
    assert!(saved.len() > 10_000, "{}", saved.len());
    assert_eq!(env.emulator.requests("download").await, 2);
}

#[tokio::test]
async fn ctrl_c_while_waiting_exits_130_and_leaves_no_file() {
    let env = setup().await;
    // Tasks created from now on stay `waiting` for ten minutes.
    env.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"waiting_ms": 600_000}))).await;
    let path = env.path("general.jsonl");
    let mut child =
        env.command(&["export", "channels", KNOWN_CHANNEL, "--output", path.to_str().unwrap()]).spawn().unwrap();
    // Wait until it is watching: the first state line.
    let mut seen = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if env.files().iter().any(|f| f.ends_with(".part")) && env.emulator.exports_created().await == 1 {
            seen = true;
            break;
        }
    }
    assert!(seen, "the client submitted and created its temporary file: {:?}", env.files());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait()).await.unwrap().unwrap();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        tokio::io::AsyncReadExt::read_to_string(&mut pipe, &mut stderr).await.unwrap();
    }
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!path.exists(), "no file under the final name");
    assert!(env.files().is_empty(), "no temporary file left: {:?}", env.files());

    // It says that the export goes on upstream, and the command that picks it up; that command
    // works as written.
    let task_id = stderr.split("submitted task ").nth(1).and_then(|rest| rest.split_whitespace().next()).unwrap();
    let pickup = format!("`stream-export task watch {task_id} --output {}`", path.display());
    assert!(stderr.contains("continues upstream") && stderr.contains(&pickup), "{stderr}");
    env.emulator.steer(task_id, json!({"status": "completed"})).await;
    let command = pickup.trim_matches('`').split(' ').skip(1).collect::<Vec<_>>();
    let output = env.run(&command).await;
    assert_exit(&output, 0);
    assert!(saved_records(&path).iter().any(|(kind, _)| kind == "message"));
}

#[tokio::test]
async fn task_watch_on_a_terminal_shows_a_live_progress_display() {
    let env = setup().await;
    let output = env.run(&["export", "channels", KNOWN_CHANNEL]).await;
    let task_id = text(&output.stdout).trim().to_owned();
    env.emulator.steer(&task_id, json!({"hold": true})).await;

    // `script` (util-linux) runs the client on a pseudo-terminal and copies what it draws.
    let inner = format!("stty cols 120 rows 40; exec {BIN} task watch {task_id}");
    let mut command = Command::new("script");
    command
        .args(["-q", "-e", "-f", "-c", &inner, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm-256color")
        .env("STREAM_EXPORT_SERVER", env.service.url("http"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = command.spawn().expect("script(1) is installed (util-linux)");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.emulator.steer(&task_id, json!({"status": "completed"})).await;
    let output = finish(child).await;
    let screen = text(&output.stdout);
    assert_exit(&output, 0);
    assert!(screen.contains(&format!("task {task_id}: WAITING")), "the spinner line with the state:\n{screen}");
    assert!(screen.contains("0:0") && screen.contains(" elapsed"), "elapsed as m:ss: {screen}");
    // When upstream was last polled, as the last event said (heartbeats are 20 s apart here):
    // an instant, not an age that grows between events.
    assert!(screen.contains("last upstream poll at ") && screen.contains(" UTC"), "{screen}");
    assert!(!screen.contains("s ago"), "{screen}");
    assert!(screen.contains("\u{1b}["), "it redraws in place (terminal escapes):\n{screen}");
    assert!(screen.contains("COMPLETED"), "{screen}");

    // On a terminal, `task list` prints a table.
    let mut command = Command::new("script");
    command
        .args(["-q", "-e", "-c", &format!("stty cols 160 rows 40; exec {BIN} task list"), "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm-256color")
        .env("STREAM_EXPORT_SERVER", env.service.url("http"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = command.output().await.expect("script(1) runs");
    let table = text(&output.stdout);
    let mut lines = table.lines().filter(|line| !line.trim().is_empty());
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("TASK ID") && header.contains("OWNER") && header.contains("STATE"), "{table}");
    let row = lines.next().unwrap_or_default();
    assert!(row.starts_with(&task_id) && row.contains("anonymous") && row.contains("COMPLETED"), "{table}");
    assert!(row.contains(KNOWN_CHANNEL), "{table}");
}

#[tokio::test]
async fn bearer_token_and_mutual_tls_reach_a_guarded_service() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let dir = std::env::temp_dir().join(format!("cli-client-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    const TOKEN: &str = "cli-token-0123456789abcdef";
    let Pki { ca, server: (server_cert, server_key), client: (client_cert, client_key) } = Pki::new("cli-user");
    let (ca, server_cert, server_key) =
        (file("ca.pem", &ca), file("server.pem", &server_cert), file("server.key", &server_key));
    let (client_cert, client_key) = (file("client.pem", &client_cert), file("client.key", &client_key));
    let tokens = file("tokens", &format!("cli {TOKEN}\n"));
    let base_url = emulator.base_url();
    let service = ServiceProcess::start(
        &[
            "--stream-base-url",
            &base_url,
            "--auth-tokens-file",
            &tokens,
            "--tls-cert",
            &server_cert,
            "--tls-key",
            &server_key,
            "--tls-client-ca",
            &ca,
        ],
        &[("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET), ("RUST_LOG", "warn")],
    );
    service.wait_ready(false).await;
    let server = format!("https://localhost:{}", service.port);
    let run = |token: Option<&str>| {
        let mut command = Command::new(BIN);
        command
            .args([
                "export",
                "user",
                KNOWN_USER,
                "--server",
                &server,
                "--ca-cert",
                &ca,
                "--client-cert",
                &client_cert,
                "--client-key",
                &client_key,
            ])
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = token {
            command.env("STREAM_EXPORT_TOKEN", token);
        }
        command.spawn().unwrap()
    };
    // The TLS listener may take a moment after the port opens.
    let mut output = finish(run(Some(TOKEN))).await;
    for _ in 0..20 {
        if output.status.code() != Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        output = finish(run(Some(TOKEN))).await;
    }
    assert_exit(&output, 0);
    assert!(text(&output.stdout).starts_with("{\"type\":\"user\""), "{}", text(&output.stdout));

    let output = finish(run(None)).await;
    assert_exit(&output, 4);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(stderr.contains("--token") && stderr.contains("STREAM_EXPORT_TOKEN"), "where the token goes: {stderr}");

    // The scheme does not match what the server speaks: said plainly.
    let plain_url = format!("http://localhost:{}", service.port);
    let output = Command::new(BIN)
        .args(["task", "get", "7f6a1c52-9d3e-4b8a-8a55-0c5e1d2f3a4b", "--server", &plain_url])
        .env_clear()
        .output()
        .await
        .unwrap();
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("if it uses TLS, use https://localhost:{}", service.port)), "{stderr}");
    let plain = ServiceProcess::start(
        &["--stream-base-url", &base_url],
        &[("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET), ("RUST_LOG", "warn")],
    );
    plain.wait_ready(true).await;
    let output = Command::new(BIN)
        .args(["task", "get", "x", "--server", &format!("https://localhost:{}", plain.port), "--ca-cert", &ca])
        .env_clear()
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!("the server does not speak TLS: use http://localhost:{}", plain.port)),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_interrupted_watch_stream_is_resumed() {
    // The service cuts every watch stream after a second (UNAVAILABLE WATCH_INTERRUPTED).
    let env = setup_with(&["--watch-max-lifetime", "1s"]).await;
    let output = env.run(&["export", "channels", KNOWN_CHANNEL]).await;
    let task_id = text(&output.stdout).trim().to_owned();
    env.emulator.steer(&task_id, json!({"hold": true})).await;
    let watcher = env.command(&["task", "watch", &task_id, "--json"]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.emulator.steer(&task_id, json!({"status": "completed"})).await;
    let output = finish(watcher).await;
    assert_exit(&output, 0);
    let lines = json_lines(&output);
    assert!(
        lines.iter().any(|l| l["event"] == "notice" && l["message"].as_str().unwrap().contains("resuming")),
        "{lines:?}"
    );
    let snapshots = lines.iter().filter(|l| l["type"] == "SNAPSHOT").count();
    assert!(snapshots >= 2, "each resumed stream starts with a snapshot: {lines:?}");
    assert_eq!(result_of(&lines)["task"]["state"], "COMPLETED");
}

/// The largest user a synchronous export allows (Stream refuses more than 10,000 messages; the
/// emulator's heavy user set to 9,999) is over the 4 MiB gRPC clients accept by default, yet the
/// CLI receives it whole. Prints the sizes (see BENCHMARKS.md):
/// `cargo test --test cli_client largest_synchronous -- --nocapture`.
#[tokio::test]
async fn the_largest_synchronous_user_export_is_received() {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.heavy_user_messages = 9_999;
    let env = setup_over(config, &[]).await;

    let (status, body) = env.emulator.api_get(&format!("/users/{HEAVY_USER}/export")).await;
    assert_eq!(status, 200);
    let upstream_bytes = body.to_string().len();
    let mut client = stream_export::proto::export_service_client::ExportServiceClient::connect(env.service.url("http"))
        .await
        .unwrap()
        .max_decoding_message_size(usize::MAX);
    let request = stream_export::proto::ExportUserRequest { user_id: HEAVY_USER.into() };
    let grpc_bytes = prost::Message::encoded_len(&client.export_user(request).await.unwrap().into_inner());
    eprintln!("largest allowed user: {upstream_bytes} bytes of upstream JSON, a {grpc_bytes}-byte gRPC message");
    assert!(grpc_bytes > 4 * 1024 * 1024, "the case needs a message over the default 4 MiB: {grpc_bytes}");

    let path = env.path("largest.jsonl");
    let output = env.run(&["export", "user", HEAVY_USER, "--output", path.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    assert_eq!(kinds(&saved_records(&path))["message"], 9_999);
}

#[tokio::test]
async fn a_bad_output_path_is_refused_before_anything_is_submitted_naming_the_path_typed() {
    let env = setup().await;
    let existing = env.path("existing.jsonl");
    std::fs::write(&existing, "keep me\n").unwrap();
    let missing_dir = env.path("no-such-dir").join("out.jsonl");
    let cases: Vec<(String, &str)> = vec![
        (missing_dir.display().to_string(), "does not exist"),
        (env.dir.display().to_string(), "is a directory"),
        (existing.display().to_string(), "already exists"),
        // Not writable, even by root.
        ("/sys/out.jsonl".to_owned(), "cannot create a file in /sys"),
    ];
    for (path, why) in &cases {
        for command in [
            &["export", "channels", KNOWN_CHANNEL][..],
            &["export", "users", KNOWN_USER],
            &["export", "user", KNOWN_USER],
        ] {
            let mut args = command.to_vec();
            args.extend(["--output", path]);
            let output = env.run(&args).await;
            assert_exit(&output, 2);
            let stderr = text(&output.stderr);
            assert!(stderr.contains(&format!("--output {path}: ")) && stderr.contains(why), "{args:?}: {stderr}");
            assert!(!stderr.contains(".part"), "the path typed, not the temporary file: {stderr}");
        }
    }
    assert_eq!(env.emulator.exports_created().await, 0, "no export was started");
    assert_eq!(env.emulator.requests("export_user").await, 0);
    assert_eq!(std::fs::read_to_string(&existing).unwrap(), "keep me\n");

    // --overwrite replaces it.
    let output = env.run(&["export", "user", KNOWN_USER, "--output", existing.to_str().unwrap(), "--overwrite"]).await;
    assert_exit(&output, 0);
    assert_eq!(saved_records(&existing)[0].1["id"], KNOWN_USER);
    assert_eq!(env.files(), ["existing.jsonl"], "no temporary file left");
}

#[tokio::test]
async fn stdout_holds_the_answer_a_script_wants() {
    let env = setup().await;
    // --wait: the result URL alone.
    let output = env.run(&["export", "users", KNOWN_USER, "--wait"]).await;
    assert_exit(&output, 0);
    let stdout = text(&output.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let url = stdout.trim();
    assert!(url.starts_with("http") && url.contains("/exports/"), "the result URL: {stdout:?}");
    let body = env.emulator.http.get(url).send().await.unwrap().text().await.unwrap();
    assert!(body.contains(KNOWN_USER));

    // --output -: the records as JSON lines, the same as a file would hold (channels and user).
    let path = env.path("general.jsonl");
    let output = env.run(&["export", "channels", KNOWN_CHANNEL, "--v2", "--output", path.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    let output = env.run(&["export", "channels", KNOWN_CHANNEL, "--v2", "--output", "-"]).await;
    assert_exit(&output, 0);
    assert_eq!(text(&output.stdout), std::fs::read_to_string(&path).unwrap());
    assert!(text(&output.stderr).contains("to stdout"), "{}", text(&output.stderr));
    let output = env.run(&["export", "user", KNOWN_USER, "--output", "-"]).await;
    assert_exit(&output, 0);
    assert!(text(&output.stdout).starts_with("{\"type\":\"user\""), "{}", text(&output.stdout));
    assert_eq!(env.files(), ["general.jsonl"], "no file named `-`");
    // Records and --json events cannot share stdout.
    let output = env.run(&["export", "users", KNOWN_USER, "--output", "-", "--json"]).await;
    assert_exit(&output, 2);
}

#[tokio::test]
async fn server_and_token_go_before_the_command_too_and_host_port_means_plain_text() {
    let env = setup().await;
    let host_port = format!("127.0.0.1:{}", env.service.port);
    let closed = format!("http://127.0.0.1:{}", common::process::free_port());
    for args in [
        vec!["--server", &host_port, "export", "users", KNOWN_USER],
        vec!["--server", &host_port, "--token", "unused", "export", "users", KNOWN_USER],
        vec!["export", "users", KNOWN_USER, "--server", &host_port],
    ] {
        // The environment points nowhere: only the flag can make it work.
        let output = env.command(&args).env("STREAM_EXPORT_SERVER", &closed).output().await.unwrap();
        assert_exit(&output, 0);
        assert!(uuid::Uuid::parse_str(text(&output.stdout).trim()).is_ok(), "{args:?}: {}", text(&output.stdout));
    }
}

#[tokio::test]
async fn windows_take_dates_and_errors_are_said_once() {
    let env = setup().await;
    // Dates alone: UTC midnight.
    let path = env.path("february.jsonl");
    let spec = format!("{KNOWN_CHANNEL}@2024-02-01..2024-03-01");
    let output = env.run(&["export", "channels", &spec, "--v2", "--output", path.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    let saved = saved_records(&path);
    let created: Vec<&str> =
        saved.iter().filter(|(kind, _)| kind == "message").map(|(_, m)| m["created_at"].as_str().unwrap()).collect();
    assert!(!created.is_empty());
    assert!(created.iter().all(|at| ("2024-02-01".."2024-03-01").contains(at)), "{created:?}");

    // A window without `..` is caught by the client, with the forms it takes.
    let exports = env.emulator.exports_created().await;
    let output = env.run(&["export", "channels", &format!("{KNOWN_CHANNEL}@2024-02-01T00:00:00Z")]).await;
    assert_exit(&output, 2);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("needs `..`") && stderr.contains("2024-02-01..2024-03-01"), "{stderr}");
    assert!(!stderr.contains("channels[0]"), "not the service's complaint: {stderr}");
    assert_eq!(env.emulator.exports_created().await, exports);

    // The service's one violation, once, as `field: problem`; the gRPC code name in JSON.
    let reversed = format!("{KNOWN_CHANNEL}@2024-03-01..2024-02-01");
    let output = env.run(&["export", "channels", &reversed, "--json"]).await;
    assert_exit(&output, 2);
    let stderr = text(&output.stderr);
    assert_eq!(stderr.matches("must be later").count(), 1, "{stderr}");
    assert!(stderr.contains("channels[0].messages_until: must be later"), "{stderr}");
    assert_eq!(json_lines(&output).last().unwrap()["code"], "INVALID_ARGUMENT");
}

#[tokio::test]
async fn an_empty_channel_export_hints_at_a_soft_deleted_channel() {
    let env = setup().await;
    let path = env.path("archived.jsonl");
    let output = env.run(&["export", "channels", DELETED_CHANNEL, "--output", path.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    assert!(saved_records(&path).is_empty());
    let stderr = text(&output.stderr);
    assert!(stderr.contains("soft-deleted") && stderr.contains("--include-soft-deleted"), "{stderr}");

    let path = env.path("archived-included.jsonl");
    let output = env
        .run(&["export", "channels", DELETED_CHANNEL, "--include-soft-deleted", "--output", path.to_str().unwrap()])
        .await;
    assert_exit(&output, 0);
    assert!(!saved_records(&path).is_empty());
    assert!(!text(&output.stderr).contains("soft-deleted"), "{}", text(&output.stderr));
}

#[tokio::test]
async fn a_save_resumes_after_the_service_is_killed_and_replaced_and_the_file_is_identical() {
    let mut env = setup().await;
    // A 10 MB export that the emulator serves at 4 MiB/s: still going when the service dies.
    let spec = json!({"records": 40_000, "version": "v2", "record_bytes": 256, "mib_per_second": 4});
    let created = env.emulator.control(reqwest::Method::POST, "synthetic_exports", Some(spec)).await;
    let task_id = created["task_id"].as_str().unwrap().to_owned();

    let reference = env.path("reference.jsonl");
    let output = env.run(&["task", "watch", &task_id, "--output", reference.to_str().unwrap()]).await;
    assert_exit(&output, 0);

    let path = env.path("interrupted.jsonl");
    let child = env.command(&["task", "watch", &task_id, "--output", path.to_str().unwrap()]).spawn().unwrap();
    let part_size = |env: &Env| {
        env.files()
            .iter()
            .filter(|name| name.ends_with(".part"))
            .filter_map(|name| std::fs::metadata(env.path(name)).ok())
            .map(|meta| meta.len())
            .max()
    };
    let mut written = None;
    for _ in 0..200 {
        written = part_size(&env).filter(|&bytes| bytes >= 1024 * 1024);
        if written.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(written.is_some(), "the save is under way: {:?}", env.files());
    env.replace_service().await;
    let output = finish(child).await;
    assert_exit(&output, 0);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("resuming at record"), "{stderr}");
    let resumed_at: u64 = stderr
        .split("resuming at record ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(resumed_at > 0 && resumed_at < 40_001, "resumed mid-file, from what it had: {stderr}");
    let (saved, expected) = (std::fs::read(&path).unwrap(), std::fs::read(&reference).unwrap());
    assert!(
        saved == expected,
        "the file is identical to an uninterrupted save ({} vs {} bytes)",
        saved.len(),
        expected.len()
    );
}

#[tokio::test]
async fn a_watch_resumes_after_the_service_is_killed_and_replaced() {
    let mut env = setup().await;
    let output = env.run(&["export", "channels", KNOWN_CHANNEL]).await;
    let task_id = text(&output.stdout).trim().to_owned();
    env.emulator.steer(&task_id, json!({"hold": true})).await;
    let watcher = env.command(&["task", "watch", &task_id]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.replace_service().await;
    env.emulator.steer(&task_id, json!({"status": "completed"})).await;
    let output = finish(watcher).await;
    assert_exit(&output, 0);
    assert!(text(&output.stderr).contains("watch interrupted; resuming"), "{}", text(&output.stderr));
    assert!(text(&output.stdout).starts_with("http"), "the result URL: {}", text(&output.stdout));
}

/// A service in front of an emulator holding `channels` synthetic channels
/// (`messaging:bulk-000000`…), whose jobs submit `budget` tasks a minute; more `serve` flags in
/// `extra`.
pub(crate) async fn setup_jobs(channels: usize, budget: u32, extra: &[&str]) -> Env {
    let mut config = EmulatorConfig::new(API_KEY, API_SECRET);
    config.synthetic_channels = channels;
    let budget = budget.to_string();
    let mut args = vec!["--upstream-export-budget", &budget, "--job-retry-delay", "100ms"];
    args.extend(extra);
    setup_over(config, &args).await
}

/// Writes a channels file of the synthetic channels `range`, one a line, with a comment and a
/// blank line, as a person would.
pub(crate) fn channels_file(env: &Env, name: &str, range: std::ops::Range<usize>) -> PathBuf {
    let mut text = String::from("# the bulk channels\n\n");
    for n in range {
        text.push_str(&format!("messaging:bulk-{n:06}\n"));
    }
    let path = env.path(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn job_create_from_a_channels_file_waits_until_succeeded_and_job_tasks_lists_its_shards() {
    let env = setup_jobs(30, 600, &[]).await;
    let file = channels_file(&env, "channels.txt", 0..30);
    let output = env.run(&["job", "create", "--channels-file", file.to_str().unwrap(), "--wait", "--json"]).await;
    assert_exit(&output, 0);
    let lines = json_lines(&output);
    assert!(lines.iter().any(|l| l["event"] == "job_event" && l["type"] == "SNAPSHOT"), "{lines:?}");
    let result = lines.last().unwrap();
    assert_eq!(result["event"], "result", "the last line is the result: {lines:?}");
    assert_eq!(result["job"]["state"], "SUCCEEDED", "{result}");
    assert_eq!(result["job"]["progress"]["channels_total"], 30, "{result}");
    let job_id = result["job"]["job_id"].as_str().unwrap().to_owned();

    let output = env.run(&["job", "tasks", &job_id, "--json"]).await;
    assert_exit(&output, 0);
    let shards = json_lines(&output);
    assert_eq!(shards.len(), 2, "30 channels make two shards of at most 25: {shards:?}");
    for (index, (shard, channels)) in shards.iter().zip([25, 5]).enumerate() {
        assert_eq!(shard["shard"], index, "{shard}");
        assert_eq!(shard["state"], "COMPLETED", "{shard}");
        assert_eq!(shard["channels"].as_array().unwrap().len(), channels, "{shard}");
        assert!(!shard["task_id"].as_str().unwrap().is_empty(), "{shard}");
    }

    // Outside --json, `job get` says the state on stdout; `job list` shows the job.
    let output = env.run(&["job", "get", &job_id]).await;
    assert_exit(&output, 0);
    assert!(text(&output.stdout).contains(&format!("job {job_id}: SUCCEEDED, 2/2 tasks done")), "{output:?}");
    let output = env.run(&["job", "list", "--json"]).await;
    assert_exit(&output, 0);
    let jobs = json_lines(&output);
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    assert_eq!(jobs[0]["job_id"], job_id.as_str());
}

#[tokio::test]
async fn job_output_saves_each_shard_as_its_task_would_be_saved_and_a_second_run_keeps_the_files() {
    let env = setup_jobs(30, 600, &[]).await;
    let file = channels_file(&env, "channels.txt", 0..30);
    let directory = env.path("job");
    std::fs::create_dir(&directory).unwrap();
    let dir = directory.to_str().unwrap();
    let output = env.run(&["job", "create", "--channels-file", file.to_str().unwrap(), "--v2", "--output", dir]).await;
    assert_exit(&output, 0);
    let job_id = text(&output.stdout).trim().to_owned();

    let output = env.run(&["job", "tasks", &job_id, "--json"]).await;
    let shards = json_lines(&output);
    let mut names: Vec<String> =
        std::fs::read_dir(&directory).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    names.sort();
    let expected: Vec<String> = shards
        .iter()
        .map(|shard| format!("{:05}-{}.jsonl", shard["shard"].as_u64().unwrap(), shard["task_id"].as_str().unwrap()))
        .collect();
    assert_eq!(names, expected, "one file per shard, nothing else (no temporary file left)");
    for (shard, name) in shards.iter().zip(&names) {
        // The same bytes as `task watch --output` saves of the shard's task.
        let reference = env.path(&format!("{name}.reference"));
        let task_id = shard["task_id"].as_str().unwrap();
        let output = env.run(&["task", "watch", task_id, "--output", reference.to_str().unwrap()]).await;
        assert_exit(&output, 0);
        let saved = std::fs::read(directory.join(name)).unwrap();
        assert!(!saved.is_empty() && saved == std::fs::read(&reference).unwrap(), "{name}");
    }

    // Again: the complete files are kept, nothing is read twice.
    let output = env.run(&["job", "watch", &job_id, "--output", dir, "--json"]).await;
    assert_exit(&output, 0);
    let lines = json_lines(&output);
    let result = lines.last().unwrap();
    assert_eq!((result["files_kept"].as_u64(), result["records"].as_u64()), (Some(2), Some(0)), "{result}");
    assert!(!lines.iter().any(|l| l["event"] == "download_started"), "{lines:?}");
}

#[tokio::test]
async fn job_cancel_of_a_slow_job_ends_it_cancelled_and_its_watch_exits_1_saying_so() {
    // One submit a second: 16 shards would take a quarter of a minute.
    let env = setup_jobs(400, 60, &[]).await;
    let file = channels_file(&env, "channels.txt", 0..400);
    let output = env.run(&["job", "create", "--channels-file", file.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    let job_id = text(&output.stdout).trim().to_owned();
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let output = env.run(&["job", "cancel", &job_id, "--json"]).await;
    assert_exit(&output, 0);
    let cancelled = json_lines(&output);
    let state = cancelled[0]["job"]["state"].as_str().unwrap();
    assert!(["CANCELLING", "CANCELLED"].contains(&state), "{cancelled:?}");

    let output = env.run(&["job", "watch", &job_id, "--json"]).await;
    assert_exit(&output, 1);
    let lines = json_lines(&output);
    let error = lines.last().unwrap();
    assert_eq!((error["event"].as_str(), error["exit_code"].as_u64()), (Some("error"), Some(1)), "{lines:?}");
    assert_eq!(error["job"]["state"], "CANCELLED", "{error}");
    assert!(text(&output.stderr).contains(&format!("job {job_id} CANCELLED")), "{}", text(&output.stderr));
    let progress = &error["job"]["progress"];
    assert!(progress["tasks_submitted"].as_u64().unwrap() < 16, "stopped submitting: {progress}");
}

#[tokio::test]
async fn job_create_refuses_a_bad_channels_file_line_naming_file_and_line_before_sending_anything() {
    let env = setup_jobs(30, 600, &[]).await;
    let file = env.path("channels.txt");
    std::fs::write(&file, "# ok\nmessaging:bulk-000000\nmessaging-bulk-000001\n").unwrap();
    let output = env.run(&["job", "create", "--channels-file", file.to_str().unwrap(), "--wait"]).await;
    assert_exit(&output, 2);
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("{}:3: ", file.display())), "FILE:LINE: {stderr}");
    assert!(stderr.contains("TYPE:ID"), "the expected form: {stderr}");
    let output = env.run(&["job", "list", "--json"]).await;
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty(), "no job was created: {}", text(&output.stdout));
    assert_eq!(env.emulator.exports_created().await, 0);

    // An empty query is refused the same way.
    let output = env.run(&["job", "create", "--query", "{}"]).await;
    assert_exit(&output, 2);
}

#[tokio::test]
async fn job_watch_resumes_after_the_service_is_killed_and_replaced() {
    let state = common::process::scratch_state_dir();
    let state_arg = state.to_str().unwrap().to_owned();
    // One submit a second: four shards take a few seconds, time to kill the service mid-job.
    let mut env = setup_jobs(100, 60, &["--state-dir", &state_arg]).await;
    let file = channels_file(&env, "channels.txt", 0..100);
    let output = env.run(&["job", "create", "--channels-file", file.to_str().unwrap()]).await;
    assert_exit(&output, 0);
    let job_id = text(&output.stdout).trim().to_owned();
    let watcher = env.command(&["job", "watch", &job_id]).spawn().unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.replace_service().await;
    let output = finish(watcher).await;
    assert_exit(&output, 0);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("watch interrupted; resuming"), "{stderr}");
    assert!(stderr.contains(&format!("job {job_id} SUCCEEDED, 4/4 tasks done")), "{stderr}");
    assert_eq!(text(&output.stdout).trim(), job_id, "the job id is the answer");
    drop(env);
    let _ = std::fs::remove_dir_all(&state);
}

/// Runs the client on a pseudo-terminal 120 columns wide with `script` (util-linux), which
/// copies what it draws to stdout.
async fn on_terminal(env: &Env, args: &str) -> Output {
    let inner = format!("stty cols 120 rows 40; exec {BIN} {args}");
    let mut command = Command::new("script");
    command
        .args(["-q", "-e", "-f", "-c", &inner, "/dev/null"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TERM", "xterm-256color")
        .env("STREAM_EXPORT_SERVER", env.service.url("http"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    finish(command.spawn().expect("script(1) is installed (util-linux)")).await
}

#[tokio::test]
async fn job_wait_on_a_terminal_shows_a_bar_of_tasks_with_channels_elapsed_and_eta() {
    // One submit a second: four shards take a few seconds, so the bar moves.
    let env = setup_jobs(100, 60, &[]).await;
    let file = channels_file(&env, "channels.txt", 0..100);
    let output = on_terminal(&env, &format!("job create --channels-file {} --wait", file.display())).await;
    let screen = text(&output.stdout);
    assert_exit(&output, 0);
    assert!(screen.contains("job RUNNING [") && screen.contains("/4 tasks, 100 channels, 0:0"), "{screen}");
    assert!(screen.contains(" elapsed, ETA 0:"), "an ETA once a task is done:\n{screen}");
    assert!(screen.contains("\u{1b}["), "it redraws in place (terminal escapes):\n{screen}");
    assert!(screen.contains("SUCCEEDED, 4/4 tasks done, 100 channels"), "{screen}");
    let job_id = screen.lines().last().unwrap().trim().to_owned();

    // On a terminal, `job tasks` prints a table.
    let output = on_terminal(&env, &format!("job tasks {job_id}")).await;
    assert_exit(&output, 0);
    let screen = text(&output.stdout);
    assert!(screen.contains("SHARD  STATE      ATTEMPTS  TASK ID"), "{screen}");
    assert!(screen.contains("25 channels"), "{screen}");
    assert_eq!(screen.lines().filter(|line| line.contains("COMPLETED")).count(), 4, "{screen}");
}

#[tokio::test]
async fn a_failed_job_exits_1_with_its_error_and_job_get_says_the_same() {
    let env = setup_jobs(30, 600, &["--job-task-attempts", "2"]).await;
    env.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"outcome": "failed"}))).await;
    let file = channels_file(&env, "channels.txt", 0..30);
    let output = env.run(&["job", "create", "--channels-file", file.to_str().unwrap(), "--wait", "--json"]).await;
    assert_exit(&output, 1);
    let lines = json_lines(&output);
    let error = lines.last().unwrap();
    assert_eq!(error["event"], "error", "{lines:?}");
    assert_eq!(error["job"]["state"], "FAILED", "{error}");
    assert_eq!(error["job"]["error"]["code"], "ABORTED", "{error}");
    let stderr = text(&output.stderr);
    assert!(stderr.contains(" FAILED: ABORTED") && stderr.contains("failed on all 2 attempts"), "{stderr}");

    let job_id = error["job"]["job_id"].as_str().unwrap();
    let output = env.run(&["job", "get", job_id]).await;
    assert_exit(&output, 1);
    let stdout = text(&output.stdout);
    assert!(stdout.contains(&format!("job {job_id}: FAILED")) && stdout.contains("\nerror: ABORTED"), "{stdout}");
}

#[tokio::test]
async fn a_failed_job_with_output_still_saves_the_tasks_that_completed() {
    // One submit a second and one attempt per shard: the first shard completes, the second
    // (submitted once the emulator fails every new task) fails the job.
    let env = setup_jobs(30, 60, &["--job-task-attempts", "1"]).await;
    let file = channels_file(&env, "channels.txt", 0..30);
    let directory = env.path("job");
    std::fs::create_dir(&directory).unwrap();
    let args = ["job", "create", "--channels-file", file.to_str().unwrap(), "--output", directory.to_str().unwrap()];
    let child = env.command(&[&args[..], &["--json"]].concat()).spawn().unwrap();
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    while env.emulator.exports_created().await == 0 {
        assert!(tokio::time::Instant::now() < until, "the first shard was never submitted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    env.emulator.control(reqwest::Method::PUT, "task_defaults", Some(json!({"outcome": "failed"}))).await;
    let output = finish(child).await;
    assert_exit(&output, 1);
    let lines = json_lines(&output);
    assert_eq!(lines.last().unwrap()["job"]["state"], "FAILED", "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "notice" && l["message"].as_str().unwrap().contains("completed (1) are saved")),
        "{lines:?}"
    );
    let names: Vec<String> =
        std::fs::read_dir(&directory).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("00000-") && names[0].ends_with(".jsonl"), "{names:?}");
    assert!(std::fs::metadata(directory.join(&names[0])).unwrap().len() > 0);
}

#[tokio::test]
async fn job_create_takes_a_channel_query_or_a_users_file() {
    let env = setup_jobs(30, 600, &[]).await;
    let query = r#"{"type": "messaging", "id": {"$in": ["bulk-000003", "bulk-000007", "bulk-000011"]}}"#;
    let output = env.run(&["job", "create", "--query", query, "--since", "2024-01-01", "--wait", "--json"]).await;
    assert_exit(&output, 0);
    let lines = json_lines(&output);
    let job = &lines.last().unwrap()["job"];
    assert_eq!(job["state"], "SUCCEEDED", "{job}");
    assert_eq!(job["progress"]["channels_total"], 3, "the channels the filter matches: {job}");
    assert_eq!(job["request"]["selector"], "channel_query", "{job}");
    assert_eq!(job["request"]["filter"]["id"]["$in"][1], "bulk-000007", "the filter as given: {job}");
    assert_eq!(job["request"]["messages_since"], "2024-01-01T00:00:00.000Z", "{job}");

    let users = env.path("users.txt");
    std::fs::write(&users, format!("{KNOWN_USER}\n\n# and another\nuser-02\n")).unwrap();
    let output = env.run(&["job", "create", "--users-file", users.to_str().unwrap(), "--wait", "--json"]).await;
    assert_exit(&output, 0);
    let lines = json_lines(&output);
    let job = &lines.last().unwrap()["job"];
    assert_eq!((job["state"].as_str(), job["progress"]["users_total"].as_u64()), (Some("SUCCEEDED"), Some(2)), "{job}");
    let output = env.run(&["job", "tasks", job["job_id"].as_str().unwrap(), "--json"]).await;
    assert_eq!(json_lines(&output)[0]["user_ids"], json!([KNOWN_USER, "user-02"]));

    // A window means nothing to users: refused before anything is sent.
    let output = env.run(&["job", "create", "--users-file", users.to_str().unwrap(), "--since", "2024-01-01"]).await;
    assert_exit(&output, 2);
}

/// A directory for archives, its path canonical as the service compares `file://` prefixes;
/// removed when dropped.
struct ArchiveRoot(PathBuf);

impl ArchiveRoot {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("cli-archive-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&path).unwrap();
        Self(path.canonicalize().unwrap())
    }

    /// `file:///…/root/below`, or the root itself for an empty `below`.
    fn uri(&self, below: &str) -> String {
        match below {
            "" => format!("file://{}", self.0.display()),
            below => format!("file://{}/{below}", self.0.display()),
        }
    }
}

impl Drop for ArchiveRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn job_create_with_archive_and_verify_archives_every_file_and_job_verify_names_each_that_differs() {
    let root = ArchiveRoot::new();
    let env = setup_jobs(60, 600, &["--archive-allow", &root.uri("")]).await;
    let file = channels_file(&env, "channels.txt", 0..60);
    let archive = root.uri("x");
    let args =
        ["job", "create", "--channels-file", file.to_str().unwrap(), "--archive", &archive, "--verify", "--wait"];
    let output = env.run(&args).await;
    assert_exit(&output, 0);
    let job_id = text(&output.stdout).trim().to_owned();
    let stderr = text(&output.stderr);

    // The job's folder holds one file per shard (named by its key) and the manifest.
    let folder = root.0.join("x").join(&job_id);
    let manifest_uri = format!("file://{}/manifest.json", folder.display());
    let manifest: Value = serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["files"].as_array().map(Vec::len), Some(3), "{manifest}");
    let output = env.run(&["job", "tasks", &job_id, "--json"]).await;
    assert_exit(&output, 0);
    let keys: Vec<String> =
        json_lines(&output).iter().map(|shard| shard["archive"]["key"].as_str().unwrap().to_owned()).collect();
    let shard_files: Vec<PathBuf> = keys.iter().map(|key| Path::new("/").join(key)).collect();
    let mut names: Vec<String> =
        std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    names.sort();
    let mut expected: Vec<String> =
        shard_files.iter().map(|path| path.file_name().unwrap().to_string_lossy().into()).collect();
    expected.extend(["SHA256SUMS".into(), "manifest.json".into()]);
    expected.sort();
    assert_eq!(names, expected, "one file per shard, the manifest and its checksums");
    let archived_bytes: u64 = shard_files.iter().map(|path| std::fs::metadata(path).unwrap().len()).sum();

    // The progress lines and the summary show the tasks archived and their size, in one unit.
    let size = indicatif::HumanBytes(archived_bytes).to_string();
    assert!(stderr.contains(&format!("job {job_id}: RUNNING, ")) && stderr.contains(" archived ("), "{stderr}");
    let summary = format!("job {job_id} SUCCEEDED, 3/3 tasks done, 60 channels, 3/3 archived ({size}); manifest");
    assert!(stderr.contains(&format!("{summary} {manifest_uri}")), "{stderr}");

    // `job get` shows where the job archives and its manifest; `--json` carries them.
    let output = env.run(&["job", "get", &job_id]).await;
    assert_exit(&output, 0);
    let stdout = text(&output.stdout);
    assert!(stdout.contains(&format!("\narchive: {archive}\nmanifest: {manifest_uri}")), "{stdout}");
    let output = env.run(&["job", "get", &job_id, "--json"]).await;
    assert_exit(&output, 0);
    let job = &json_lines(&output)[0]["job"];
    assert_eq!(job["manifest_uri"], manifest_uri.as_str(), "{job}");
    assert_eq!(
        (job["request"]["archive_uri"].as_str(), job["request"]["verify"].as_bool()),
        (Some(&*archive), Some(true))
    );
    assert_eq!(job["progress"]["tasks_archived"], 3, "{job}");
    assert_eq!(job["progress"]["bytes_archived"], archived_bytes, "{job}");

    // All match: exit 0.
    let output = env.run(&["job", "verify", &job_id]).await;
    assert_exit(&output, 0);
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with(&format!("manifest: {manifest_uri}\n")), "{stdout}");
    assert!(stdout.contains(&format!("checked: 3 objects, {size}, all match the manifest")), "{stdout}");
    let output = env.run(&["job", "verify", &job_id, "--json"]).await;
    assert_exit(&output, 0);
    let result = &json_lines(&output)[0];
    assert_eq!(result["event"], "result", "{result}");
    assert_eq!(result["verification"]["objects_checked"], 3, "{result}");
    assert_eq!(result["verification"]["bytes_checked"], archived_bytes, "{result}");
    assert_eq!(result["verification"]["mismatches"], json!([]), "{result}");

    // One file altered, one cut short, one deleted: exit 1, each named by its key.
    let mut altered = std::fs::read(&shard_files[0]).unwrap();
    altered[10] ^= 0x20;
    std::fs::write(&shard_files[0], altered).unwrap();
    let short = std::fs::read(&shard_files[1]).unwrap();
    std::fs::write(&shard_files[1], &short[..short.len() - 1]).unwrap();
    std::fs::remove_file(&shard_files[2]).unwrap();
    let output = env.run(&["job", "verify", &job_id]).await;
    assert_exit(&output, 1);
    let stdout = text(&output.stdout);
    assert!(stdout.contains(", 3 missing or different from the manifest:\n"), "{stdout}");
    let expected = [
        format!("{}: sha256 differs", keys[0]),
        format!("{}: size {}, manifest says {}", keys[1], short.len() - 1, short.len()),
        format!("{}: missing", keys[2]),
    ];
    for line in &expected {
        assert!(stdout.lines().any(|l| l == line), "{line}:\n{stdout}");
    }
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "job {job_id}: 3 of 3 archived objects missing or different from the manifest {manifest_uri}"
        )),
        "{stderr}"
    );
    let output = env.run(&["job", "verify", &job_id, "--json"]).await;
    assert_exit(&output, 1);
    let error = json_lines(&output).pop().unwrap();
    assert_eq!((error["event"].as_str(), error["exit_code"].as_u64()), (Some("error"), Some(1)), "{error}");
    let problems: Vec<(&str, &str)> = error["verification"]["mismatches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["key"].as_str().unwrap(), m["problem"].as_str().unwrap()))
        .collect();
    assert_eq!(problems, [(&*keys[0], "SHA256"), (&*keys[1], "SIZE"), (&*keys[2], "MISSING")], "{error}");
}

#[tokio::test]
async fn job_archive_refusals_verify_alone_before_sending_and_a_prefix_not_allowed_as_permission_denied() {
    let root = ArchiveRoot::new();
    let elsewhere = ArchiveRoot::new();
    let env = setup_jobs(30, 600, &["--archive-allow", &root.uri("teams")]).await;
    let file = channels_file(&env, "channels.txt", 0..30);
    let channels = file.to_str().unwrap();

    // --verify without --archive: usage, refused before anything is sent.
    let output = env.run(&["job", "create", "--channels-file", channels, "--verify", "--wait"]).await;
    assert_exit(&output, 2);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("--verify") && stderr.contains("--archive URI"), "{stderr}");
    let output = env.run(&["job", "list", "--json"]).await;
    assert!(output.stdout.is_empty(), "no job was created: {}", text(&output.stdout));

    // Outside the allowed prefixes: PERMISSION_DENIED, the CLI's exit code for refusals.
    for uri in [elsewhere.uri("daily"), root.uri("teams-x/daily")] {
        let output = env.run(&["job", "create", "--channels-file", channels, "--archive", &uri, "--wait"]).await;
        assert_exit(&output, 4);
        let stderr = text(&output.stderr);
        assert!(stderr.contains("creating the job: PERMISSION_DENIED (ARCHIVE_NOT_ALLOWED)"), "{uri}: {stderr}");
        let output = env.run(&["job", "create", "--channels-file", channels, "--archive", &uri, "--json"]).await;
        assert_exit(&output, 4);
        let error = json_lines(&output).pop().unwrap();
        assert_eq!(
            (error["code"].as_str(), error["reason"].as_str()),
            (Some("PERMISSION_DENIED"), Some("ARCHIVE_NOT_ALLOWED"))
        );
    }
    assert_eq!(env.emulator.exports_created().await, 0, "nothing was submitted");
    assert!(std::fs::read_dir(&elsewhere.0).unwrap().next().is_none(), "nothing was written outside");

    // A job without an archive has nothing to verify.
    let output = env.run(&["job", "create", "--channels-file", channels, "--wait"]).await;
    assert_exit(&output, 0);
    let job_id = text(&output.stdout).trim().to_owned();
    assert!(!text(&output.stderr).contains("archived"), "a plain job shows nothing archived: {}", text(&output.stderr));
    let output = env.run(&["job", "verify", &job_id]).await;
    assert_exit(&output, 4);
    let stderr = text(&output.stderr);
    assert!(stderr.contains("verifying the job's archive: FAILED_PRECONDITION (NOT_ARCHIVED)"), "{stderr}");
}
