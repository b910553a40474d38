//! The fault matrix: every kind of upstream failure against every unary RPC. Each cell checks
//! the gRPC code and reason, how many requests reached upstream (GETs are retried, submits are
//! never re-sent once they may have reached Stream), and that no export was created twice.

use crate::common;

use std::time::Duration;

use common::{TestApp, assert_status, spawn_app};
use serde_json::{Value, json};
use stream_export::{
    emulator::data::{KNOWN_CHANNEL, KNOWN_USER},
    proto::{ChannelRef, ExportChannelsRequest, ExportUserRequest, ExportUsersRequest, GetTaskRequest},
};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// Attempts per idempotent call: the first and two retries.
const GET_ATTEMPTS: u64 = 3;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Rpc {
    ExportChannels,
    ExportUsers,
    ExportUser,
    GetTask,
}

impl Rpc {
    const ALL: [Rpc; 4] = [Rpc::ExportChannels, Rpc::ExportUsers, Rpc::ExportUser, Rpc::GetTask];

    fn route(self) -> &'static str {
        match self {
            Rpc::ExportChannels => "export_channels",
            Rpc::ExportUsers => "export_users",
            Rpc::ExportUser => "export_user",
            Rpc::GetTask => "get_task",
        }
    }

    fn is_submit(self) -> bool {
        matches!(self, Rpc::ExportChannels | Rpc::ExportUsers)
    }

    /// Calls the RPC with an optional deadline.
    async fn call(self, app: &TestApp, task_id: &str, timeout: Option<Duration>) -> Result<(), Status> {
        fn with_timeout<T>(message: T, timeout: Option<Duration>) -> Request<T> {
            let mut request = Request::new(message);
            if let Some(timeout) = timeout {
                request.set_timeout(timeout);
            }
            request
        }
        let mut client = app.client.clone();
        let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
        match self {
            Rpc::ExportChannels => {
                let channel = ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() };
                let message = ExportChannelsRequest { channels: vec![channel], ..Default::default() };
                client.export_channels(with_timeout(message, timeout)).await.map(drop)
            }
            Rpc::ExportUsers => {
                let message = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
                client.export_users(with_timeout(message, timeout)).await.map(drop)
            }
            Rpc::ExportUser => {
                let message = ExportUserRequest { user_id: KNOWN_USER.into() };
                client.export_user(with_timeout(message, timeout)).await.map(drop)
            }
            Rpc::GetTask => {
                let message = GetTaskRequest { task_id: task_id.into() };
                client.get_task(with_timeout(message, timeout)).await.map(drop)
            }
        }
    }
}

