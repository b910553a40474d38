//! Security of the real binary: caller authentication, TLS and mutual TLS, the audit log's
//! caller identity, and secrets (API secret, server JWT, signed URLs) never in logs or errors.

use crate::common;

use std::{path::PathBuf, time::Duration};

use common::{API_KEY, API_SECRET, TestEmulator, pki::Pki, process::ServiceProcess, server_token};

use serde_json::json;
use stream_export::{
    emulator::{
        EmulatorConfig,
        data::{HEAVY_USER, KNOWN_CHANNEL, KNOWN_USER},
    },
    proto::{
        ChannelRef, ExportChannelsRequest, ExportUserRequest, ExportUsersRequest, GetTaskRequest, TaskState,
        WatchTaskRequest, export_service_client::ExportServiceClient,
    },
};
use tokio_stream::StreamExt;
use tonic::{
    Code, Request,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const BILLING_TOKEN: &str = "billing-token-0123456789abcdef";
const EXPORTS_TOKEN: &str = "exports-token-fedcba9876543210";

/// A scratch directory for this test binary's files.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("stream-export-security-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn upstream_env(emulator: &TestEmulator) -> Vec<(&'static str, String)> {
    vec![
        ("STREAM_BASE_URL", emulator.base_url()),
        ("STREAM_API_KEY", API_KEY.into()),
        ("STREAM_API_SECRET", API_SECRET.into()),
        ("RUST_LOG", "info".into()),
    ]
}

fn start(args: &[&str], env: &[(&'static str, String)]) -> ServiceProcess {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    ServiceProcess::start(args, &env)
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn users(request_id: &str) -> ExportUsersRequest {
    ExportUsersRequest { user_ids: vec![KNOWN_USER.into()], request_id: request_id.into() }
}

/// The log lines of the audit target.
fn audit_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|line| line.contains(" audit:")).collect()
}

#[tokio::test]
async fn bearer_tokens_guard_the_export_service_and_name_the_caller() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let tokens = scratch("tokens").join("tokens");
    std::fs::write(&tokens, format!("# callers\nbilling {BILLING_TOKEN}\nexports {EXPORTS_TOKEN}\n")).unwrap();
    let service = start(&["--auth-tokens-file", tokens.to_str().unwrap()], &upstream_env(&emulator));
    service.wait_ready(true).await;
    let channel = service.channel().await;
    let mut client = ExportServiceClient::new(channel.clone());

    let missing = client.export_users(users("")).await.unwrap_err();
    common::assert_status(&missing, Code::Unauthenticated, "UNAUTHENTICATED");
    let wrong = client.export_users(with_token(users(""), "not-a-valid-token-at-all")).await.unwrap_err();
    common::assert_status(&wrong, Code::Unauthenticated, "UNAUTHENTICATED");
    assert!(HealthClient::new(channel.clone()).check(HealthCheckRequest::default()).await.is_ok(), "health stays open");
    // The scheme is case-insensitive (RFC 6750): clients that send `bearer` are let in.
    for scheme in ["bearer", "BEARER"] {
        let mut request = Request::new(users(""));
        request.metadata_mut().insert("authorization", format!("{scheme} {BILLING_TOKEN}").parse().unwrap());
        client.export_users(request).await.unwrap_or_else(|status| panic!("scheme {scheme}: {status:?}"));
    }

    // One request_id, two callers: two different exports (keys are per caller).
    let request_id = uuid::Uuid::new_v4().to_string();
    let billing = client.export_users(with_token(users(&request_id), BILLING_TOKEN)).await.unwrap().into_inner();
    let exports = client.export_users(with_token(users(&request_id), EXPORTS_TOKEN)).await.unwrap().into_inner();
    assert_ne!(billing.task_id, exports.task_id);
    let again = client.export_users(with_token(users(&request_id), BILLING_TOKEN)).await.unwrap().into_inner();
    assert_eq!(again.task_id, billing.task_id);
    assert_eq!(emulator.exports_created().await, 4);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = service.log();
    let audit = audit_lines(&log);
    let billing_line = audit.iter().find(|line| line.contains(&billing.task_id)).expect("an audit line for the task");
    for expected in ["caller=billing", "rpc=\"ExportUsers\"", "users=\"user-01\"", "code=\"OK\""] {
        assert!(billing_line.contains(expected), "{expected} missing in {billing_line}");
    }
    assert!(audit.iter().any(|line| line.contains("caller=exports") && line.contains(&exports.task_id)));
    assert!(!log.contains(BILLING_TOKEN) && !log.contains(EXPORTS_TOKEN), "tokens never reach the log");
}

async fn tls_channel(port: u16, pki: &Pki, with_client_cert: bool) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");
    if with_client_cert {
        tls = tls.identity(Identity::from_pem(&pki.client.0, &pki.client.1));
    }
    Endpoint::from_shared(format!("https://127.0.0.1:{port}"))?.tls_config(tls)?.connect().await
}

