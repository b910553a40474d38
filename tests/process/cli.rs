//! The binary itself: configuration errors exit 2 with one line naming the setting, and
//! `serve --emulator` comes up serving with no Stream account.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

const BIN: &str = env!("CARGO_BIN_EXE_stream-export");

/// Runs `serve` with a clean environment plus `vars`, expecting a configuration error.
fn config_error(args: &[&str], vars: &[(&str, &str)]) -> String {
    let output = Command::new(BIN)
        .arg("serve")
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(2), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn missing_or_bad_settings_exit_2_naming_the_setting() {
    let stderr = config_error(&[], &[]);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains("STREAM_API_KEY"), "{stderr}");

    let stderr = config_error(&[], &[("STREAM_API_KEY", "k")]);
    assert!(stderr.contains("STREAM_API_SECRET"), "{stderr}");

    let stderr =
        config_error(&[], &[("STREAM_API_KEY", "k"), ("STREAM_API_SECRET", "s"), ("STREAM_BASE_URL", "ftp://x")]);
    assert!(stderr.contains("STREAM_BASE_URL"), "{stderr}");

    let stderr = config_error(&["--listen", "not-an-address"], &[]);
    assert!(stderr.contains("--listen"), "{stderr}");

    let stderr = config_error(&["--emulator", "--upstream-timeout", "0s"], &[]);
    assert!(stderr.contains("STREAM_EXPORT_UPSTREAM_TIMEOUT"), "{stderr}");
}

/// The files that settings name are read at start-up (in `startup`, not while the flags are
/// parsed): one that cannot be used still stops the process with exit code 2, naming the setting.
#[test]
fn unusable_files_that_settings_name_exit_2_naming_the_setting() {
    let dir = crate::common::process::scratch_state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let (bad_tokens, missing) = (dir.join("tokens"), dir.join("missing.pem"));
    std::fs::write(&bad_tokens, "a-caller-without-a-token\n").unwrap();
    let (bad_tokens, missing) = (bad_tokens.to_str().unwrap(), missing.to_str().unwrap());
    let serve = |files: &[&str]| {
        let args = [&["--emulator", "--memory-state", "--listen", "127.0.0.1:0"], files].concat();
        config_error(&args, &[])
    };

    let stderr = serve(&["--auth-tokens-file", bad_tokens]);
    assert!(stderr.contains("invalid setting STREAM_EXPORT_AUTH_TOKENS_FILE (--auth-tokens-file)"), "{stderr}");
    let stderr = serve(&["--policy-file", missing]);
    assert!(stderr.contains("invalid setting STREAM_EXPORT_POLICY_FILE (--policy-file)"), "{stderr}");
    let stderr = serve(&["--tls-cert", missing, "--tls-key", missing]);
    assert!(stderr.contains(&format!("cannot read STREAM_EXPORT_TLS_CERT (--tls-cert) {missing}")), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn serve_with_the_embedded_emulator_is_healthy() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    // As in a fresh clone: no state flag, so the default state directory, under the working
    // directory.
    let fresh_clone = crate::common::process::scratch_state_dir();
    std::fs::create_dir_all(&fresh_clone).unwrap();
    let mut child = Command::new(BIN)
        // On every interface, as in a container: the emulator's control endpoints must still be
        // reachable from this host only.
        .args(["serve", "--emulator", "--listen", &format!("0.0.0.0:{port}")])
        .current_dir(&fresh_clone)
        .env_clear()
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || BufReader::new(stderr).lines().map_while(Result::ok).collect::<Vec<_>>());

    let mut serving = false;
    for _ in 0..100 {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
        if let Ok(channel) = endpoint.connect().await {
            let mut health = HealthClient::new(channel);
            let response = health.check(HealthCheckRequest { service: "streamexport.v1.ExportService".into() }).await;
            if response.is_ok_and(|r| r.into_inner().status() == ServingStatus::Serving) {
                serving = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // SIGTERM, as Kubernetes sends it: the process ends by itself.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let mut exited = None;
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if exited.is_none() {
        let _ = child.kill();
    }
    let log = log.join().unwrap().join("\n");
    assert!(serving, "the service never reported SERVING; log:\n{log}");
    assert!(exited.is_some_and(|s| s.success()), "SIGTERM ends the process cleanly; log:\n{log}");
    assert!(log.contains("emulator"), "the log says the embedded emulator is in use:\n{log}");
    assert!(
        fresh_clone.join("stream-export-data").join("state.redb").is_file(),
        "the default state directory is made where the service runs; log:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&fresh_clone);
    let emulator_url = log
        .lines()
        .find(|line| line.contains("emulator started"))
        .and_then(|line| line.split_once("http://"))
        .map(|(_, rest)| {
            format!("http://{}", rest.split(|c: char| c.is_whitespace() || c.is_control()).next().unwrap())
        })
        .unwrap_or_else(|| panic!("the log gives the emulator's address:\n{log}"));
    let host = url::Url::parse(&emulator_url).unwrap().host_str().unwrap_or_default().to_owned();
    assert!(
        host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
        "the embedded emulator (and its /_emulator/ control endpoints) listens on loopback only: {emulator_url}"
    );
}
