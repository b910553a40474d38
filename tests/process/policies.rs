//! Authorization policies in the real binary (issue 13): a policy file that does not parse or
//! validate stops start-up with exit code 2 and Cedar's message; SIGHUP reloads the file
//! without dropping streams (a bad new file is refused and the old set stays); a refusal is an
//! audit event naming the caller, the action and the resource.

use std::time::Duration;

use stream_export::{
    emulator::{EmulatorConfig, data::KNOWN_USER},
    proto::{ExportUserRequest, WatchTaskRequest, export_service_client::ExportServiceClient},
};
use tokio_stream::StreamExt;
use tonic::{Code, Request};

use crate::common::{API_KEY, API_SECRET, TestEmulator, process::ServiceProcess};

const PRIVACY_TOKEN: &str = "privacy-token-0123456789abcdef";

const PRIVACY_MAY_EXPORT_USERS: &str = r#"
permit (principal == Caller::"privacy", action == Action::"ExportUser", resource);
permit (principal, action == Action::"WatchTask", resource);
"#;

/// A scratch directory for one test's files.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("stream-export-policies-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn start(emulator: &TestEmulator, dir: &std::path::Path) -> ServiceProcess {
    std::fs::write(dir.join("tokens"), format!("privacy {PRIVACY_TOKEN}\n")).unwrap();
    let (tokens, policies) = (dir.join("tokens"), dir.join("policies.cedar"));
    let base_url = emulator.base_url();
    let env = [
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
        ("RUST_LOG", "info"),
        ("STREAM_EXPORT_AUTH_TOKENS_FILE", tokens.to_str().unwrap()),
        ("STREAM_EXPORT_POLICY_FILE", policies.to_str().unwrap()),
    ];
    ServiceProcess::start(&[], &env)
}

fn as_privacy<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {PRIVACY_TOKEN}").parse().unwrap());
    request
}

#[tokio::test]
async fn a_policy_file_that_does_not_validate_stops_start_up_with_exit_code_2() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let dir = scratch("invalid");
    std::fs::write(
        dir.join("policies.cedar"),
        r#"permit (principal, action == Action::"DeleteEverything", resource);"#,
    )
    .unwrap();
    let mut service = start(&emulator, &dir);
    let status = service.wait_exit(Duration::from_secs(20)).await.expect("the process exits");
    assert_eq!(status.code(), Some(2));
    let log = service.log();
    assert!(log.contains("STREAM_EXPORT_POLICY_FILE") && log.contains("DeleteEverything"), "{log}");
}

#[tokio::test]
async fn sighup_reloads_the_policies_without_dropping_streams_and_refusals_are_audited() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let dir = scratch("reload");
    std::fs::write(dir.join("policies.cedar"), PRIVACY_MAY_EXPORT_USERS).unwrap();
    let service = start(&emulator, &dir);
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let export = || as_privacy(ExportUserRequest { user_id: KNOWN_USER.into() });
    client.export_user(export()).await.expect("permitted");

    // A stream open across the reloads.
    let task_id = emulator.export_channels(serde_json::json!({"channels": [{"cid": "messaging:general"}]})).await;
    emulator.steer(&task_id, serde_json::json!({"hold": true})).await;
    let mut watch = client.watch_task(as_privacy(WatchTaskRequest { task_id })).await.expect("watch").into_inner();
    assert!(watch.next().await.expect("an event").is_ok());

    // A new file that takes the permission away: refused after SIGHUP.
    std::fs::write(dir.join("policies.cedar"), r#"permit (principal, action == Action::"WatchTask", resource);"#)
        .unwrap();
    service.hang_up();
    let mut refused = None;
    for _ in 0..50 {
        match client.export_user(export()).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(status) => {
                refused = Some(status);
                break;
            }
        }
    }
    let refused = refused.expect("the reloaded policies refuse the export");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A file that does not parse is refused; the policies in force stay.
    std::fs::write(dir.join("policies.cedar"), "permit (principal, action, resource").unwrap();
    service.hang_up();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(client.export_user(export()).await.expect_err("still refused").code(), Code::PermissionDenied);

    // The watch stream lived through both reloads.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = service.log();
    assert!(log.contains("SIGHUP: the policy file was reloaded"), "{log}");
    assert!(log.contains("SIGHUP: the new policy file was refused"), "{log}");
    let audit = log
        .lines()
        .find(|line| line.contains("audit: not authorized"))
        .unwrap_or_else(|| panic!("no audit event of the refusal:\n{log}"));
    for expected in ["privacy", "ExportUser", &format!("User::\\\"{KNOWN_USER}\\\"")] {
        assert!(audit.contains(expected), "{expected} missing from the audit event: {audit}");
    }
    let still_open = tokio::time::timeout(Duration::from_millis(300), watch.next()).await;
    assert!(still_open.is_err(), "the watch stream ended: {still_open:?}");
}

#[tokio::test]
async fn a_reload_that_takes_a_permission_away_ends_the_streams_opened_with_it() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let dir = scratch("revoke");
    std::fs::write(dir.join("policies.cedar"), PRIVACY_MAY_EXPORT_USERS).unwrap();
    let service = start(&emulator, &dir);
    service.wait_ready(true).await;
    let mut client = ExportServiceClient::new(service.channel().await);
    let task_id = emulator.export_channels(serde_json::json!({"channels": [{"cid": "messaging:general"}]})).await;
    emulator.steer(&task_id, serde_json::json!({"hold": true})).await;
    let mut watch = client.watch_task(as_privacy(WatchTaskRequest { task_id })).await.expect("watch").into_inner();
    assert!(watch.next().await.expect("an event").is_ok());

    // The new policies no longer let anyone watch: the open stream ends, refused.
    std::fs::write(dir.join("policies.cedar"), r#"permit (principal, action == Action::"ExportUser", resource);"#)
        .unwrap();
    service.hang_up();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(_heartbeat_or_change)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the stream ends after the reload");
    let refused = ended.expect("a final status").expect_err("refused");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("WatchTask"), "{refused:?}");
}

#[tokio::test]
async fn sighup_without_a_policy_file_does_not_end_the_process() {
    let emulator = TestEmulator::spawn(EmulatorConfig::new(API_KEY, API_SECRET)).await;
    let base_url = emulator.base_url();
    let env = [
        ("STREAM_BASE_URL", base_url.as_str()),
        ("STREAM_API_KEY", API_KEY),
        ("STREAM_API_SECRET", API_SECRET),
        ("RUST_LOG", "info"),
    ];
    let mut service = ServiceProcess::start(&[], &env);
    service.wait_ready(true).await;
    service.hang_up();
    assert!(service.wait_exit(Duration::from_millis(500)).await.is_none(), "SIGHUP ended the process");
    service.wait_ready(true).await;
    let log = service.log();
    assert!(log.contains("SIGHUP: no policy file to reload"), "{log}");
}
