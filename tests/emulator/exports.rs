//! Task lifecycle, signed result URLs and export file contents.

use crate::common::emulator as emulator_support;

use std::collections::BTreeSet;

use emulator_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use stream_export::emulator::data::{
    COMMERCE_CHANNEL, DELETED_CHANNEL, HEAVY_CHANNEL, HEAVY_USER, HEAVY_USER_MESSAGES, KNOWN_CHANNEL, KNOWN_USER,
    LIVESTREAM_CHANNEL, TRUNCATED_CHANNEL,
};

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line ({e}): {line}"))).collect()
}

fn v1_messages(file: &str) -> Vec<Value> {
    let doc: Value = serde_json::from_str(file).expect("v1 is one JSON document");
    doc["channels"][0]["messages"].as_array().cloned().unwrap_or_default()
}

#[tokio::test]
async fn task_moves_through_every_state_on_the_emulator_clock() {
    let emu = start().await;
    emu.control(
        Method::PUT,
        "task_defaults",
        Some(json!({"waiting_ms": 10_000, "pending_ms": 10_000, "running_ms": 10_000})),
    )
    .await;
    let task = emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    let mut seen = Vec::new();
    let mut updated = Vec::new();
    for step in 0..4 {
        let route = if step % 2 == 0 { "tasks" } else { "export_channels" };
        let body = emu.get(&format!("/{route}/{task}")).await.json();
        assert_eq!(body["task_id"], json!(task));
        assert_timestamp(&body["created_at"]);
        assert_timestamp(&body["updated_at"]);
        assert_duration(&body);
        assert_eq!(body.get("result").is_some(), body["status"] == "completed", "{body}");
        assert!(body.get("error").is_none());
        seen.push(body["status"].as_str().unwrap_or_default().to_owned());
        updated.push(body["updated_at"].as_str().unwrap_or_default().to_owned());
        emu.advance_clock(10).await;
    }
    assert_eq!(seen, ["waiting", "pending", "running", "completed"]);
    assert!(updated.windows(2).all(|w| w[0] < w[1]), "{updated:?}");
    let counters = emu.control(Method::GET, "counters", None).await;
    assert_eq!(counters["tasks"][&task], json!(4));
    assert_eq!(counters["exports_created"], json!(1));
    assert_eq!(counters["routes"]["get_task"], json!(2));
    assert_eq!(counters["routes"]["get_export_channels"], json!(2));
    let reset = emu.control(Method::POST, "counters/reset", None).await;
    assert_eq!(reset["exports_created"], json!(0));
}

#[tokio::test]
async fn tasks_can_be_held_steered_and_failed() {
    let emu = start().await;
    let task = emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    let held = emu.control(Method::POST, &format!("tasks/{task}"), Some(json!({"hold": true}))).await;
    assert_eq!(held["held"], json!(true));
    emu.advance_clock(3600).await;
    assert_eq!(emu.get(&format!("/tasks/{task}")).await.json()["status"], "waiting");
    let running = emu.control(Method::POST, &format!("tasks/{task}"), Some(json!({"status": "running"}))).await;
    assert_eq!(running["status"], "running");
    emu.advance_clock(3600).await;
    assert_eq!(emu.get(&format!("/tasks/{task}")).await.json()["status"], "running");
    emu.control(Method::POST, &format!("tasks/{task}"), Some(json!({"hold": false}))).await;
    let done = emu.wait_done(&task).await;
    assert_eq!(done["status"], "completed");

    let task = emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    let error = json!({"type": "export_error", "description": "disk full"});
    emu.control(Method::POST, &format!("tasks/{task}"), Some(json!({"status": "failed", "error": error}))).await;
    let failed = emu.get(&format!("/export_channels/{task}")).await.json();
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["type"], "export_error");
    assert_eq!(failed["error"]["description"], "disk full");
    assert_eq!(failed["error"]["stacktrace"], "");
    assert!(failed["error"]["version"].is_string());
    assert!(failed.get("result").is_none());

    emu.control(
        Method::PUT,
        "task_defaults",
        Some(json!({"outcome": "failed", "waiting_ms": 0, "pending_ms": 0, "running_ms": 0})),
    )
    .await;
    let task = emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    let failed = emu.wait_done(&task).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"]["type"].is_string() && failed["error"]["description"].is_string());
}

