//! The emulator on a random loopback port, with an HTTP client signed as the SDKs sign, and
//! helpers for its control endpoints (faults, counters, clock, task steering).

use std::{net::SocketAddr, time::Duration};

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use stream_export::emulator::{self, EmulatorConfig, EmulatorHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use super::{API_KEY as KEY, API_SECRET as SECRET};

/// A running emulator and an HTTP client for it.
pub struct TestEmulator {
    /// The running emulator.
    pub handle: EmulatorHandle,
    /// An HTTP client for direct calls.
    pub http: reqwest::Client,
    /// The emulator's base URL.
    pub base: String,
}

/// The token the SDKs send, signed with the test secret.
pub fn server_token() -> String {
    super::server_token(SECRET)
}

/// A decoded answer.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    /// Asserts a Stream error body with this HTTP status and code; returns the body.
    pub fn assert_error(&self, status: u16, code: i64) -> Value {
        assert_eq!(self.status.as_u16(), status, "status of {}", self.text);
        let body = self.json();
        assert_eq!(body["code"], json!(code), "code of {body}");
        assert_eq!(body["StatusCode"], json!(status));
        assert!(body["message"].is_string());
        assert_eq!(body["more_info"], json!("https://getstream.io/chat/docs/api_errors_response"));
        assert_eq!(body["details"], json!([]));
        assert_duration(&body);
        body
    }
}

/// `duration` is like `"1.23ms"`.
pub fn assert_duration(body: &Value) {
    let duration = body["duration"].as_str().unwrap_or_else(|| panic!("no duration in {body}"));
    let number = duration.strip_suffix("ms").unwrap_or_else(|| panic!("bad duration {duration}"));
    let (whole, fraction) = number.split_once('.').unwrap_or_else(|| panic!("bad duration {duration}"));
    assert!(!whole.is_empty() && whole.chars().all(|c| c.is_ascii_digit()), "{duration}");
    assert!(fraction.len() == 2 && fraction.chars().all(|c| c.is_ascii_digit()), "{duration}");
}

/// RFC 3339 UTC, microseconds at most, trailing zeros trimmed, `Z`.
pub fn assert_timestamp(value: &Value) {
    let text = value.as_str().unwrap_or_else(|| panic!("not a timestamp: {value}"));
    assert!(chrono::DateTime::parse_from_rfc3339(text).is_ok(), "{text}");
    assert!(text.ends_with('Z'), "{text}");
    assert_eq!(&text[10..11], "T");
    if let Some((_, fraction)) = text.trim_end_matches('Z').split_once('.') {
        assert!((1..=6).contains(&fraction.len()), "{text}");
        assert!(!fraction.ends_with('0'), "{text}");
    }
}

/// An emulator with short task timings (10/10/20 ms), so exports finish quickly.
pub async fn start() -> TestEmulator {
    let mut config = EmulatorConfig::new(KEY, SECRET);
    config.timings = stream_export::emulator::TaskTimings {
        waiting: Duration::from_millis(10),
        pending: Duration::from_millis(10),
        running: Duration::from_millis(20),
    };
    start_with(config).await
}

pub async fn start_with(config: EmulatorConfig) -> TestEmulator {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let handle = emulator::spawn(listener, config).await.expect("spawn");
    // reqwest is built without a default TLS provider; plain http still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().expect("client");
    let base = handle.base_url();
    TestEmulator { handle, http, base }
}

impl TestEmulator {
    /// Starts an emulator with `config` on a random port.
    pub async fn spawn(config: EmulatorConfig) -> Self {
        start_with(config).await
    }

    /// The emulator's base URL.
    pub fn base_url(&self) -> String {
        self.base.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.addr()
    }

    fn url(&self, path: &str) -> String {
        let sep = if path.contains('?') { '&' } else { '?' };
        format!("{}{path}{sep}api_key={KEY}", self.base)
    }

