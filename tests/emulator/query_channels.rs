//! QueryChannels (`POST /channels`) as a server-side lister calls it (stream-api.md §1.11):
//! keyset pages on `created_at`, the documented limits, the route's own rate limit.

use std::collections::BTreeSet;

use crate::common::emulator as emulator_support;

use emulator_support::*;
use serde_json::{Value, json};
use stream_export::emulator::{
    EmulatorConfig,
    data::{BULK_IMPORT_SIZE, DELETED_CHANNEL, KNOWN_CHANNEL},
};

async fn with_synthetic(count: usize) -> TestEmulator {
    let mut config = EmulatorConfig::new(KEY, SECRET);
    config.synthetic_channels = count;
    start_with(config).await
}

fn cids(body: &Value) -> Vec<String> {
    body["channels"]
        .as_array()
        .expect("channels")
        .iter()
        .map(|row| row["channel"]["cid"].as_str().expect("cid").to_owned())
        .collect()
}

/// Lists every channel of `filter` the way a careful lister does: keyset pages of 30 on
/// `created_at` (then `cid`, so that a page boundary inside one instant makes progress), with
/// `$gte` on the last time seen and the cids already seen at that time dropped.
async fn list_all(emu: &TestEmulator, filter: Value) -> (Vec<String>, usize) {
    let (mut listed, mut calls) = (Vec::new(), 0);
    let mut cursor: Option<(String, String)> = None;
    loop {
        let page_filter = match &cursor {
            None => filter.clone(),
            Some((at, cid)) => json!({"$and": [filter, {"$or": [
                {"created_at": {"$gt": at}},
                {"$and": [{"created_at": {"$eq": at}}, {"cid": {"$gt": cid}}]},
            ]}]}),
        };
        let answer = emu
            .post(
                "/channels",
                json!({
                    "filter_conditions": page_filter,
                    "sort": [{"field": "created_at", "direction": 1}, {"field": "cid", "direction": 1}],
                    "limit": 30, "state": false, "watch": false, "presence": false,
                }),
            )
            .await;
        calls += 1;
        assert_eq!(answer.status, 200, "{}", answer.text);
        let body = answer.json();
        let rows = body["channels"].as_array().expect("channels").clone();
        listed.extend(cids(&body));
        let Some(last) = rows.last() else { break };
        cursor = Some((
            last["channel"]["created_at"].as_str().expect("created_at").to_owned(),
            last["channel"]["cid"].as_str().expect("cid").to_owned(),
        ));
        if rows.len() < 30 {
            break;
        }
    }
    (listed, calls)
}

#[tokio::test]
async fn keyset_pages_list_every_channel_once_even_inside_a_bulk_import() {
    let emu = with_synthetic(1_000).await;
    let (listed, calls) = list_all(&emu, json!({"type": "messaging"})).await;
    let unique: BTreeSet<_> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "no channel is listed twice");
    // 1,000 synthetic plus the live messaging channels of the fixed set (the soft-deleted one is not listed).
    assert_eq!(listed.iter().filter(|cid| cid.starts_with("messaging:bulk-")).count(), 1_000);
    assert!(unique.contains(KNOWN_CHANNEL));
    assert!(!unique.contains(DELETED_CHANNEL));
    assert!(calls <= listed.len() / 30 + 1, "{calls} calls for {} channels", listed.len());

    // The bulk import: more channels than a page share one created_at.
    let answer =
        emu.post("/channels", json!({"filter_conditions": {"cid": "messaging:bulk-000500"}, "state": false})).await;
    let at = answer.json()["channels"][0]["channel"]["created_at"].clone();
    let same = emu
        .post(
            "/channels",
            json!({"filter_conditions": {"created_at": {"$eq": at}}, "limit": 30, "offset": 30, "state": false}),
        )
        .await;
    assert_eq!(cids(&same.json()).len(), BULK_IMPORT_SIZE - 30, "{BULK_IMPORT_SIZE} channels share {at}");
}

#[tokio::test]
async fn documented_limits_and_an_empty_filter_are_input_errors() {
    let emu = start().await;
    for (body, field) in [
        (json!({"filter_conditions": {}}), "filter_conditions"),
        (json!({"filter_conditions": {"type": "messaging"}, "limit": 31}), "limit"),
        (json!({"filter_conditions": {"type": "messaging"}, "offset": 1001}), "offset"),
        (json!({"filter_conditions": {"type": {"$regex": "^m"}}}), "filter_conditions.type.$regex"),
        (
            json!({"filter_conditions": {"type": "messaging"}, "sort": [{"field": "created_at", "direction": 2}]}),
            "sort[0].direction",
        ),
    ] {
        let answer = emu.post("/channels", body.clone()).await;
        let error = answer.assert_error(400, 4);
        assert!(error["exception_fields"][field].is_string(), "{body} → {error}");
        assert!(error["message"].as_str().unwrap_or_default().starts_with("QueryChannels failed with error: "));
    }
}

#[tokio::test]
async fn rows_carry_state_and_rate_limit_headers_like_the_sdk_expects() {
    let emu = start().await;
    let answer = emu
        .post(
            "/channels",
            json!({"filter_conditions": {"cid": {"$in": [KNOWN_CHANNEL]}}, "state": true,
            "message_limit": 2}),
        )
        .await;
    assert_eq!(answer.status, 200, "{}", answer.text);
    let body = answer.json();
    assert_duration(&body);
    let row = &body["channels"][0];
    assert_eq!(row["channel"]["cid"], KNOWN_CHANNEL);
    assert_timestamp(&row["channel"]["created_at"]);
    assert_timestamp(&row["channel"]["last_message_at"]);
    assert_eq!(row["messages"].as_array().map(Vec::len), Some(2));
    assert!(!row["members"].as_array().expect("members").is_empty());
    for header in ["x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset"] {
        assert!(answer.header(header).is_some(), "{header}");
    }
    assert_eq!(answer.header("x-ratelimit-limit").as_deref(), Some("10000"));
}

#[tokio::test]
async fn the_route_has_its_own_rate_limit() {
    let mut config = EmulatorConfig::new(KEY, SECRET);
    config.rate_limits.query_channels = 2;
    let emu = start_with(config).await;
    let body = json!({"filter_conditions": {"type": "team"}});
    assert_eq!(emu.post("/channels", body.clone()).await.status, 200);
    assert_eq!(emu.post("/channels", body.clone()).await.status, 200);
    let refused = emu.post("/channels", body).await;
    refused.assert_error(429, 9);
    // The export route is not affected.
    let export = emu.post("/export_channels", json!({"channels": [{"type": "messaging", "id": "general"}]})).await;
    assert_eq!(export.status, 201, "{}", export.text);
}