/// What a cell expects.
struct Expect {
    outcome: Result<(), (Code, &'static str)>,
    upstream_requests: u64,
    /// Most export tasks the emulator may have created (submits only).
    max_exports: u64,
}

/// One row of the matrix: a fault (injected `count` times) and what each RPC gets.
struct Row {
    name: &'static str,
    fault: Value,
    count: u32,
    timeout: Option<Duration>,
    expect: fn(Rpc) -> Expect,
    /// More to check on the status, if anything.
    check: Option<StatusCheck>,
}

/// A further check of a cell's status: what is wrong with it, if anything.
type StatusCheck = fn(&Status) -> Result<(), String>;

/// A status that fits the 8 KiB of metadata common clients accept, and says what it dropped.
fn fits_metadata_limit(status: &Status) -> Result<(), String> {
    let mut headers = http::HeaderMap::new();
    status.add_header(&mut headers).map_err(|error| format!("does not encode: {error:?}"))?;
    let bytes: usize = headers.iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    let dropped =
        status.get_error_details().error_info().and_then(|info| info.metadata.get("violations_dropped").cloned());
    match (bytes <= 8 * 1024, dropped) {
        (true, Some(_)) => Ok(()),
        (fits, dropped) => Err(format!("{bytes} bytes of trailers (fits: {fits}), violations_dropped {dropped:?}")),
    }
}

fn rows() -> Vec<Row> {
    const UNAVAILABLE: (Code, &str) = (Code::Unavailable, "UPSTREAM_UNAVAILABLE");
    const BROKEN: (Code, &str) = (Code::Unavailable, "UPSTREAM_CONNECTION_FAILED");
    const LIMITED: (Code, &str) = (Code::ResourceExhausted, "UPSTREAM_RATE_LIMITED");
    const TOO_LARGE: (Code, &str) = (Code::Internal, "UPSTREAM_RESPONSE_TOO_LARGE");
    vec![
        Row {
            name: "redirect (to the same request)",
            fault: json!({"kind": "redirect", "status": 302}),
            count: 100,
            timeout: None,
            check: None,
            // Not followed: one request, whatever the RPC.
            expect: |_| Expect {
                outcome: Err((Code::Internal, "UPSTREAM_REDIRECTED")),
                upstream_requests: 1,
                max_exports: 0,
            },
        },
        Row {
            name: "oversized body (40 MB)",
            fault: json!({"kind": "oversize", "bytes": 40_000_000}),
            count: 100,
            timeout: None,
            check: None,
            expect: |rpc| Expect {
                outcome: Err(if rpc == Rpc::ExportUser {
                    (Code::FailedPrecondition, "USER_EXPORT_TOO_LARGE")
                } else {
                    TOO_LARGE
                }),
                upstream_requests: 1,
                max_exports: 0,
            },
        },
        Row {
            name: "huge 400 (256 KiB message, 5,000 field errors)",
            fault: json!({"kind": "status", "status": 400, "code": 4, "message": "m".repeat(256 * 1024), "exception_fields": 5000}),
            count: 100,
            timeout: None,
            check: Some(fits_metadata_limit),
            expect: |_| Expect {
                outcome: Err((Code::InvalidArgument, "UPSTREAM_INVALID_ARGUMENT")),
                upstream_requests: 1,
                max_exports: 0,
            },
        },
        Row {
            name: "5xx once",
            fault: json!({"kind": "status", "status": 503, "code": -1, "message": "down"}),
            count: 1,
            timeout: None,
            check: None,
            expect: |rpc| match rpc.is_submit() {
                true => Expect { outcome: Err(UNAVAILABLE), upstream_requests: 1, max_exports: 0 },
                false => Expect { outcome: Ok(()), upstream_requests: 2, max_exports: 0 },
            },
        },
        Row {
            name: "5xx always",
            fault: json!({"kind": "status", "status": 500, "code": -1, "message": "down"}),
            count: 100,
            timeout: None,
            check: None,
            expect: |rpc| Expect {
                outcome: Err(UNAVAILABLE),
                upstream_requests: if rpc.is_submit() { 1 } else { GET_ATTEMPTS },
                max_exports: 0,
            },
        },
        Row {
            name: "429 with reset",
            fault: json!({"kind": "status", "status": 429, "code": 9, "message": "Too many requests"}),
            count: 100,
            timeout: None,
            check: None,
            expect: |_| Expect { outcome: Err(LIMITED), upstream_requests: 1, max_exports: 0 },
        },
        Row {
            name: "non-JSON 429",
            fault: json!({"kind": "non_json", "status": 429, "body": "Too Many Requests"}),
            count: 100,
            timeout: None,
            check: None,
            expect: |_| Expect { outcome: Err(LIMITED), upstream_requests: 1, max_exports: 0 },
        },
        Row {
            name: "malformed JSON",
            fault: json!({"kind": "malformed_json"}),
            count: 100,
            timeout: None,
            check: None,
            // Upstream did the work (a task exists) but its answer cannot be read.
            expect: |rpc| Expect {
                outcome: Err((Code::Internal, "UPSTREAM_BAD_RESPONSE")),
                upstream_requests: 1,
                max_exports: u64::from(rpc.is_submit()),
            },
        },
        Row {
            name: "truncated body",
            fault: json!({"kind": "truncated"}),
            count: 1,
            timeout: None,
            check: None,
            expect: |rpc| match rpc.is_submit() {
                true => Expect { outcome: Err(BROKEN), upstream_requests: 1, max_exports: 1 },
                false => Expect { outcome: Ok(()), upstream_requests: 2, max_exports: 0 },
            },
        },
        Row {
            name: "connection dropped",
            fault: json!({"kind": "drop"}),
            count: 1,
            timeout: None,
            check: None,
            expect: |rpc| match rpc.is_submit() {
                true => Expect { outcome: Err(BROKEN), upstream_requests: 1, max_exports: 0 },
                false => Expect { outcome: Ok(()), upstream_requests: 2, max_exports: 0 },
            },
        },
        Row {
            name: "slow upstream past the deadline",
            fault: json!({"kind": "delay", "ms": 2000}),
            count: 100,
            timeout: Some(Duration::from_millis(500)),
            check: None,
            expect: |rpc| Expect {
                outcome: Err((Code::DeadlineExceeded, "DEADLINE_EXCEEDED")),
                upstream_requests: 1,
                max_exports: u64::from(rpc.is_submit()),
            },
        },
    ]
}

#[tokio::test]
async fn every_fault_against_every_rpc() {
    let mut failures = Vec::new();
    for rpc in Rpc::ALL {
        let app = spawn_app().await;
        let task_id = if rpc == Rpc::GetTask {
            let mut client = app.client.clone();
            let request = ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], ..Default::default() };
            client.export_users(request).await.unwrap().into_inner().task_id
        } else {
            String::new()
        };
        for row in rows() {
            app.emulator.clear_faults().await;
            app.emulator.reset_counters().await;
            app.emulator.inject(rpc.route(), row.count, row.fault.clone()).await;
            let expect = (row.expect)(rpc);
            let outcome = rpc.call(&app, &task_id, row.timeout).await;
            // A delayed request may still be running upstream; let it land before counting.
            tokio::time::sleep(Duration::from_millis(if row.timeout.is_some() { 1700 } else { 50 })).await;
            let cell = format!("{rpc:?} × {}", row.name);
            match (&outcome, expect.outcome) {
                (Ok(()), Ok(())) => {}
                (Err(status), Err((code, reason))) => {
                    let details = status.get_error_details();
                    let got_reason = details.error_info().map(|info| info.reason.as_str());
                    if status.code() != code || got_reason != Some(reason) {
                        failures.push(format!("{cell}: expected {code:?} {reason}, got {status:?}"));
                    } else if let Some(Err(problem)) = row.check.map(|check| check(status)) {
                        failures.push(format!("{cell}: {problem}"));
                    } else if code == Code::ResourceExhausted
                        && (details.retry_info().is_none() || details.quota_failure().is_none())
                    {
                        failures.push(format!("{cell}: RetryInfo and QuotaFailure expected: {status:?}"));
                    }
                }
                (got, want) => failures.push(format!("{cell}: expected {want:?}, got {got:?}")),
            }
            let requests = app.emulator.requests(rpc.route()).await;
            if requests != expect.upstream_requests {
                failures.push(format!("{cell}: {requests} upstream requests, expected {}", expect.upstream_requests));
            }
            let exports = app.emulator.exports_created().await;
            if exports > expect.max_exports {
                failures.push(format!("{cell}: {exports} exports created, at most {} allowed", expect.max_exports));
            }
        }
        app.stop().await;
    }
    assert!(failures.is_empty(), "fault matrix failures:\n{}", failures.join("\n"));
}

