//! Property-based fuzzing of everything that reads upstream answers: whatever Stream (or a
//! proxy in front of it) sends — any status, any headers, any bytes, any JSON shape — decoding,
//! error mapping and conversion give a value or an error, never a panic.
//!
//! Run longer with `PROPTEST_CASES=100000 cargo test --test fuzz_upstream_parsing`.

use chrono::Utc;
use proptest::prelude::*;
use reqwest::{
    StatusCode,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use serde_json::{Map, Value, json};
use stream_export::{
    contract::status as errors,
    upstream::{
        Answer, Operation, RateLimit, UpstreamError, convert, decode,
        wire::{TaskCreated, TaskStatus, UserExport},
    },
};
use tonic_types::StatusExt;

const OPERATIONS: [Operation; 4] =
    [Operation::ExportChannels, Operation::ExportUsers, Operation::ExportUser, Operation::GetTask];

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("JSON numbers are finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        // Strings that look like what Stream sends, to reach deeper code.
        prop_oneof![
            Just("completed"),
            Just("failed"),
            Just("2021-02-17T08:17:49.745857Z"),
            Just("http://h/f?Expires=99999999999999&Signature=x"),
            Just("http://h/f?X-Amz-Date=20231114T221320Z&X-Amz-Expires=-5"),
            Just("http://h/f?X-Amz-Date=20231114T221320Z&X-Amz-Expires=9223372036854775807")
        ]
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(field_name(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Field names Stream uses, and others.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "task_id",
            "status",
            "created_at",
            "updated_at",
            "result",
            "url",
            "path",
            "error",
            "type",
            "description",
            "code",
            "message",
            "exception_fields",
            "StatusCode",
            "user",
            "messages",
            "reactions",
            "duration",
        ])
        .prop_map(str::to_owned),
        "[a-z_]{1,8}",
    ]
}

/// Any rate-limit header values, garbage included.
fn any_headers() -> impl Strategy<Value = HeaderMap> {
    let value = prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[ -~]{0,20}"];
    (value.clone(), value.clone(), value).prop_map(|(limit, remaining, reset)| {
        let mut headers = HeaderMap::new();
        for (name, value) in
            [("x-ratelimit-limit", limit), ("x-ratelimit-remaining", remaining), ("x-ratelimit-reset", reset)]
        {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), value);
            }
        }
        headers
    })
}

