//! Fleet mode's Redis connection (issue 32): no call waits longer than its second, a TLS
//! handshake that fails says so, a refused command is no outage, and the eviction policy is
//! checked at the first connection.

use std::time::{Duration, Instant};

use stream_export::{
    emulator::EmulatorConfig,
    proto::{ChannelRef, ExportChannelsRequest},
};
use tonic::Code;

use crate::{
    common::{
        API_KEY, API_SECRET, TestEmulator, assert_status,
        pki::Pki,
        process::ServiceProcess,
        redis::{RedisCluster, RedisServer},
    },
    fleet::{client, replicas_with},
    fleet_watch::{held_task, next, relay_delay, watch as watch_task},
};

/// A submit that needs the fleet store (it has a `request_id`).
fn deduplicated() -> ExportChannelsRequest {
    ExportChannelsRequest {
        channels: vec![ChannelRef { r#type: "messaging".into(), id: "general".into(), ..Default::default() }],
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    }
}

/// Waits (at most 10 s) until `replica`'s log holds `words`, and returns the log.
async fn log_with(replica: &ServiceProcess, words: &str) -> String {
    let started = Instant::now();
    loop {
        let log = replica.log();
        if log.contains(words) {
            return log;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no {words:?} in the log:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn no_call_waits_longer_than_a_second_for_a_redis_that_never_answers() {
    const PASSWORD: &str = "silent-redis-password-0123456789";
    // Accepts connections and never answers: every connect attempt lasts until its timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let port = silent.local_addr().expect("an address").port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            sockets.push(socket);
        }
    });
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let replica = replicas_with(1, &emulator, &url, &[]).await.remove(0);
    let mut service = client(&replica).await;

    // Calls at every moment of the connect attempts (each takes up to a second, then a second
    // of failing at once): none may queue behind an attempt for longer than a call's second.
    let mut calls = Vec::new();
    for _ in 0..24 {
        let mut service = service.clone();
        calls.push(tokio::spawn(async move {
            let started = Instant::now();
            let outcome = service.export_channels(deduplicated()).await;
            (started.elapsed(), outcome)
        }));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut slowest = Duration::ZERO;
    for call in calls {
        let (took, outcome) = call.await.expect("the call ran");
        let refused = outcome.expect_err("no Redis, no deduplicated submit");
        assert_status(&refused, Code::Unavailable, "IDEMPOTENCY_STORE_UNAVAILABLE");
        slowest = slowest.max(took);
    }
    assert!(slowest < Duration::from_millis(1_400), "a call waited {slowest:?} for Redis, more than its second");
    assert_eq!(emulator.exports_created().await, 0, "nothing was sent upstream");
    // What does not need Redis is not slowed down.
    let started = Instant::now();
    service
        .export_channels(ExportChannelsRequest { request_id: String::new(), ..deduplicated() })
        .await
        .expect("a submit");
    assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
    let log = replica.log();
    assert!(!log.contains(PASSWORD), "the Redis password leaked into the log:\n{log}");
    assert_eq!(log.matches("the fleet store (Redis) is unavailable").count(), 1, "one line per outage:\n{log}");
    held.abort();
}

#[tokio::test]
async fn a_failed_tls_handshake_is_logged_as_one_without_the_url() {
    const PASSWORD: &str = "tls-redis-password-0123456789";
    // A Redis whose certificate no public CA signed: the handshake fails.
    let pki = Pki::new("unused");
    let files = std::env::temp_dir().join(format!("stream-export-redis-tls-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&files).expect("a directory");
    let (certificate, key) = (files.join("server.pem"), files.join("server.key"));
    std::fs::write(&certificate, &pki.server.0).expect("written");
    std::fs::write(&key, &pki.server.1).expect("written");
    let redis = RedisServer::start_tls(Some(PASSWORD), &certificate, &key).await;
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let url = format!("rediss://:{PASSWORD}@localhost:{}", redis.port);
    let replica = replicas_with(1, &emulator, &url, &[]).await.remove(0);
    let refused = client(&replica).await.export_channels(deduplicated()).await.expect_err("no Redis");
    assert_status(&refused, Code::Unavailable, "IDEMPOTENCY_STORE_UNAVAILABLE");

    let log = log_with(&replica, "TLS handshake with Redis failed: ").await;
    let _ = std::fs::remove_dir_all(&files);
    assert!(log.contains("certificate"), "the handshake's error is told:\n{log}");
    assert!(!log.contains(PASSWORD), "the Redis password leaked into the log:\n{log}");
    assert!(!log.contains(&format!("localhost:{}", redis.port)), "the Redis URL is in the log:\n{log}");
    assert!(!log.contains("cannot reach Redis"), "a TLS failure is not an unreachable Redis:\n{log}");
}

#[tokio::test]
async fn a_refused_command_fails_its_call_but_is_no_outage() {
    // Redis is full (and evicts nothing): it answers, and refuses every write with OOM.
    let full = RedisServer::start_with(None, &["--maxmemory", "1", "--maxmemory-policy", "noeviction"]).await;
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let replica = replicas_with(1, &emulator, &full.url(), &[]).await.remove(0);
    let mut service = client(&replica).await;
    for _ in 0..3 {
        let refused = service.export_channels(deduplicated()).await.expect_err("Redis refuses the claim");
        assert_status(&refused, Code::Unavailable, "IDEMPOTENCY_STORE_UNAVAILABLE");
        tokio::time::sleep(Duration::from_millis(700)).await; // heartbeats refused meanwhile
    }
    assert_eq!(emulator.exports_created().await, 0, "nothing was sent upstream");

    let log = log_with(&replica, "Redis refused a command").await;
    assert!(!log.contains("the fleet store (Redis) is unavailable"), "a refusal is no outage:\n{log}");
    assert_eq!(log.matches("Redis refused a command").count(), 1, "logged once per kind, not per call:\n{log}");
    assert!(log.contains("OOM"), "the refusal's kind is logged:\n{log}");
    assert!(!log.contains("maxmemory-policy"), "noeviction is what the fleet needs:\n{log}");
}

#[tokio::test]
async fn the_first_connection_warns_when_redis_may_evict_the_fleets_keys() {
    let evicting = RedisServer::start_with(None, &["--maxmemory-policy", "allkeys-lru"]).await;
    let managed = RedisServer::start_with(None, &["--rename-command", "CONFIG", ""]).await;
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let warned = replicas_with(1, &emulator, &evicting.url(), &[]).await.remove(0);
    let unchecked = replicas_with(1, &emulator, &managed.url(), &[]).await.remove(0);

    let log = log_with(&warned, "Redis may evict the fleet's keys").await;
    assert!(log.contains("allkeys-lru"), "the policy found is named:\n{log}");
    let log = log_with(&unchecked, "maxmemory-policy could not be checked").await;
    assert!(!log.contains("Redis may evict"), "{log}");
    // The rest works: the checks only warn.
    for replica in [&warned, &unchecked] {
        client(replica).await.export_channels(deduplicated()).await.expect("fleet mode works");
    }
}

#[tokio::test]
async fn a_redis_cluster_serves_the_fleet_whichever_slots_its_keys_hash_to() {
    const PASSWORD: &str = "cluster-redis-password-0123456789";
    let cluster = RedisCluster::start(3, PASSWORD).await;
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    // Followers would read a view only every 5 s unless changes are announced.
    let settings = [("STREAM_EXPORT_WATCH_FLEET_FOLLOW_INTERVAL", "5s"), ("STREAM_EXPORT_WATCH_POLL_MIN", "100ms")];
    let fleet = replicas_with(2, &emulator, &cluster.url(), &settings).await;

    // Nine request ids spread over the three nodes' slots; each repeat on the other replica
    // finds its task.
    for _ in 0..9 {
        let request = deduplicated();
        let first = client(&fleet[0]).await.export_channels(request.clone()).await.expect("a submit").into_inner();
        let repeat = client(&fleet[1]).await.export_channels(request).await.expect("a repeat").into_inner();
        assert_eq!(first.task_id, repeat.task_id, "one task for one request_id");
    }
    assert_eq!(emulator.exports_created().await, 9, "one upstream export per request_id");
    let listed = client(&fleet[1])
        .await
        .list_tasks(stream_export::proto::ListTasksRequest { page_size: 20, page_token: String::new() })
        .await
        .expect("ListTasks")
        .into_inner();
    assert_eq!(listed.tasks.len(), 9, "the registry holds every task");
    // A watch (leases, views and the budget, in the cluster too) follows a task to its end.
    let mut watch = client(&fleet[0])
        .await
        .watch_task(stream_export::proto::WatchTaskRequest { task_id: listed.tasks[0].task_id.clone() })
        .await
        .expect("WatchTask")
        .into_inner();
    while let Some(event) = tokio_stream::StreamExt::next(&mut watch).await {
        event.expect("the watch ends OK");
    }
    // Changes are announced on a cluster too: a change polled on one replica reaches the
    // other's watcher at once, not at its next read.
    let held = held_task(&fleet[0], &emulator).await;
    let mut polling = watch_task(&fleet[0], &held).await;
    next(&mut polling).await.expect("the snapshot, where it is polled");
    let mut following = watch_task(&fleet[1], &held).await;
    next(&mut following).await.expect("the snapshot, on the other replica");
    let running = stream_export::proto::TaskState::Running;
    let delay = relay_delay(&emulator, &held, running, &mut polling, &mut following).await;
    assert!(delay <= Duration::from_millis(300), "the change reached the other replica {delay:?} later");
    for replica in &fleet {
        let log = replica.log();
        assert!(!log.contains("the fleet store (Redis) is unavailable"), "no outage on a cluster:\n{log}");
        assert!(!log.contains("Redis refused a command"), "no refused command on a cluster:\n{log}");
        assert!(!log.contains(PASSWORD), "the Redis password leaked into the log:\n{log}");
    }
}
