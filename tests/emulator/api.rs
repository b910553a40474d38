//! The emulator's API surface: auth, validation, status codes, rate limits, routes, user export.

use crate::common::{emulator as emulator_support, token};

use emulator_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stream_export::emulator::data::{
    HEAVY_USER, KNOWN_CHANNEL, KNOWN_USER, TEAM_CHANNEL, UNKNOWN_CHANNEL, UNKNOWN_USER,
};

fn one_channel() -> Value {
    json!({"channels": [{"type": "messaging", "id": "general"}]})
}

#[tokio::test]
async fn api_key_is_checked_first() {
    let emu = start().await;
    let missing = TestEmulator::send(emu.http.get(format!("{}/tasks/abc", emu.base))).await;
    let body = missing.assert_error(401, 2);
    assert_eq!(body["message"], json!("GetTask failed with error: \"api_key or app_id not provided\""));
    assert!(missing.header("x-ratelimit-limit").is_some());

    let wrong = TestEmulator::send(
        emu.http
            .post(format!("{}/export_channels?api_key=nope", emu.base))
            .header("stream-auth-type", "jwt")
            .header("Authorization", server_token())
            .json(&one_channel()),
    )
    .await;
    let body = wrong.assert_error(401, 2);
    assert_eq!(body["message"], json!("ExportChannels failed with error: \"api_key not valid\""));
}

#[tokio::test]
async fn jwt_and_auth_type_are_required() {
    let emu = start().await;
    let url = format!("{}/users/{KNOWN_USER}/export?api_key={KEY}", emu.base);
    let call = |auth_type: Option<&str>, token: Option<String>| {
        let mut builder = emu.http.get(&url);
        if let Some(auth_type) = auth_type {
            builder = builder.header("stream-auth-type", auth_type);
        }
        if let Some(token) = token {
            builder = builder.header("Authorization", token);
        }
        TestEmulator::send(builder)
    };
    call(None, Some(server_token())).await.assert_error(401, 5);
    call(Some("anonymous"), Some(server_token())).await.assert_error(401, 5);
    call(Some("jwt"), None).await.assert_error(401, 5);
    call(Some("jwt"), Some(format!("Bearer {}", server_token()))).await.assert_error(401, 5);
    call(Some("jwt"), Some("not-a-jwt".into())).await.assert_error(401, 5);
    let unsigned = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzZXJ2ZXIiOnRydWV9.".to_owned();
    call(Some("jwt"), Some(unsigned)).await.assert_error(401, 5);
    let other_secret = token("another-secret-0123456789abcdef0123456789", json!({"server": true}));
    call(Some("jwt"), Some(other_secret)).await.assert_error(401, 43);
    let user_token = token(SECRET, json!({"user_id": "bob"}));
    call(Some("jwt"), Some(user_token)).await.assert_error(401, 5);
    let not_server = token(SECRET, json!({"server": false}));
    call(Some("jwt"), Some(not_server)).await.assert_error(401, 5);
    let now = chrono::Utc::now().timestamp();
    let expired = token(SECRET, json!({"server": true, "exp": now - 10}));
    call(Some("jwt"), Some(expired)).await.assert_error(401, 40);
    let fresh = token(SECRET, json!({"server": true, "exp": now + 600, "iat": now}));
    assert_eq!(call(Some("jwt"), Some(fresh)).await.status, StatusCode::OK);
    assert_eq!(call(Some("JWT"), Some(server_token())).await.status, StatusCode::OK);
}

#[tokio::test]
async fn mixed_case_header_names_are_accepted_and_rate_headers_are_lower_case() {
    let emu = start().await;
    let token = server_token();
    let request = raw_request(
        "GET",
        &format!("/users/{KNOWN_USER}/export?api_key={KEY}"),
        &["Stream-Auth-Type: jwt", &format!("AUTHORIZATION: {token}")],
        "",
    );
    let response = String::from_utf8_lossy(&raw(emu.addr(), &request).await).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for name in ["x-ratelimit-limit: ", "x-ratelimit-remaining: ", "x-ratelimit-reset: "] {
        assert!(response.contains(name), "{name} missing in {response}");
    }
    // an error answer carries them too, in lower case
    let request = raw_request("GET", "/tasks/x", &[], "");
    let response = String::from_utf8_lossy(&raw(emu.addr(), &request).await).into_owned();
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("x-ratelimit-remaining: "), "{response}");
}

