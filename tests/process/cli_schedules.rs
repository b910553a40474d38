//! `stream-export schedule …` as a person or a script runs it: the binary as a child process
//! against the real service (a child process too) in front of the emulator, with windows of a
//! second and no lag, so that a schedule fires within the test. Set up as `cli_client`'s job tests.

use std::{process::Output, time::Duration};

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::cli_client::{Env, assert_exit, channels_file, json_lines, setup_jobs, text};

const QUERY: &str = r#"{"type": "messaging"}"#;

/// Now less `seconds`, on a whole second (as a person would write a start).
fn seconds_ago(seconds: i64) -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    DateTime::from_timestamp(now - seconds, 0).unwrap()
}

/// The one JSON document of a `--json` run.
fn document(output: &Output) -> Value {
    let lines = json_lines(output);
    assert_eq!(lines.len(), 1, "one JSON document: {lines:?}");
    lines.into_iter().next().unwrap()
}

/// `schedule get ID --json`'s schedule.
async fn get(env: &Env, schedule_id: &str) -> Value {
    let output = env.run(&["schedule", "get", schedule_id, "--json"]).await;
    assert_exit(&output, 0);
    let answer = document(&output);
    assert_eq!((answer["event"].as_str(), answer["schedule_id"].as_str()), (Some("result"), Some(schedule_id)));
    answer["schedule"].clone()
}

/// Waits (at most 20 s) until the schedule has started `windows` windows; returns it then.
async fn started(env: &Env, schedule_id: &str, windows: u64) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let schedule = get(env, schedule_id).await;
        if schedule["windows_started"].as_u64().unwrap() >= windows {
            return schedule;
        }
        assert!(tokio::time::Instant::now() < deadline, "{windows} windows not started in time: {schedule}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The jobs `job list --json` shows that `schedule_id` started.
async fn jobs_of(env: &Env, schedule_id: &str) -> Vec<Value> {
    let output = env.run(&["job", "list", "--json"]).await;
    assert_exit(&output, 0);
    json_lines(&output).into_iter().filter(|line| line["job"]["schedule_id"] == schedule_id).collect()
}

fn instant(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("a time: {value}"))).unwrap().to_utc()
}