/// Runs every reader over one answer.
fn read_everything(status: u16, headers: &HeaderMap, body: &[u8]) {
    let Ok(status) = StatusCode::from_u16(status) else { return };
    let rate_limit = RateLimit::from_headers(headers);
    for operation in OPERATIONS {
        let outcome: Result<Answer<TaskStatus>, UpstreamError> = decode(operation, status, rate_limit, body);
        match outcome {
            Ok(task) => {
                let _ = convert::task(task.body, Utc::now());
            }
            Err(error) => {
                let status = error.to_status();
                let _ = errors::watch_upstream_failing(&error.to_status(), std::time::Duration::from_secs(60));
                assert!(!status.message().is_empty());
            }
        }
        if let Ok(export) = decode::<UserExport>(operation, status, rate_limit, body) {
            let _ = convert::user_export(export.body);
        }
        let _ = decode::<TaskCreated>(operation, status, rate_limit, body);
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(status in 100u16..600, headers in any_headers(), body in prop::collection::vec(any::<u8>(), 0..256)) {
        read_everything(status, &headers, &body);
    }

    #[test]
    fn arbitrary_json_never_panics(status in prop::sample::select(vec![200u16, 201, 301, 302, 307, 400, 401, 403, 404, 408, 429, 500, 503]), headers in any_headers(), value in any_json()) {
        read_everything(status, &headers, value.to_string().as_bytes());
    }

    #[test]
    fn task_shaped_json_never_panics(fields in prop::collection::btree_map(field_name(), any_json(), 0..10), status in prop::sample::select(vec!["waiting", "completed", "failed", "", "?"])) {
        let mut object: Map<String, Value> = fields.into_iter().collect();
        object.insert("task_id".into(), json!("t"));
        object.insert("status".into(), json!(status));
        read_everything(200, &HeaderMap::new(), Value::Object(object).to_string().as_bytes());
    }

    #[test]
    fn truncated_answers_never_panic(cut in 0usize..200) {
        let body = json!({"task_id": "t", "status": "completed", "created_at": "2021-02-17T08:17:49.745857Z",
            "result": {"url": "http://h/f?Expires=1700000000&Signature=ab", "path": "f"}, "duration": "1.00ms"}).to_string();
        let cut = cut.min(body.len());
        read_everything(200, &HeaderMap::new(), &body.as_bytes()[..cut]);
    }
}

proptest! {
    // Each case builds and encodes statuses of up to 150 long violations: fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever error upstream sends (long messages in any script, many long field errors of
    /// any length), the status fits the 8 KiB of metadata common clients accept and says how
    /// many field errors it left out.
    #[test]
    fn any_upstream_error_fits_a_clients_metadata_limit(
        status in prop::sample::select(vec![302u16, 400, 403, 404, 429, 500]),
        code in prop::option::of(0i64..100),
        message in prop_oneof![".{0,64}", "[é€😀x]{600,2000}"],
        fields in prop::collection::btree_map(".{0,300}", ".{0,300}", 0..150),
        operation in prop::sample::select(OPERATIONS.to_vec()),
    ) {
        let count = fields.len();
        let error = UpstreamError::Api { operation, status, code, message, exception_fields: fields, rate_limit: None };
        for status in [error.to_status(), errors::watch_upstream_failing(&error.to_status(), std::time::Duration::from_secs(60))] {
            let mut headers = reqwest::header::HeaderMap::new();
            status.add_header(&mut headers).expect("the status encodes");
            let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
            prop_assert!(bytes <= errors::size::METADATA_LIMIT_BYTES, "{} bytes", bytes);
            let details = status.get_error_details();
            if let (Some(bad), Some(info)) = (details.bad_request(), details.error_info()) {
                let dropped = info.metadata.get(errors::VIOLATIONS_DROPPED).map_or(0, |n| n.parse::<usize>().unwrap());
                let shown = bad.field_violations.len() - usize::from(dropped > 0);
                prop_assert_eq!(shown + dropped, count);
            }
        }
    }
}

/// Reads an export file, cut into chunks of `chunk` bytes, as ReadExport does, in both
/// encodings (which must agree): the records' kinds, and whether it read OK.
fn read_export_file(file: &[u8], chunk: usize, max_entity_bytes: usize) -> (Vec<String>, bool) {
    use stream_export::export_file::Encoding;
    let as_structs = read_export_file_as(file, chunk, max_entity_bytes, Encoding::Struct);
    let as_json = read_export_file_as(file, chunk, max_entity_bytes, Encoding::Json);
    assert_eq!(as_json, as_structs, "the JSON and Struct encodings give the same records");
    as_structs
}

fn read_export_file_as(
    file: &[u8],
    chunk: usize,
    max_entity_bytes: usize,
    encoding: stream_export::export_file::Encoding,
) -> (Vec<String>, bool) {
    use stream_export::export_file::{ReadLimits, Sink, read};
    let chunks: Vec<std::io::Result<bytes::Bytes>> =
        file.chunks(chunk.max(1)).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
    let limits = ReadLimits { max_entity_bytes, ..ReadLimits::default() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (sender, mut receiver) = tokio::sync::mpsc::channel(1 << 16);
    let mut sink = Sink::new(0, encoding, sender, std::time::Duration::from_secs(5));
    let outcome = runtime.block_on(read(futures::stream::iter(chunks), &mut sink, &limits));
    drop(sink);
    let mut kinds = Vec::new();
    while let Ok(record) = receiver.try_recv() {
        if record.json.is_empty() {
            kinds.push(record.kind);
        }
        for json in &record.json {
            let line: Value = serde_json::from_slice(json).expect("a JSON record is JSON");
            assert!(line["item"].is_object(), "{line}");
            kinds.push(line["type"].as_str().expect("a type").to_owned());
        }
    }
    (kinds, outcome.is_ok())
}

/// A V1 channel block of generated entities, and the record kinds it stands for.
fn channel_block() -> impl Strategy<Value = (Value, Vec<&'static str>)> {
    let object = || {
        prop::collection::btree_map(field_name(), any_json(), 0..4).prop_map(|m| Value::Object(m.into_iter().collect()))
    };
    (object(), prop::collection::vec(object(), 0..3), prop::collection::vec(object(), 0..3)).prop_map(
        |(channel, members, messages)| {
            let mut kinds = vec!["channel"];
            kinds.extend(members.iter().map(|_| "member"));
            for message in &messages {
                kinds.push("message");
                if let Some(Value::Array(reactions)) = message.get("latest_reactions") {
                    kinds.extend(reactions.iter().filter(|r| r.is_object()).map(|_| "reaction"));
                }
            }
            (json!({"channel": channel, "members": members, "messages": messages}), kinds)
        },
    )
}

proptest! {
    #[test]
    fn arbitrary_export_files_never_panic(file in prop::collection::vec(any::<u8>(), 0..256), chunk in 1usize..64) {
        read_export_file(&file, chunk, 64);
    }

    #[test]
    fn every_v1_shape_gives_the_same_records_however_it_is_chunked(blocks in prop::collection::vec(channel_block(), 1..4), chunk in 1usize..64) {
        let expected: Vec<String> = blocks.iter().flat_map(|(_, kinds)| kinds.iter().map(|k| k.to_string())).collect();
        let values: Vec<Value> = blocks.iter().map(|(block, _)| block.clone()).collect();
        let mut shapes = vec![json!({"channels": values}).to_string(), Value::Array(values.clone()).to_string()];
        if values.len() == 1 {
            shapes.push(values[0].to_string());
        }
        for shape in shapes {
            let (kinds, ok) = read_export_file(shape.as_bytes(), chunk, 1 << 20);
            prop_assert!(ok, "{}", shape);
            prop_assert_eq!(&kinds, &expected, "{}", shape);
            // Any cut before the end is an error, never a complete export.
            let cut = 1 + chunk % (shape.len() - 1);
            let (_, ok) = read_export_file(&shape.as_bytes()[..cut], chunk, 1 << 20);
            prop_assert!(!ok, "a cut document read OK: {}", &shape[..cut]);
        }
    }

    #[test]
    fn a_line_or_entity_over_the_cap_is_refused(length in 100usize..400) {
        let long = "y".repeat(length);
        let line = format!("{{\"type\":\"user\",\"item\":{{\"id\":\"{long}\"}}}}\n");
        prop_assert!(!read_export_file(line.as_bytes(), 16, 64).1);
        let document = format!("{{\"users\": [{{\"id\": \"{long}\"}}]}}");
        prop_assert!(!read_export_file(document.as_bytes(), 16, 64).1);
    }
}
