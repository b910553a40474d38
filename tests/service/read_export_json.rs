//! ReadExport with `RECORD_ENCODING_JSON`: records as the file's own JSON text, several to a
//! message, with the same numbering, resume and errors as the `Struct` encoding.

use crate::{
    common,
    read_export::{download, wait_completed},
};

use std::time::Duration;

use bytes::Bytes;
use common::{
    TestApp, assert_status, read_export_encoded, read_export_to_end,
    records::{expected_records, json_of, normalised},
    spawn_app, violated_fields,
};
use serde_json::{Value, json};
use stream_export::{
    emulator::data::{HEAVY_CHANNEL, KNOWN_CHANNEL, KNOWN_USER, TEAM_CHANNEL},
    export_file::JSON_BATCH_BYTES,
    proto::{
        ChannelRef, ExportChannelsRequest, ExportFormatVersion, ExportRecord, ExportUsersRequest, ReadExportRequest,
        RecordEncoding,
    },
};
use tokio_stream::StreamExt;
use tonic::Code;

async fn channel_export(app: &TestApp, version: ExportFormatVersion) -> String {
    export_of(app, &[KNOWN_CHANNEL, TEAM_CHANNEL], version).await
}

async fn export_of(app: &TestApp, cids: &[&str], version: ExportFormatVersion) -> String {
    let channels = cids
        .iter()
        .map(|cid| {
            let (kind, id) = cid.split_once(':').unwrap();
            ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }
        })
        .collect();
    let request = ExportChannelsRequest {
        channels,
        version: version as i32,
        include_truncated_messages: true,
        export_users: true,
        ..Default::default()
    };
    app.client.clone().export_channels(request).await.unwrap().into_inner().task_id
}

async fn synthetic_export(app: &TestApp, version: &str, records: u64) -> (String, String) {
    let created = app
        .emulator
        .control(
            reqwest::Method::POST,
            "synthetic_exports",
            Some(json!({"records": records, "version": version, "record_bytes": 300})),
        )
        .await;
    let task_id = created["task_id"].as_str().unwrap().to_owned();
    wait_completed(app, task_id).await
}

/// The records of JSON messages, numbered, checking that messages are JSON-only and follow each
/// other from `start` without a gap.
fn json_records(messages: &[ExportRecord], start: u64) -> Vec<(u64, Bytes)> {
    let mut next = start;
    let mut records = Vec::new();
    for message in messages {
        assert_eq!(message.index, next, "each message starts where the previous one ended");
        assert!(message.item.is_none() && message.kind.is_empty(), "no Struct in JSON mode");
        assert!(!message.json.is_empty(), "a JSON message carries at least one record");
        for json in &message.json {
            records.push((next, json.clone()));
            next += 1;
        }
    }
    records
}

/// Each JSON record as `(type, item)`, numbers normalised as the Struct encoding has them.
fn parsed(records: &[(u64, Bytes)]) -> Vec<(String, Value)> {
    records
        .iter()
        .map(|(_, json)| {
            let line: Value = serde_json::from_slice(json).expect("each record is JSON");
            (line["type"].as_str().expect("a type").to_owned(), line["item"].clone())
        })
        .collect()
}

#[tokio::test]
async fn json_records_are_the_files_own_text_and_the_same_records_as_structs() {
    let app = spawn_app().await;
    let users = async {
        let request = ExportUsersRequest { user_ids: vec![KNOWN_USER.into(), "user-02".into()], ..Default::default() };
        app.client.clone().export_users(request).await.unwrap().into_inner().task_id
    };
    let exports = [
        ("v2", wait_completed(&app, channel_export(&app, ExportFormatVersion::V2).await).await),
        ("v1", wait_completed(&app, channel_export(&app, ExportFormatVersion::V1).await).await),
        ("users", wait_completed(&app, users.await).await),
    ];
    for (name, (task_id, url)) in exports {
        let file = download(&app, &url).await;
        let (messages, end) = read_export_encoded(&app, &task_id, 0, RecordEncoding::Json).await;
        assert!(end.is_none(), "{name}: {end:?}");
        let records = json_records(&messages, 0);
        if name == "v1" {
            // Each entity's text is the document's own, wrapped in the JSON-lines envelope.
            for (_, json) in &records {
                let line = std::str::from_utf8(json).unwrap();
                let item = line.split_once(",\"item\":").unwrap().1.strip_suffix('}').unwrap();
                assert!(file.contains(item), "{name}: an entity as the document holds it: {item}");
            }
        } else {
            let lines: Vec<&str> = file.lines().filter(|l| !l.trim().is_empty()).collect();
            let texts: Vec<&str> = records.iter().map(|(_, j)| std::str::from_utf8(j).unwrap()).collect();
            assert_eq!(texts, lines, "{name}: every line exactly as the file holds it");
        }
        let (structs, _) = read_export_to_end(&app, &task_id, 0).await;
        let as_structs: Vec<(String, Value)> =
            structs.iter().map(|r| (r.kind.clone(), json_of(r.item.as_ref().unwrap()))).collect();
        let as_json: Vec<(String, Value)> = parsed(&records).iter().map(|(k, v)| (k.clone(), normalised(v))).collect();
        assert_eq!(as_json, as_structs, "{name}: the same records in both encodings");
        assert_eq!(parsed(&records), expected_records(&file), "{name}");
    }
    app.stop().await;
}