#[tokio::test]
async fn result_urls_are_signed_resigned_and_expire() {
    let emu = start().await;
    let task = emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    let done = emu.wait_done(&task).await;
    let result = &done["result"];
    assert_eq!(result["s3_bucket_name"].as_str().map(str::is_empty), Some(false));
    let path = result["path"].as_str().expect("path");
    assert!(path.contains(&task));
    let url = result["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with(&format!("{}/exports/channels/{task}/", emu.base)), "{url}");
    assert!(url.contains("Expires=") && url.contains("Signature="));
    let expires = |url: &str| -> i64 {
        let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
        query.split('&').find_map(|kv| kv.strip_prefix("Expires=")).and_then(|v| v.parse().ok()).expect("Expires")
    };
    let now = chrono::Utc::now().timestamp();
    assert!((expires(&url) - now - 86_400).abs() <= 5);

    // valid
    assert_eq!(TestEmulator::send(emu.http.get(&url)).await.status, StatusCode::OK);
    // tampered signature, tampered expiry, no signature
    let last = url.chars().last().expect("char");
    let tampered = format!("{}{}", &url[..url.len() - 1], if last == '0' { '1' } else { '0' });
    let denied = TestEmulator::send(emu.http.get(&tampered)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    assert!(denied.text.contains("<Code>AccessDenied</Code>"), "{}", denied.text);
    let later = url.replace(&format!("Expires={}", expires(&url)), &format!("Expires={}", expires(&url) + 10));
    assert_eq!(TestEmulator::send(emu.http.get(&later)).await.status, StatusCode::FORBIDDEN);
    let bare = url.split_once('?').map(|(u, _)| u.to_owned()).expect("query");
    assert_eq!(TestEmulator::send(emu.http.get(&bare)).await.status, StatusCode::FORBIDDEN);

    // re-signed on every read
    emu.advance_clock(5).await;
    let again = emu.get(&format!("/export_channels/{task}")).await.json();
    let url2 = again["result"]["url"].as_str().expect("url").to_owned();
    // the clock moved 5 s (plus the real time between the two reads)
    assert!((5..=7).contains(&(expires(&url2) - expires(&url))), "{url} then {url2}");
    assert_ne!(url, url2);

    // expiry after 24 h on the emulator clock
    emu.advance_clock(90_000).await;
    let expired = TestEmulator::send(emu.http.get(&url2)).await;
    assert_eq!(expired.status, StatusCode::FORBIDDEN);
    assert!(expired.text.contains("AccessDenied") && expired.text.contains("expired"), "{}", expired.text);
    let fresh = emu.get(&format!("/tasks/{task}")).await.json();
    let url3 = fresh["result"]["url"].as_str().expect("url");
    assert_eq!(TestEmulator::send(emu.http.get(url3)).await.status, StatusCode::OK);
}

/// Stream keeps a file 60 days, re-signing its URL at each read; then the file and the task
/// are gone.
#[tokio::test]
async fn files_are_deleted_sixty_days_after_their_task_completed() {
    let emu = start().await;
    let task = emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    emu.wait_done(&task).await;
    // Minutes before the 60 days: a URL signed then is valid for 24 h more, the file for minutes.
    emu.advance_clock(60 * 86_400 - 600).await;
    let day_59 = emu.get(&format!("/tasks/{task}")).await.json();
    let url = day_59["result"]["url"].as_str().expect("a URL on day 59").to_owned();
    assert_eq!(TestEmulator::send(emu.http.get(&url)).await.status, StatusCode::OK);
    emu.advance_clock(1_200).await;
    let gone = TestEmulator::send(emu.http.get(&url)).await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "the file is deleted even under a URL signed before");
    assert!(gone.text.contains("<Code>NoSuchKey</Code>"), "{}", gone.text);
    let status = emu.get(&format!("/tasks/{task}")).await;
    assert_eq!(status.status, StatusCode::NOT_FOUND);
    status.assert_error(404, 16);
}

#[tokio::test]
async fn v1_file_honours_window_and_options() {
    let emu = start().await;
    let file = emu.export_file(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    let doc: Value = serde_json::from_str(&file).expect("json");
    assert!(doc.get("users").is_none());
    let block = &doc["channels"][0];
    assert_eq!(block["channel"]["cid"], json!(KNOWN_CHANNEL));
    assert!(!block["members"].as_array().expect("members").is_empty());
    assert!(block["members"][0]["user"]["id"].is_string());
    let all = block["messages"].as_array().expect("messages").clone();
    assert!(all.len() > 100);
    assert!(all.iter().any(|m| m["latest_reactions"].as_array().is_some_and(|r| !r.is_empty())));
    let deleted: Vec<&Value> = all.iter().filter(|m| m["type"] == "deleted").collect();
    assert!(!deleted.is_empty() && deleted.iter().all(|m| m["text"].as_str().is_some_and(|t| !t.is_empty())));
    assert!(deleted.iter().all(|m| m["deleted_at"].is_string()));

    // since exclusive, until inclusive; Python's +00:00 form and another offset
    let at = |n: usize| all[n]["created_at"].as_str().expect("created_at").to_owned();
    let since = chrono::DateTime::parse_from_rfc3339(&at(10)).expect("ts");
    let until = chrono::DateTime::parse_from_rfc3339(&at(20)).expect("ts");
    let plus2 = chrono::FixedOffset::east_opt(7200).expect("offset");
    let body = json!({"channels": [{
        "type": "messaging", "id": "general",
        "messages_since": since.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false),
        "messages_until": until.with_timezone(&plus2).to_rfc3339_opts(chrono::SecondsFormat::Nanos, false),
    }]});
    let window = v1_messages(&emu.export_file(body).await);
    let ids: Vec<&Value> = window.iter().map(|m| &m["id"]).collect();
    let expected: Vec<&Value> = all[11..=20].iter().map(|m| &m["id"]).collect();
    assert_eq!(ids, expected);

    // clear_deleted_message_text and export_users
    let file = emu
        .export_file(
            json!({"channels": [{"cid": KNOWN_CHANNEL}], "clear_deleted_message_text": true, "export_users": true}),
        )
        .await;
    let doc: Value = serde_json::from_str(&file).expect("json");
    let messages = doc["channels"][0]["messages"].as_array().expect("messages");
    assert!(messages.iter().filter(|m| m["type"] == "deleted").all(|m| m["text"] == ""));
    assert!(messages.iter().filter(|m| m["type"] == "regular").all(|m| m["text"] != ""));
    let users: BTreeSet<&str> =
        doc["users"].as_array().expect("users").iter().filter_map(|u| u["id"].as_str()).collect();
    assert!(users.contains(KNOWN_USER));
    for message in messages {
        assert!(users.contains(message["user"]["id"].as_str().expect("author")));
    }
}

#[tokio::test]
async fn truncated_and_soft_deleted_channels() {
    let emu = start().await;
    let hidden = v1_messages(&emu.export_file(json!({"channels": [{"cid": TRUNCATED_CHANNEL}]})).await);
    let shown = v1_messages(
        &emu.export_file(json!({"channels": [{"cid": TRUNCATED_CHANNEL}], "include_truncated_messages": true})).await,
    );
    assert!(shown.len() > hidden.len() && !hidden.is_empty(), "{} vs {}", shown.len(), hidden.len());

    let file = emu.export_file(json!({"channels": [{"cid": DELETED_CHANNEL}, {"cid": COMMERCE_CHANNEL}]})).await;
    let doc: Value = serde_json::from_str(&file).expect("json");
    let cids: Vec<&Value> =
        doc["channels"].as_array().expect("channels").iter().map(|c| &c["channel"]["cid"]).collect();
    assert_eq!(cids, [&json!(COMMERCE_CHANNEL)]);
    let file =
        emu.export_file(json!({"channels": [{"cid": DELETED_CHANNEL}], "include_soft_deleted_channels": true})).await;
    let doc: Value = serde_json::from_str(&file).expect("json");
    assert_eq!(doc["channels"][0]["channel"]["cid"], json!(DELETED_CHANNEL));
    assert!(doc["channels"][0]["channel"]["deleted_at"].is_string());
}

#[tokio::test]
async fn v2_file_is_json_lines_in_the_import_envelope() {
    let emu = start().await;
    let file = emu
        .export_file(json!({"channels": [{"cid": KNOWN_CHANNEL}, {"cid": LIVESTREAM_CHANNEL}], "version": "v2"}))
        .await;
    let items = lines(&file);
    assert_eq!(items[0]["type"], "channel");
    let kinds: BTreeSet<&str> = items.iter().filter_map(|l| l["type"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["channel", "member", "message", "reaction"]));
    assert_eq!(items.iter().filter(|l| l["type"] == "channel").count(), 2);
    for line in &items {
        assert!(line["item"].is_object(), "{line}");
        if line["type"] == "message" {
            assert!(line["item"]["channel_type"].is_string() && line["item"]["user"].is_string());
        }
    }
    let v1 = v1_messages(&emu.export_file(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await);
    let v2_general = items.iter().filter(|l| l["type"] == "message" && l["item"]["channel_id"] == "general").count();
    assert_eq!(v2_general, v1.len());

    let with_users = lines(
        &emu.export_file(json!({"channels": [{"cid": KNOWN_CHANNEL}], "version": "v2", "export_users": true})).await,
    );
    assert_eq!(with_users[0]["type"], "user");
    assert!(with_users.iter().any(|l| l["type"] == "user" && l["item"]["id"] == json!(KNOWN_USER)));

    let cleared = lines(
        &emu.export_file(
            json!({"channels": [{"cid": KNOWN_CHANNEL}], "version": "v2", "clear_deleted_message_text": true}),
        )
        .await,
    );
    assert!(
        cleared
            .iter()
            .filter(|l| l["type"] == "message" && l["item"]["type"] == "deleted")
            .all(|l| l["item"]["text"] == "")
    );
}

#[tokio::test]
async fn heavy_channel_exports_every_message() {
    let emu = start().await;
    let file = emu.export_file(json!({"channels": [{"cid": HEAVY_CHANNEL}], "version": "v2"})).await;
    let count = lines(&file).iter().filter(|l| l["type"] == "message").count();
    assert_eq!(count, HEAVY_USER_MESSAGES);
}

#[tokio::test]
async fn export_users_file_and_heavy_user_failure() {
    let emu = start().await;
    let answer = emu.post("/export/users", json!({"user_ids": [KNOWN_USER]})).await;
    let task = answer.json()["task_id"].as_str().expect("task").to_owned();
    let done = emu.wait_done(&task).await;
    assert_eq!(done["status"], "completed");
    let url = done["result"]["url"].as_str().expect("url");
    assert!(url.contains("/exports/users/"), "{url}");
    let file = TestEmulator::send(emu.http.get(url)).await;
    assert_eq!(file.status, StatusCode::OK);
    let items = lines(&file.text);
    assert_eq!(items[0]["type"], "user");
    assert_eq!(items[0]["item"]["id"], json!(KNOWN_USER));
    let sync = emu.get(&format!("/users/{KNOWN_USER}/export")).await.json();
    let messages: Vec<&Value> = items.iter().filter(|l| l["type"] == "message").collect();
    assert_eq!(messages.len(), sync["messages"].as_array().map_or(0, Vec::len));
    assert!(messages.iter().all(|l| l["item"]["user"] == json!(KNOWN_USER)));
    let reactions: Vec<&Value> = items.iter().filter(|l| l["type"] == "reaction").collect();
    assert_eq!(reactions.len(), sync["reactions"].as_array().map_or(0, Vec::len));

    let answer = emu.post("/export/users", json!({"user_ids": [KNOWN_USER, HEAVY_USER]})).await;
    let task = answer.json()["task_id"].as_str().expect("task").to_owned();
    let failed = emu.wait_done(&task).await;
    assert_eq!(failed["status"], "failed");
    assert!(failed["error"]["description"].as_str().is_some_and(|d| d.contains("more than 10000")));
}

#[tokio::test]
async fn unfinished_or_unknown_files_are_not_served() {
    let emu = start().await;
    emu.control(Method::PUT, "task_defaults", Some(json!({"waiting_ms": 60_000}))).await;
    let task = emu.export_channels(json!({"channels": [{"cid": KNOWN_CHANNEL}]})).await;
    let path = format!("/exports/channels/{task}/channels-export.json");
    let expires = chrono::Utc::now().timestamp() + 3600;
    // a correct signature for a task that is not completed yet still finds nothing
    let signature = {
        use hmac::{Hmac, Mac};
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
        mac.update(format!("{path}\n{expires}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    };
    let url = format!("{}{path}?Expires={expires}&Signature={signature}", emu.base);
    assert_eq!(TestEmulator::send(emu.http.get(&url)).await.status, StatusCode::NOT_FOUND);
    emu.control(Method::POST, &format!("tasks/{task}"), Some(json!({"status": "completed"}))).await;
    assert_eq!(TestEmulator::send(emu.http.get(&url)).await.status, StatusCode::OK);
}