#[tokio::test]
async fn status_codes_durations_and_unknown_routes() {
    let emu = start().await;
    let created = emu.post("/export_channels", one_channel()).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let body = created.json();
    assert_duration(&body);
    let task = body["task_id"].as_str().expect("task id");
    assert_eq!(uuid::Uuid::parse_str(task).map(|u| u.get_version_num()).ok(), Some(4));

    for path in [format!("/tasks/{task}"), format!("/export_channels/{task}")] {
        let answer = emu.get(&path).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_duration(&answer.json());
    }
    let users = emu.post("/export/users", json!({"user_ids": [KNOWN_USER]})).await;
    assert_eq!(users.status, StatusCode::CREATED, "{}", users.text);

    let missing = emu.get("/tasks/5b7d2d8c-1111-4222-8333-444455556666").await;
    missing.assert_error(404, 16);
    emu.get("/export_channels/not-a-uuid").await.assert_error(404, 16);
    for (method, path) in [
        (Method::GET, "/nope"),
        (Method::GET, "/export_channels"),
        (Method::DELETE, "/export_channels"),
        (Method::POST, "/tasks/abc"),
        (Method::PUT, "/users/x/export"),
        (Method::GET, "/api/v1/export_channels"),
    ] {
        let answer = TestEmulator::send(emu.request(method.clone(), path)).await;
        answer.assert_error(404, 16);
        assert!(answer.header("x-ratelimit-limit").is_some(), "{method} {path}");
    }
}