    /// A request with the SDK's auth: api_key, stream-auth-type and the server token.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .header("stream-auth-type", "jwt")
            .header("Authorization", server_token())
    }

    pub async fn send(builder: reqwest::RequestBuilder) -> Answer {
        let response = builder.send().await.expect("request failed");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        Answer { status, headers, text }
    }

    pub async fn get(&self, path: &str) -> Answer {
        Self::send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Answer {
        Self::send(self.request(Method::POST, path).json(&body)).await
    }

    /// Calls a control endpoint and returns its JSON.
    pub async fn control(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut builder = self.http.request(method, format!("{}/_emulator/{path}", self.base));
        if let Some(body) = body {
            builder = builder.json(&body);
        }
        let answer = Self::send(builder).await;
        assert!(answer.status.is_success(), "control {path}: {} {}", answer.status, answer.text);
        serde_json::from_str(&answer.text).unwrap_or(Value::Null)
    }

    pub async fn advance_clock(&self, secs: i64) {
        self.control(Method::POST, "clock", Some(json!({"advance_secs": secs}))).await;
    }

    /// Posts a channel export and returns the task id.
    pub async fn export_channels(&self, body: Value) -> String {
        let answer = self.post("/export_channels", body).await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        answer.json()["task_id"].as_str().expect("task_id").to_owned()
    }

    /// Polls `GET /tasks/{id}` until the task ends; returns the last payload.
    pub async fn wait_done(&self, task_id: &str) -> Value {
        for _ in 0..200 {
            let body = self.get(&format!("/tasks/{task_id}")).await.json();
            if body["status"] == "completed" || body["status"] == "failed" {
                return body;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("task {task_id} did not finish");
    }

    /// Exports and downloads; returns the file text.
    pub async fn export_file(&self, body: Value) -> String {
        let task = self.export_channels(body).await;
        let done = self.wait_done(&task).await;
        assert_eq!(done["status"], "completed", "{done}");
        let url = done["result"]["url"].as_str().expect("url");
        let answer = Self::send(self.http.get(url)).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        answer.text
    }
}

/// Sends raw bytes and reads until the server closes (or 5 s pass); returns what came back.
pub async fn raw(addr: SocketAddr, request: &str) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    out
}

/// A raw HTTP/1.1 request with `Connection: close` and the given extra header lines.
pub fn raw_request(method: &str, path_and_query: &str, headers: &[&str], body: &str) -> String {
    let mut text = format!("{method} {path_and_query} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    if !body.is_empty() {
        text.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// The control endpoints (`/_emulator/...`).
impl TestEmulator {
    /// Makes the next `count` requests of `route` fail with `fault`.
    pub async fn inject(&self, route: &str, count: u32, fault: Value) {
        self.control(Method::POST, "faults", Some(json!({"route": route, "count": count, "fault": fault}))).await;
    }

    /// Removes every pending fault.
    pub async fn clear_faults(&self) {
        self.control(Method::DELETE, "faults", None).await;
    }

    /// Zeroes the request counters.
    pub async fn reset_counters(&self) {
        self.control(Method::POST, "counters/reset", None).await;
    }

    /// Requests the emulator saw on `route` since start or the last reset.
    pub async fn requests(&self, route: &str) -> u64 {
        let counters = self.control(Method::GET, "counters", None).await;
        counters["routes"][route].as_u64().unwrap_or(0)
    }

    /// The `traceparent` of each request to `route` (latest 256 API requests), in order.
    pub async fn traceparents(&self, route: &str) -> Vec<Option<String>> {
        let counters = self.control(Method::GET, "counters", None).await;
        let seen = counters["traceparents"].as_array().cloned().unwrap_or_default();
        seen.iter()
            .filter(|seen| seen["route"] == route)
            .map(|seen| seen["traceparent"].as_str().map(str::to_owned))
            .collect()
    }

    /// Upstream export tasks created so far.
    pub async fn exports_created(&self) -> u64 {
        let counters = self.control(Method::GET, "counters", None).await;
        counters["exports_created"].as_u64().unwrap_or(0)
    }

    /// Steers a task (hold it, or force its status).
    pub async fn steer(&self, task_id: &str, body: Value) {
        self.control(Method::POST, &format!("tasks/{task_id}"), Some(body)).await;
    }

    /// Calls an API route directly, signed as an SDK would; returns status and JSON body.
    pub async fn api_get(&self, path: &str) -> (u16, Value) {
        let token = server_token();
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .query(&[("api_key", KEY)])
            .header("Authorization", token)
            .header("stream-auth-type", "jwt")
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