#[tokio::test]
async fn connection_refused_is_unavailable_for_every_rpc() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let app = common::spawn_app_with(common::Options {
        base_url_override: Some(format!("http://{closed}")),
        ..common::Options::default()
    })
    .await;
    for rpc in Rpc::ALL {
        let status =
            rpc.call(&app, "5b7d2d8c-1111-4222-8333-444455556666", None).await.expect_err("nothing listens upstream");
        assert_status(&status, Code::Unavailable, "UPSTREAM_UNREACHABLE");
    }
    app.stop().await;
}

/// Every download fault against ReadExport, for both file formats: the stream ends with the
/// status for the fault and `next_index`, and ends OK only when the whole file was read.
#[tokio::test]
async fn every_download_fault_against_read_export() {
    use stream_export::proto::{ExportFormatVersion, ReadExportRequest, TaskState};
    use tokio_stream::StreamExt;

    const DOWNLOAD_FAILED: Option<(Code, &str)> = Some((Code::Unavailable, "DOWNLOAD_FAILED"));
    const UNREADABLE: Option<(Code, &str)> = Some((Code::DataLoss, "EXPORT_UNREADABLE"));
    let long = "x".repeat(70_000);
    /// A fault, and the status it ends the stream with (`None`: OK).
    type ReadRow = (&'static str, Value, Option<(Code, &'static str)>);
    let rows: Vec<ReadRow> = vec![
        ("truncated body", json!({"kind": "truncated"}), DOWNLOAD_FAILED),
        ("connection dropped", json!({"kind": "drop"}), DOWNLOAD_FAILED),
        ("5xx", json!({"kind": "status", "status": 503, "code": -1, "message": "down"}), DOWNLOAD_FAILED),
        ("malformed JSON", json!({"kind": "malformed_json"}), UNREADABLE),
        (
            "top-level array of channel blocks",
            json!({"kind": "non_json", "status": 200, "body": r#"[{"channel": {"cid": "a:b"}, "messages": [{"id": "m"}]}]"#}),
            None,
        ),
        (
            "V1 document cut at a record boundary",
            json!({"kind": "non_json", "status": 200, "body": r#"{"channels": [{"channel": {"cid": "a:b"}}"#}),
            UNREADABLE,
        ),
        (
            "V2 line over the entity cap",
            json!({"kind": "non_json", "status": 200, "body": format!("{{\"type\":\"user\",\"item\":{{\"id\":\"{long}\"}}}}\n")}),
            UNREADABLE,
        ),
        (
            "V1 entity over the entity cap",
            json!({"kind": "non_json", "status": 200, "body": format!("{{\"users\": [{{\"id\": \"{long}\"}}]}}")}),
            UNREADABLE,
        ),
    ];
    let app = common::spawn_app_with(common::Options {
        tweak: Some(Box::new(|settings| settings.limits.reads.max_entity_bytes = 64 * 1024)),
        ..common::Options::default()
    })
    .await;
    let mut failures = Vec::new();
    for version in [ExportFormatVersion::V1, ExportFormatVersion::V2] {
        let mut client = app.client.clone();
        let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
        let request = ExportChannelsRequest {
            channels: vec![ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }],
            version: version as i32,
            ..Default::default()
        };
        let task_id = client.export_channels(request).await.unwrap().into_inner().task_id;
        for _ in 0..200 {
            let task = client.get_task(GetTaskRequest { task_id: task_id.clone() }).await.unwrap().into_inner();
            if task.state() == TaskState::Completed {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        for (name, fault, expected) in &rows {
            app.emulator.clear_faults().await;
            app.emulator.inject("download", 1, fault.clone()).await;
            let request = ReadExportRequest { task_id: task_id.clone(), start_index: 0, ..Default::default() };
            let (mut received, mut end) = (0u64, None);
            match client.read_export(request).await {
                Ok(response) => {
                    let mut stream = response.into_inner();
                    while let Some(item) = stream.next().await {
                        match item {
                            Ok(_) => received += 1,
                            Err(status) => {
                                end = Some(status);
                                break;
                            }
                        }
                    }
                }
                Err(status) => end = Some(status),
            }
            let cell = format!("{version:?} × {name}");
            match (end, expected) {
                (None, None) => {}
                (Some(status), Some((code, reason))) => {
                    let info = status.get_error_details().error_info().cloned();
                    let next = info.as_ref().and_then(|info| info.metadata.get("next_index").cloned());
                    if status.code() != *code || info.as_ref().map(|i| i.reason.as_str()) != Some(*reason) {
                        failures.push(format!("{cell}: expected {code:?} {reason}, got {status:?}"));
                    } else if next != Some(received.to_string()) {
                        failures.push(format!("{cell}: next_index {next:?} after {received} records"));
                    }
                }
                (got, want) => {
                    failures.push(format!("{cell}: expected {want:?}, got {got:?} after {received} records"))
                }
            }
        }
    }
    app.stop().await;
    assert!(failures.is_empty(), "ReadExport fault matrix failures:\n{}", failures.join("\n"));
}
