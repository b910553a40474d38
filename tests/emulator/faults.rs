//! Every injected fault kind, counts, route selection and clearing.

use crate::common::emulator as emulator_support;

use std::time::{Duration, Instant};

use emulator_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stream_export::emulator::data::{KNOWN_CHANNEL, KNOWN_USER};

fn user_path() -> String {
    format!("/users/{KNOWN_USER}/export")
}

#[tokio::test]
async fn status_fault_gives_a_stream_error_before_auth_for_count_requests() {
    let emu = start().await;
    emu.inject("export_user", 2, json!({"kind": "status", "status": 503, "code": -1, "message": "upstream down"}))
        .await;
    // Other routes are not affected while the fault is armed.
    emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    // no api_key at all: the fault answers first, as the edge would
    let first = TestEmulator::send(emu.http.get(format!("{}{}", emu.base, user_path()))).await;
    let body = first.assert_error(503, -1);
    assert_eq!(body["message"], "upstream down");
    emu.get(&user_path()).await.assert_error(503, -1);
    assert_eq!(emu.get(&user_path()).await.status, StatusCode::OK);
    let counters = emu.control(Method::GET, "counters", None).await;
    assert_eq!((&counters["routes"]["export_user"], &counters["routes"]["export_channels"]), (&json!(3), &json!(1)));
}

#[tokio::test]
async fn status_429_fault_has_exhausted_rate_headers() {
    let emu = start().await;
    emu.inject("get_task", 1, json!({"kind": "status", "status": 429, "code": 9})).await;
    let answer = emu.get("/tasks/x").await;
    answer.assert_error(429, 9);
    assert_eq!(answer.header("x-ratelimit-remaining").as_deref(), Some("0"));
    assert!(answer.header("x-ratelimit-reset").and_then(|r| r.parse::<i64>().ok()).is_some());
    assert!(answer.header("x-ratelimit-limit").is_some());
}

#[tokio::test]
async fn non_json_fault_is_plain_text() {
    let emu = start().await;
    emu.inject("*", 1, json!({"kind": "non_json", "status": 429, "body": "Too Many Requests"})).await;
    let answer = emu.post("/export_channels", json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(answer.text, "Too Many Requests");
    assert!(serde_json::from_str::<Value>(&answer.text).is_err());
    assert!(answer.header("content-type").is_some_and(|c| c.starts_with("text/plain")));
    let counters = emu.control(Method::GET, "counters", None).await;
    assert_eq!(counters["exports_created"], json!(0));
}

#[tokio::test]
async fn malformed_json_fault_keeps_the_status() {
    let emu = start().await;
    emu.inject("export_channels", 1, json!({"kind": "malformed_json"})).await;
    let answer = emu.post("/export_channels", json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    assert_eq!(answer.status, StatusCode::CREATED);
    assert!(serde_json::from_str::<Value>(&answer.text).is_err(), "{}", answer.text);
    assert!(answer.header("x-ratelimit-limit").is_some());
}

#[tokio::test]
async fn truncated_fault_cuts_the_body_short_of_content_length() {
    let emu = start().await;
    emu.inject("export_user", 1, json!({"kind": "truncated"})).await;
    let request = raw_request(
        "GET",
        &format!("{}?api_key={KEY}", user_path()),
        &["stream-auth-type: jwt", &format!("Authorization: {}", server_token())],
        "",
    );
    let response = raw(emu.addr(), &request).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("head");
    let declared: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    assert!(declared > 0 && body.len() < declared, "got {} of {declared}", body.len());
    // the client library sees an error, and the next request is whole again
    emu.inject("export_user", 1, json!({"kind": "truncated"})).await;
    let result = emu.request(Method::GET, &user_path()).send().await;
    let failed = match result {
        Err(_) => true,
        Ok(response) => response.text().await.is_err(),
    };
    assert!(failed);
    assert_eq!(emu.get(&user_path()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn delay_fault_waits_then_answers() {
    let emu = start().await;
    emu.inject("get_task", 1, json!({"kind": "delay", "ms": 300})).await;
    let started = Instant::now();
    let answer = emu.get("/tasks/unknown").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    answer.assert_error(404, 16);
}

#[tokio::test]
async fn drop_fault_closes_without_a_response() {
    let emu = start().await;
    emu.inject("export_channels", 1, json!({"kind": "drop"})).await;
    let request = raw_request("POST", &format!("/export_channels?api_key={KEY}"), &[], "{}");
    let response = raw(emu.addr(), &request).await;
    assert!(response.is_empty(), "{}", String::from_utf8_lossy(&response));
    emu.inject("export_channels", 1, json!({"kind": "drop"})).await;
    assert!(emu.request(Method::POST, "/export_channels").json(&json!({})).send().await.is_err());
    // the server still serves new connections
    let answer = emu.post("/export_channels", json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    assert_eq!(answer.status, StatusCode::CREATED);
}

#[tokio::test]
async fn faults_are_listed_cleared_and_validated() {
    let emu = start().await;
    emu.inject("download", 5, json!({"kind": "drop"})).await;
    emu.inject("*", 2, json!({"kind": "delay", "ms": 1})).await;
    let listed = emu.control(Method::GET, "faults", None).await;
    assert_eq!(listed["faults"].as_array().map(Vec::len), Some(2));
    let cleared = emu.control(Method::DELETE, "faults", None).await;
    assert_eq!(cleared["cleared"], json!(2));
    let bad = TestEmulator::send(
        emu.http
            .post(format!("{}/_emulator/faults", emu.base))
            .json(&json!({"route": "nope", "fault": {"kind": "drop"}})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad = TestEmulator::send(
        emu.http
            .post(format!("{}/_emulator/faults", emu.base))
            .json(&json!({"route": "get_task", "fault": {"kind": "explode"}})),
    )
    .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}
