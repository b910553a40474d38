//! Graceful drain of the real binary on SIGTERM: health turns NOT_SERVING, watch streams end
//! as resumable interruptions, the unary call in flight finishes, new connections are refused,
//! and the process exits within `--shutdown-grace` although a client holds a stream open.

use crate::common;

use std::time::{Duration, Instant};

use common::{API_KEY, API_SECRET, TestEmulator, assert_status, process::ServiceProcess};
use serde_json::json;
use stream_export::{
    emulator::{
        EmulatorConfig,
        data::{KNOWN_CHANNEL, KNOWN_USER},
    },
    proto::{
        ChannelRef, ExportChannelsRequest, ExportUserRequest, ReadExportRequest, WatchTaskRequest,
        export_service_client::ExportServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

#[tokio::test]
async fn sigterm_drains_and_exits_within_the_grace_period() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let base_url = emulator.base_url();
    let mut service = ServiceProcess::start(
        &["--shutdown-grace", "3s"],
        &[("STREAM_BASE_URL", &base_url), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET)],
    );
    service.wait_ready(true).await;
    let channel = service.channel().await;
    let mut client = ExportServiceClient::new(channel.clone());

    // A health watcher: its stream never ends by itself, so only the grace period stops it.
    let mut health = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest { service: "streamexport.v1.ExportService".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.next().await.unwrap().unwrap().status(), ServingStatus::Serving);

    // Two watchers of a task that will not finish.
    let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
    let request = ExportChannelsRequest {
        channels: vec![ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }],
        ..Default::default()
    };
    let task_id = client.export_channels(request).await.unwrap().into_inner().task_id;
    emulator.steer(&task_id, json!({"hold": true})).await;
    let mut watches = Vec::new();
    for _ in 0..2 {
        let mut stream = client.watch_task(WatchTaskRequest { task_id: task_id.clone() }).await.unwrap().into_inner();
        stream.next().await.unwrap().unwrap();
        watches.push(stream);
    }

    // A unary call in flight when the signal comes.
    emulator.inject("export_user", 1, json!({"kind": "delay", "ms": 1500})).await;
    let mut unary_client = client.clone();
    let in_flight =
        tokio::spawn(async move { unary_client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let signalled = Instant::now();
    service.terminate();

    let next_health = tokio::time::timeout(Duration::from_secs(2), health.next()).await.expect("health changes");
    assert_eq!(next_health.unwrap().unwrap().status(), ServingStatus::NotServing);
    for mut stream in watches {
        let end = tokio::time::timeout(Duration::from_secs(2), stream.next()).await.expect("the watch ends");
        let status = end.expect("a final status").expect_err("an interruption, not an event");
        assert_status(&status, Code::Unavailable, "WATCH_INTERRUPTED");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let refused = tonic::transport::Endpoint::from_shared(service.url("http")).unwrap().connect().await;
    assert!(refused.is_err(), "new connections are refused while draining");

    let answer = in_flight.await.unwrap();
    assert!(answer.is_ok(), "the unary call in flight finishes: {answer:?}");

    let exit = service.wait_exit(Duration::from_secs(6)).await;
    let elapsed = signalled.elapsed();
    let log = service.log();
    assert!(exit.is_some_and(|status| status.success()), "exit {exit:?}; log:\n{log}");
    assert!(elapsed < Duration::from_millis(4500), "exited {elapsed:?} after SIGTERM with a 3 s grace; log:\n{log}");
    assert!(log.contains("shutdown grace elapsed"), "the held health stream needed the grace period; log:\n{log}");
    drop(health);
}

#[tokio::test]
async fn read_export_streams_open_at_the_end_of_the_grace_end_resumable_with_next_index() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let base_url = emulator.base_url();
    let mut service = ServiceProcess::start(
        &["--shutdown-grace", "4s"],
        &[("STREAM_BASE_URL", &base_url), ("STREAM_API_KEY", API_KEY), ("STREAM_API_SECRET", API_SECRET)],
    );
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let created = emulator
        .control(
            reqwest::Method::POST,
            "synthetic_exports",
            Some(json!({"records": 1_000_000, "version": "v2", "record_bytes": 512})),
        )
        .await;
    let request = ReadExportRequest {
        task_id: created["task_id"].as_str().unwrap().into(),
        start_index: 0,
        ..Default::default()
    };
    let mut stream = client.read_export(request).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().index, 0);

    // A paused reader: it reads again only when the drain ends the stream, 1 s before the 4 s
    // grace closes the connections; that second is the time it has to read what was buffered and
    // the status (with a 2 s grace it had 0.3 s, which a loaded machine sometimes overslept).
    service.terminate();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut received = 1u64;
    let status = loop {
        match stream.message().await {
            Ok(Some(record)) => {
                assert_eq!(record.index, received);
                received += 1;
            }
            Ok(None) => panic!("the export cannot have been read whole during the drain ({received} records)"),
            Err(status) => break status,
        }
    };
    let details = assert_status(&status, Code::Unavailable, "SHUTTING_DOWN");
    let next: u64 = details.error_info().unwrap().metadata["next_index"].parse().unwrap();
    assert_eq!(next, received, "next_index is the first record not delivered");
    assert!(service.wait_exit(Duration::from_secs(5)).await.is_some(), "the process exits");
}