#[tokio::test]
async fn mutual_tls_admits_certified_clients_and_audits_their_subject() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let pki = Pki::new("batch-job");
    let dir = scratch("tls");
    let file = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (cert, key, ca) =
        (file("server.pem", &pki.server.0), file("server.key", &pki.server.1), file("ca.pem", &pki.ca));
    let service = start(&["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca], &upstream_env(&emulator));
    service.wait_ready(false).await;

    let mut channel = None;
    for _ in 0..50 {
        if let Ok(connected) = tls_channel(service.port, &pki, true).await {
            channel = Some(connected);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut client = ExportServiceClient::new(channel.expect("a certified client connects"));
    client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.expect("calls work over mTLS");

    let anonymous = match tls_channel(service.port, &pki, false).await {
        Ok(channel) => HealthClient::new(channel).check(HealthCheckRequest::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!anonymous, "a client without a certificate is refused");
    let plain = match Endpoint::from_shared(service.url("http")).unwrap().connect().await {
        Ok(channel) => HealthClient::new(channel).check(HealthCheckRequest::default()).await.is_ok(),
        Err(_) => false,
    };
    assert!(!plain, "plain text is refused on a TLS port");

    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = service.log();
    let audit = audit_lines(&log);
    assert!(
        audit.iter().any(|line| line.contains("CN=batch-job") && line.contains("MtlsPeer")),
        "the audit log names the mTLS peer:\n{log}"
    );
}

#[tokio::test]
async fn forwarded_client_certificates_are_believed_only_when_trusted() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    // What an Envoy in APPEND_FORWARD mode passes on: the client's own (forged) header, then the
    // element the sidecar wrote for the certificate it verified, last.
    let forged = r#"By=spiffe://cluster.local/ns/exports/sa/stream-export;Subject="CN=admin,O=Acme";URI=spiffe://cluster.local/ns/ops/sa/admin"#;
    let verified = r#"By=spiffe://cluster.local/ns/exports/sa/stream-export;Hash=abc;Subject="CN=mesh-client,O=Acme";URI=spiffe://cluster.local/ns/jobs/sa/mesh-client"#;
    let xfcc = format!("{forged},{verified}");
    for (trusted, expected) in [(true, "caller=CN=mesh-client,O=Acme"), (false, "caller=anonymous")] {
        let args: &[&str] = if trusted { &["--trust-forwarded-client-cert"] } else { &[] };
        let service = start(args, &upstream_env(&emulator));
        service.wait_ready(true).await;
        let mut client = ExportServiceClient::new(service.channel().await);
        let mut request = Request::new(ExportUserRequest { user_id: KNOWN_USER.into() });
        request.metadata_mut().insert("x-forwarded-client-cert", xfcc.parse().unwrap());
        client.export_user(request).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let log = service.log();
        let audit = audit_lines(&log);
        assert!(audit.iter().any(|line| line.contains(expected)), "{expected} expected in:\n{log}");
        assert!(!audit.iter().any(|line| line.contains("CN=admin")), "the forged element is never believed:\n{log}");
    }
}

#[tokio::test]
async fn secrets_never_appear_in_debug_logs_or_errors() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let mut env = upstream_env(&emulator);
    env.retain(|(key, _)| *key != "RUST_LOG");
    env.push(("RUST_LOG", "debug".into()));
    let service = start(&[], &env);
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let mut messages = Vec::new();
    let mut urls = Vec::new();

    // Every path: submits, a watch to completion, reads of a completed task, exports, errors.
    let (kind, id) = KNOWN_CHANNEL.split_once(':').unwrap();
    let request = ExportChannelsRequest {
        channels: vec![ChannelRef { r#type: kind.into(), id: id.into(), ..Default::default() }],
        request_id: uuid::Uuid::new_v4().to_string(),
        ..Default::default()
    };
    let task_id = client.export_channels(request).await.unwrap().into_inner().task_id;
    let mut events = client.watch_task(WatchTaskRequest { task_id: task_id.clone() }).await.unwrap().into_inner();
    while let Some(event) = events.next().await {
        let task = event.unwrap().task.unwrap();
        if task.state() == TaskState::Completed {
            urls.push(task.result.unwrap().url);
        }
    }
    let read = client.get_task(GetTaskRequest { task_id: task_id.clone() }).await.unwrap().into_inner();
    urls.push(read.result.unwrap().url);
    client.export_users(users(&uuid::Uuid::new_v4().to_string())).await.unwrap();
    client.export_user(ExportUserRequest { user_id: KNOWN_USER.into() }).await.unwrap();
    for fault in [
        json!({"kind": "status", "status": 429, "code": 9, "message": "slow down"}),
        json!({"kind": "status", "status": 500, "code": -1, "message": "boom"}),
        json!({"kind": "malformed_json"}),
        json!({"kind": "drop"}),
    ] {
        emulator.inject("get_task", 3, fault).await;
        messages
            .push(client.get_task(GetTaskRequest { task_id: task_id.clone() }).await.unwrap_err().message().to_owned());
        emulator.clear_faults().await;
    }
    messages
        .push(client.export_user(ExportUserRequest { user_id: HEAVY_USER.into() }).await.unwrap_err().message().into());

    // A service with the wrong secret: the start-up check finds it, and the process stops.
    let mut wrong = env.clone();
    wrong.retain(|(key, _)| *key != "STREAM_API_SECRET");
    wrong.push(("STREAM_API_SECRET", "wrong-secret-0123456789abcdef0123456789".into()));
    let mut misconfigured = start(&[], &wrong);
    let exit = misconfigured.wait_exit(Duration::from_secs(20)).await.expect("a rejected secret stops start-up");
    assert!(!exit.success());

    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = format!("{}\n{}", service.log(), misconfigured.log());
    assert!(logs.contains("DEBUG"), "the logs were captured at debug level");
    let signatures: Vec<String> = urls
        .iter()
        .map(|url| url::Url::parse(url).unwrap())
        .filter_map(|url| url.query_pairs().find(|(k, _)| k == "Signature").map(|(_, v)| v.into_owned()))
        .collect();
    assert_eq!(signatures.len(), 2, "the URLs are signed: {urls:?}");
    let secrets = [API_SECRET.to_owned(), server_token(API_SECRET), "wrong-secret-0123456789abcdef0123456789".into()]
        .into_iter()
        .chain(signatures)
        .chain(urls);
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret reached the logs: {secret}");
        assert!(messages.iter().all(|m| !m.contains(&secret)), "a secret reached an error message: {secret}");
    }
}