#[tokio::test]
async fn a_schedule_started_in_the_past_catches_up_window_by_window_and_get_list_delete_show_it() {
    let env = setup_jobs(3, 600, &[]).await;
    let start = seconds_ago(3);
    let start_text = start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let output = env
        .run(&[
            "schedule",
            "create",
            "--every",
            "1s",
            "--lag",
            "0s",
            "--start",
            &start_text,
            "--query",
            QUERY,
            "--json",
        ])
        .await;
    assert_exit(&output, 0);
    let created = document(&output);
    assert_eq!(created["event"], "schedule_created", "{created}");
    let schedule_id = created["schedule_id"].as_str().unwrap().to_owned();
    let schedule = &created["schedule"];
    assert_eq!(schedule["schedule_id"], schedule_id.as_str());
    assert_eq!((schedule["interval_seconds"].as_u64(), schedule["lag_seconds"].as_u64()), (Some(1), Some(0)));
    assert_eq!((schedule["paused"].as_bool(), schedule["full_every"].as_u64()), (Some(false), Some(0)));
    assert_eq!(instant(&schedule["start_time"]), start, "{schedule}");
    assert_eq!(schedule["template"]["selector"], "channel_query", "{schedule}");
    assert_eq!(schedule["template"]["filter"], json!({"type": "messaging"}), "{schedule}");

    // The three windows already over start at once (the catch-up), then one a second.
    let schedule = started(&env, &schedule_id, 4).await;
    let windows = schedule["windows_started"].as_u64().unwrap();
    let cursor = start + chrono::Duration::seconds(windows as i64);
    assert_eq!(instant(&schedule["next_window_start"]), cursor, "the cursor moves a window a job: {schedule}");
    assert!(schedule["last_job_id"].is_string(), "{schedule}");

    // Its jobs are listed as the schedule's, each exporting its own window, in order, none missed.
    let jobs = jobs_of(&env, &schedule_id).await;
    assert!(jobs.len() as u64 >= windows, "{} jobs for {windows} windows: {jobs:?}", jobs.len());
    let mut since: Vec<DateTime<Utc>> =
        jobs.iter().map(|job| instant(&job["job"]["request"]["messages_since"])).collect();
    since.sort();
    let expected: Vec<DateTime<Utc>> = (0..since.len() as i64).map(|k| start + chrono::Duration::seconds(k)).collect();
    assert_eq!(since, expected, "one job a window, from the first: {jobs:?}");

    // For a person: the state, interval and lag, and the windows started, on stdout.
    let output = env.run(&["schedule", "get", &schedule_id]).await;
    assert_exit(&output, 0);
    let shown = text(&output.stdout);
    assert!(shown.starts_with(&format!("schedule {schedule_id}: ACTIVE, every 1s, lag 0s")), "{shown}");
    assert!(shown.contains(r#"exports: the channels matching {"type":"messaging"}"#), "{shown}");
    assert!(shown.contains("windows started: "), "{shown}");

    let output = env.run(&["schedule", "list", "--json"]).await;
    assert_exit(&output, 0);
    let listed = json_lines(&output);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (listed[0]["event"].as_str(), listed[0]["schedule_id"].as_str()),
        (Some("schedule"), Some(&*schedule_id))
    );

    let output = env.run(&["schedule", "delete", &schedule_id, "--json"]).await;
    assert_exit(&output, 0);
    assert_eq!(document(&output), json!({"event": "result", "schedule_id": schedule_id, "deleted": true}));
    let output = env.run(&["schedule", "get", &schedule_id, "--json"]).await;
    assert_exit(&output, 4);
    let error = document(&output);
    assert_eq!((error["event"].as_str(), error["exit_code"].as_u64()), (Some("error"), Some(4)), "{error}");
    assert_eq!((error["code"].as_str(), error["reason"].as_str()), (Some("NOT_FOUND"), Some("SCHEDULE_NOT_FOUND")));
    assert!(!jobs_of(&env, &schedule_id).await.is_empty(), "its jobs stay");
}

#[tokio::test]
async fn pause_stops_new_windows_and_resume_catches_up_the_windows_that_ended_meanwhile() {
    let env = setup_jobs(3, 600, &[]).await;
    let file = channels_file(&env, "channels.txt", 0..3);
    let start = seconds_ago(2).to_rfc3339_opts(SecondsFormat::Secs, true);
    let file = file.to_str().unwrap();
    let args = ["schedule", "create", "--every", "1s", "--lag", "0s", "--start", &start, "--channels-file", file];
    let output = env.run(&[&args[..], &["--paused"]].concat()).await;
    assert_exit(&output, 0);
    // For a script: the id alone on stdout; the schedule described on stderr.
    let schedule_id = text(&output.stdout).trim().to_owned();
    uuid::Uuid::parse_str(&schedule_id).unwrap_or_else(|_| panic!("the id alone: {output:?}"));
    let stderr = text(&output.stderr);
    assert!(stderr.contains(&format!("created schedule {schedule_id}: PAUSED, every 1s")), "{stderr}");
    assert!(stderr.contains("exports: 3 channels"), "{stderr}");

    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let schedule = get(&env, &schedule_id).await;
    assert_eq!((schedule["paused"].as_bool(), schedule["windows_started"].as_u64()), (Some(true), Some(0)));
    assert!(jobs_of(&env, &schedule_id).await.is_empty(), "no job while paused");

    let output = env.run(&["schedule", "resume", &schedule_id, "--json"]).await;
    assert_exit(&output, 0);
    let resumed = document(&output);
    assert_eq!((resumed["event"].as_str(), resumed["schedule"]["paused"].as_bool()), (Some("result"), Some(false)));
    // At least four windows ended while it was paused: caught up.
    started(&env, &schedule_id, 4).await;

    let output = env.run(&["schedule", "pause", &schedule_id, "--json"]).await;
    assert_exit(&output, 0);
    let paused = document(&output)["schedule"].clone();
    assert_eq!(paused["paused"], true, "{paused}");
    let windows = paused["windows_started"].as_u64().unwrap();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let schedule = get(&env, &schedule_id).await;
    assert_eq!(schedule["windows_started"].as_u64(), Some(windows), "no window starts while paused: {schedule}");
    assert_eq!(jobs_of(&env, &schedule_id).await.len() as u64, windows);
}

#[tokio::test]
async fn bad_flags_exit_2_naming_the_flag_and_nothing_is_created() {
    let env = setup_jobs(3, 600, &[]).await;
    let create = ["schedule", "create", "--start", "2026-01-01", "--query", QUERY];
    for (flags, named) in [
        (&["--every", "24x"][..], "--every"),
        (&["--every", "24h", "--lag", "soon"], "--lag"),
        (&["--every", "24h", "--start", "yesterday"], "--start"),
        (&["--every", "24h", "--request-id", "not-a-uuid"], "--request-id"),
        // Refused by the service (an interval under 1 s), and still said in the flag's name.
        (&["--every", "0s"], "--every"),
    ] {
        let output = env.run(&[&create[..], flags].concat()).await;
        assert_exit(&output, 2);
        assert!(text(&output.stderr).contains(named), "{flags:?} names {named}: {}", text(&output.stderr));
    }
    let output = env.run(&[&create[..], &["--every", "1 fortnight", "--json"]].concat()).await;
    assert_exit(&output, 2);
    let error = document(&output);
    assert_eq!((error["event"].as_str(), error["exit_code"].as_u64()), (Some("error"), Some(2)), "{error}");
    assert!(error["message"].as_str().unwrap().starts_with("--every"), "{error}");

    let users = env.path("users.txt");
    std::fs::write(&users, "alice\n").unwrap();
    let output = env
        .run(&["schedule", "create", "--every", "1d", "--start", "2026-01-01", "--users-file", users.to_str().unwrap()])
        .await;
    assert_exit(&output, 2);
    assert!(text(&output.stderr).contains("--users-file: a schedule exports channels"), "{}", text(&output.stderr));

    let windowed = env.path("windowed.txt");
    std::fs::write(&windowed, "messaging:bulk-000000\nmessaging:bulk-000001@2024-02-01..\n").unwrap();
    let file = windowed.to_str().unwrap();
    let output =
        env.run(&["schedule", "create", "--every", "1d", "--start", "2026-01-01", "--channels-file", file]).await;
    assert_exit(&output, 2);
    assert!(text(&output.stderr).contains("messaging:bulk-000001 has a window of its own"), "{}", text(&output.stderr));

    let output = env.run(&["schedule", "list", "--json"]).await;
    assert_exit(&output, 0);
    assert!(output.stdout.is_empty(), "no schedule was created: {}", text(&output.stdout));
    let output = env.run(&["schedule", "get", "not-a-uuid"]).await;
    assert_exit(&output, 2);
}