#[tokio::test]
async fn a_slow_client_gets_records_batched_and_resumes_inside_a_batch() {
    let app = spawn_app().await;
    let (task_id, url) = synthetic_export(&app, "v2", 3_000).await;
    let lines: Vec<String> = download(&app, &url).await.lines().map(str::to_owned).collect();
    let mut client = app.client.clone();
    let request = ReadExportRequest { task_id: task_id.clone(), start_index: 0, encoding: RecordEncoding::Json.into() };
    let mut stream = client.read_export(request).await.unwrap().into_inner();
    // The client does not read for a while: the records wait in batches.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut messages = Vec::new();
    while let Some(message) = stream.next().await {
        messages.push(message.expect("every message arrives"));
    }
    let records = json_records(&messages, 0);
    assert_eq!(records.len(), lines.len(), "every line, once");
    let batch = messages.iter().max_by_key(|m| m.json.len()).unwrap();
    assert!(batch.json.len() > 10, "records waiting for a slow client go several to a message: {}", batch.json.len());
    let bytes: usize = batch.json.iter().map(Bytes::len).sum();
    assert!(bytes <= JSON_BATCH_BYTES + 1024, "a message stays within a batch (and one record): {bytes} bytes");

    // Resuming at a record in the middle of that message starts exactly there.
    let inside = batch.index + 3;
    let (tail, end) = read_export_encoded(&app, &task_id, inside, RecordEncoding::Json).await;
    assert!(end.is_none(), "{end:?}");
    let tail = json_records(&tail, inside);
    let texts: Vec<&str> = tail.iter().map(|(_, j)| std::str::from_utf8(j).unwrap()).collect();
    assert_eq!(texts, lines[inside as usize..], "from the record asked for to the end");
    app.stop().await;
}

#[tokio::test]
async fn a_broken_download_in_json_mode_says_where_to_resume_and_the_resume_completes_it() {
    let app = spawn_app().await;
    for version in [ExportFormatVersion::V2, ExportFormatVersion::V1] {
        let (task_id, url) = wait_completed(&app, export_of(&app, &[HEAVY_CHANNEL], version).await).await;
        let expected = expected_records(&download(&app, &url).await);
        app.emulator.inject("download", 1, json!({"kind": "truncated"})).await;
        let (first, end) = read_export_encoded(&app, &task_id, 0, RecordEncoding::Json).await;
        let status = end.expect("the stream ends with an error");
        let details = assert_status(&status, Code::Unavailable, "DOWNLOAD_FAILED");
        let next: u64 = details.error_info().unwrap().metadata["next_index"].parse().unwrap();
        let mut records = json_records(&first, 0);
        assert_eq!(next, records.len() as u64, "{version:?}: next_index is the first record not delivered");
        assert!(next < expected.len() as u64, "{version:?}: it broke mid-way");
        let (rest, end) = read_export_encoded(&app, &task_id, next, RecordEncoding::Json).await;
        assert!(end.is_none(), "{version:?}: {end:?}");
        records.extend(json_records(&rest, next));
        assert_eq!(parsed(&records), expected, "{version:?}: every record once, in order");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_encoding_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let request =
        ReadExportRequest { task_id: "b9f2a2ce-4bd3-4c6c-9f8f-0c2f0b2b8a11".into(), start_index: 0, encoding: 7 };
    let Err(status) = app.client.clone().read_export(request).await else { panic!("refused") };
    let details = assert_status(&status, Code::InvalidArgument, "INVALID_REQUEST");
    assert_eq!(violated_fields(&details), ["encoding"]);
    assert_eq!(app.emulator.requests("get_task").await, 0, "nothing went upstream");
    app.stop().await;
}