#[tokio::test]
async fn export_channels_validation() {
    let emu = start().await;
    let expect = |body: Value, field: &'static str| {
        let emu = &emu;
        async move {
            let answer = emu.post("/export_channels", body.clone()).await;
            let error = answer.assert_error(400, 4);
            assert!(error["exception_fields"].get(field).is_some(), "{field} not named for {body}: {error}");
            assert!(error["message"].as_str().is_some_and(|m| m.starts_with("ExportChannels failed with error: \"")));
        }
    };
    expect(json!({}), "channels").await;
    expect(json!({"channels": []}), "channels").await;
    let many: Vec<Value> = (0..26).map(|_| json!({"cid": KNOWN_CHANNEL})).collect();
    expect(json!({"channels": many}), "channels").await;
    expect(json!({"channels": [{"type": "messaging"}]}), "channels[0].id").await;
    expect(json!({"channels": [{"id": "general"}]}), "channels[0].type").await;
    expect(json!({"channels": [{"cid": "general"}]}), "channels[0].cid").await;
    expect(json!({"channels": [{"cid": KNOWN_CHANNEL}, {"cid": UNKNOWN_CHANNEL}]}), "channels[1]").await;
    expect(json!({"channels": [{"cid": KNOWN_CHANNEL, "messages_since": "yesterday"}]}), "channels[0].messages_since")
        .await;
    expect(
        json!({"channels": [{"cid": KNOWN_CHANNEL, "messages_until": "2024-01-01T00:00:00"}]}),
        "channels[0].messages_until",
    )
    .await;
    expect(json!({"channels": [{"cid": KNOWN_CHANNEL}], "version": "v3"}), "version").await;
    expect(
        json!({"channels": [{"cid": KNOWN_CHANNEL}], "include_truncated_messages": "yes"}),
        "include_truncated_messages",
    )
    .await;

    let malformed = TestEmulator::send(
        emu.request(Method::POST, "/export_channels")
            .header("content-type", "application/json")
            .body("{\"channels\": ["),
    )
    .await;
    malformed.assert_error(400, 4);

    // accepted forms
    let (kind, id) = TEAM_CHANNEL.split_once(':').expect("cid");
    for body in [
        json!({"channels": [{"type": kind, "id": id, "messages_since": null, "messages_until": null}]}),
        json!({"channels": [{"cid": KNOWN_CHANNEL, "messages_since": "2024-01-10T09:30:00+00:00"}], "version": "v1"}),
        json!({"channels": [{"cid": KNOWN_CHANNEL, "messages_since": "2024-01-10T09:30:00.123456789Z"}], "version": "v2"}),
        json!({"channels": [{"cid": KNOWN_CHANNEL, "messages_until": "2024-01-10T11:30:00.000Z"}], "version": null}),
        json!({"channels": [{"cid": KNOWN_CHANNEL, "messages_until": "2024-01-10T11:30:00-05:30"}]}),
        json!({"channels": [{"type": "messaging", "id": "general", "cid": KNOWN_CHANNEL}], "export_users": true}),
    ] {
        let answer = emu.post("/export_channels", body.clone()).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{body}: {}", answer.text);
    }
    let channels: Vec<Value> = (0..25).map(|_| json!({"cid": KNOWN_CHANNEL})).collect();
    assert_eq!(emu.post("/export_channels", json!({"channels": channels})).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn channel_limit_is_configurable() {
    let mut config = stream_export::emulator::EmulatorConfig::new(KEY, SECRET);
    config.channel_limit = 100;
    let emu = start_with(config).await;
    let channels: Vec<Value> = (0..100).map(|_| json!({"cid": KNOWN_CHANNEL})).collect();
    assert_eq!(emu.post("/export_channels", json!({"channels": channels})).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn export_users_validation() {
    let emu = start().await;
    for body in [
        json!({}),
        json!({"user_ids": []}),
        json!({"user_ids": (0..26).map(|n| format!("user-{n:02}")).collect::<Vec<_>>()}),
        json!({"user_ids": [""]}),
        json!({"user_ids": [UNKNOWN_USER]}),
    ] {
        let error = emu.post("/export/users", body.clone()).await.assert_error(400, 4);
        assert!(error["exception_fields"].is_object(), "{body}: {error}");
    }
    let ok = json!({"user_ids": (0..25).map(|n| format!("user-{n:02}")).collect::<Vec<_>>()});
    assert_eq!(emu.post("/export/users", ok).await.status, StatusCode::CREATED);
}

#[tokio::test]
async fn rate_limits_report_and_refuse() {
    let emu = start().await;
    let limits = emu.control(Method::PUT, "rate_limits", Some(json!({"get_task": 2}))).await;
    assert_eq!(limits["get_task"], json!(2));
    let first = emu.get("/tasks/nope").await;
    first.assert_error(404, 16);
    assert_eq!(first.header("x-ratelimit-limit").as_deref(), Some("2"));
    assert_eq!(first.header("x-ratelimit-remaining").as_deref(), Some("1"));
    let reset: i64 = first.header("x-ratelimit-reset").and_then(|r| r.parse().ok()).expect("reset");
    let now = chrono::Utc::now().timestamp();
    assert!(reset > now && reset <= now + 61, "reset {reset} now {now}");
    assert_eq!(emu.get("/tasks/nope").await.header("x-ratelimit-remaining").as_deref(), Some("0"));
    let refused = emu.get("/tasks/nope").await;
    let body = refused.assert_error(429, 9);
    assert!(body["message"].as_str().is_some_and(|m| m.contains("Too many requests")));
    assert_eq!(refused.header("x-ratelimit-remaining").as_deref(), Some("0"));
    // other routes have their own windows
    let other = emu.get(&format!("/users/{KNOWN_USER}/export")).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.header("x-ratelimit-limit").as_deref(), Some("10000"));
    // a new minute (emulator clock) opens a new window
    emu.advance_clock(61).await;
    assert_eq!(emu.get("/tasks/nope").await.status, StatusCode::NOT_FOUND);
    // control endpoints are neither limited nor counted
    let counters = emu.control(Method::GET, "counters", None).await;
    assert_eq!(counters["routes"]["get_task"], json!(4));
    assert!(counters["routes"].get("control").is_none());
}

#[tokio::test]
async fn export_user_sync() {
    let emu = start().await;
    let answer = emu.get(&format!("/users/{KNOWN_USER}/export")).await;
    assert_eq!(answer.status, StatusCode::OK);
    let body = answer.json();
    assert_duration(&body);
    assert_eq!(body["user"]["id"], json!(KNOWN_USER));
    assert!(body["user"]["name"].is_string() && body["user"]["profile"]["location"].is_object());
    let messages = body["messages"].as_array().expect("messages");
    assert!(!messages.is_empty());
    for message in messages {
        assert_eq!(message["user"], Value::Null);
        assert!(message["cid"].is_string() && message["html"].is_string());
        assert_timestamp(&message["created_at"]);
    }
    let reactions = body["reactions"].as_array().expect("reactions");
    assert!(reactions.iter().all(|r| r["user_id"] == json!(KNOWN_USER) && r["message_id"].is_string()));

    emu.get(&format!("/users/{UNKNOWN_USER}/export")).await.assert_error(404, 16);
    let heavy = emu.get(&format!("/users/{HEAVY_USER}/export")).await.assert_error(400, 4);
    assert!(heavy["message"].as_str().is_some_and(|m| m.contains("more than 10000 messages")), "{heavy}");
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let emu = start().await;
    let addr = emu.addr();
    emu.handle.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn control_values_that_would_overflow_the_clock_are_refused_and_break_nothing() {
    let emu = start().await;
    let task = emu.export_channels(json!({"channels": [{"cid": "messaging:general"}]})).await;
    for (method, path, body) in [
        (Method::POST, "clock", json!({"advance_secs": i64::MAX})),
        (Method::POST, "clock", json!({"advance_secs": 9_000_000_000_000_i64})),
        (Method::PUT, "task_defaults", json!({"waiting_ms": u64::MAX})),
        (Method::PUT, "task_defaults", json!({"running_ms": 9_000_000_000_000_000_u64})),
    ] {
        let answer =
            TestEmulator::send(emu.http.request(method, format!("{}/_emulator/{path}", emu.base)).json(&body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path} {body}: {}", answer.text);
        assert!(answer.text.contains("at most"), "the refusal says the limit: {}", answer.text);
    }
    // Repeated large steps add up to the limit, never past it.
    for _ in 0..3 {
        let _ = TestEmulator::send(
            emu.http
                .request(Method::POST, format!("{}/_emulator/clock", emu.base))
                .json(&json!({"advance_secs": 1_500_000_000})),
        )
        .await;
    }
    // Everything still answers: the API, the task (deleted by now, 60 days after it completed),
    // the clock, a new task.
    assert_eq!(emu.get(&format!("/tasks/{task}")).await.status, StatusCode::NOT_FOUND);
    emu.control(Method::GET, "clock", None).await;
    emu.export_channels(json!({"channels": [{"cid": "messaging:general"}]})).await;
}
