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
    data::{HEAVY_CHANNEL, HEAVY_USER, KNOWN_CHANNEL, KNOWN_USER, TEAM_CHANNEL, UNKNOWN_USER},
};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_stream-export");

/// The emulator, the service in front of it, and a scratch directory.
struct Env {
    emulator: TestEmulator,
    service: ServiceProcess,
    dir: PathBuf,
}

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
    let service = ServiceProcess::start(
        &args,
        &[("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET), ("RUST_LOG", "warn")],
    );
    service.wait_ready(true).await;
    let dir = std::env::temp_dir().join(format!("cli-client-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    Env { emulator, service, dir }
}

impl Env {
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
    async fn run(&self, args: &[&str]) -> Output {
        finish(self.command(args).spawn().unwrap()).await
    }

    fn path(&self, name: &str) -> PathBuf {
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

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code, showing the output when it differs.
fn assert_exit(output: &Output, code: i32) {
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
fn json_lines(output: &Output) -> Vec<Value> {
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
    let stdout = text(&output.stdout);
    assert!(stdout.lines().next().unwrap().starts_with("submitted task "), "plain lines: {stdout}");
    assert!(stdout.contains("COMPLETED"), "{stdout}");
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
    let stdout = text(&output.stdout);
    for state in ["WAITING", "RUNNING", "COMPLETED"] {
        assert!(stdout.contains(state), "one line per change: {stdout}");
    }
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
    assert_eq!(json_lines(&output).last().unwrap()["code"], "Unavailable");
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
    assert!(text(&output.stdout).contains("resuming"), "{}", text(&output.stdout));
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
    assert!(screen.contains("elapsed") && screen.contains("last upstream poll"), "{screen}");
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
    assert!(text(&output.stderr).contains("UNAUTHENTICATED"), "{}", text(&output.stderr));
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
