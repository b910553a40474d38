//! Test harness: the real service and the emulator, each on a random loopback port.
#![allow(dead_code)]

pub mod emulator;
pub mod fake_upstream;
pub mod otlp;
pub mod pki;
pub mod process;
pub mod raw_grpc;
pub mod records;
pub mod redis;
pub mod s3;
pub mod schedules;

use std::{net::SocketAddr, time::Duration};

use serde_json::{Value, json};
use stream_export::{
    config::{Settings, StateSettings, UpstreamSettings, parse_base_url},
    emulator::EmulatorConfig,
    proto::export_service_client::ExportServiceClient,
    startup::Application,
    task_watch::{WatchHub, WatchSettings},
};
use tokio::{sync::oneshot, task::JoinHandle};

pub use self::emulator::TestEmulator;
use tonic::{Code, Status, transport::Channel};
use tonic_types::{ErrorDetails, StatusExt};

/// Credentials the test emulator accepts.
pub const API_KEY: &str = "test-key";
/// A secret of at least 32 bytes, like a real one.
pub const API_SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";

/// A running service with its emulator.
pub struct TestApp {
    /// The service's address.
    pub addr: SocketAddr,
    /// A client of the service.
    pub client: ExportServiceClient<Channel>,
    /// A plain channel to the service, for health and reflection clients.
    pub channel: Channel,
    /// The emulator behind it.
    pub emulator: TestEmulator,
    /// The service's watch hub.
    pub hub: WatchHub,
    shutdown: Option<oneshot::Sender<()>>,
    server: JoinHandle<anyhow::Result<()>>,
}

/// A change to the service's settings.
pub type SettingsTweak = Box<dyn FnOnce(&mut Settings) + Send>;

/// How to build the service under test.
pub struct Options {
    /// The secret the service signs with (the emulator always uses [`API_SECRET`]).
    pub service_secret: String,
    /// The API key the service sends.
    pub service_key: String,
    /// Upstream request timeout.
    pub upstream_timeout: Duration,
    /// Emulator settings.
    pub emulator: EmulatorConfig,
    /// WatchTask tuning.
    pub watch: WatchSettings,
    /// Point the service somewhere else than the emulator (a closed port, say).
    pub base_url_override: Option<String>,
    /// Any other change to the service's settings.
    pub tweak: Option<SettingsTweak>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            service_secret: API_SECRET.into(),
            service_key: API_KEY.into(),
            upstream_timeout: Duration::from_secs(5),
            emulator: EmulatorConfig::new(API_KEY, API_SECRET),
            watch: WatchSettings {
                poll_interval_min: Duration::from_millis(50),
                poll_interval_max: Duration::from_millis(400),
                upstream_budget_per_second: 200.0,
                ..WatchSettings::default()
            },
            base_url_override: None,
            tweak: None,
        }
    }
}

/// Starts the emulator and the service with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

/// Starts the emulator and the service.
pub async fn spawn_app_with(options: Options) -> TestApp {
    let emulator = TestEmulator::spawn(options.emulator).await;
    let upstream = UpstreamSettings::Remote {
        base_url: parse_base_url(&options.base_url_override.unwrap_or_else(|| emulator.base_url())).unwrap(),
        api_key: options.service_key,
        api_secret: options.service_secret.into(),
    };
    let mut settings = Settings::new("127.0.0.1:0".parse().unwrap(), upstream);
    // In-process services share the test binary: each keeps its state in memory (a tweak may
    // give it a state directory of its own).
    settings.state = StateSettings::Memory;
    settings.upstream_connect_timeout = Duration::from_secs(2);
    settings.upstream_timeout = options.upstream_timeout;
    settings.watch = options.watch;
    if let Some(tweak) = options.tweak {
        tweak(&mut settings);
    }
    let app = Application::build(settings).await.expect("the service builds");
    let addr = app.local_addr().unwrap();
    let hub = app.watch_hub();
    let (shutdown, signal) = oneshot::channel();
    let server = tokio::spawn(app.run_until(async {
        let _ = signal.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connects");
    TestApp {
        addr,
        client: ExportServiceClient::new(channel.clone()),
        channel,
        emulator,
        hub,
        shutdown: Some(shutdown),
        server,
    }
}

impl TestApp {
    /// Stops the service and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        (&mut self.server).await.expect("server task").expect("server result");
    }
}

/// An HS256 token over `claims`, signed with `secret`.
pub fn token(secret: &str, claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap_or_default()
}

/// Stream's server token, the one the SDKs send: `{"server": true}` signed with `secret`.
pub fn server_token(secret: &str) -> String {
    token(secret, json!({"server": true}))
}

/// Asserts the code and `ErrorInfo` reason of a status and returns its details.
pub fn assert_status(status: &Status, code: Code, reason: &str) -> ErrorDetails {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    let details = status.get_error_details();
    let info = details.error_info().unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "unexpected reason in {status:?}");
    assert_eq!(info.domain, "stream-export");
    details
}

/// The field paths of a status's `BadRequest` details.
pub fn violated_fields(details: &ErrorDetails) -> Vec<String> {
    details.bad_request().map(|b| b.field_violations.iter().map(|v| v.field.clone()).collect()).unwrap_or_default()
}

/// Reads a ReadExport stream to its end: the records, and the error that ended it, if any.
pub async fn read_export_to_end(
    app: &TestApp,
    task_id: &str,
    start_index: u64,
) -> (Vec<stream_export::proto::ExportRecord>, Option<Status>) {
    read_export_encoded(app, task_id, start_index, stream_export::proto::RecordEncoding::Struct).await
}

/// [`read_export_to_end`] in an encoding: the messages as they arrived.
pub async fn read_export_encoded(
    app: &TestApp,
    task_id: &str,
    start_index: u64,
    encoding: stream_export::proto::RecordEncoding,
) -> (Vec<stream_export::proto::ExportRecord>, Option<Status>) {
    use tokio_stream::StreamExt;
    let mut client = app.client.clone();
    let request =
        stream_export::proto::ReadExportRequest { task_id: task_id.into(), start_index, encoding: encoding.into() };
    let mut stream = match client.read_export(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut records = Vec::new();
    while let Some(item) = tokio::time::timeout(Duration::from_secs(60), stream.next()).await.expect("records in time")
    {
        match item {
            Ok(record) => records.push(record),
            Err(status) => return (records, Some(status)),
        }
    }
    (records, None)
}
