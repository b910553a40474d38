//! A faithful emulator of the Stream Chat server-side export API, for the service's tests, for
//! trying the service without a Stream account, and for the official SDKs (see
//! `conformance/python-sdk`). What it follows, and where Stream's documentation is silent what it
//! decides, is written down in `docs/emulator.md`, with the same content as below.
//!
//! # Routes (at the root, like the real API)
//!
//! | Route name            | Request                      | Success |
//! |-----------------------|------------------------------|---------|
//! | `export_channels`     | `POST /export_channels`      | 201 `{task_id, duration}` |
//! | `get_export_channels` | `GET /export_channels/{id}`  | 200 task payload |
//! | `get_task`            | `GET /tasks/{id}`            | 200 task payload (same as above) |
//! | `export_user`         | `GET /users/{id}/export`     | 200 `{user, messages, reactions, duration}` |
//! | `export_users`        | `POST /export/users`         | 201 `{task_id, duration}` |
//! | `download`            | `GET /exports/{channels,users}/{task}/{file}?Expires=&Signature=` | 200 file |
//! | `query_channels`      | `POST /channels`            | 200 `{channels: [{channel, messages, members, ...}], duration}` |
//!
//! Any other path or method: 404 with code 16.
//!
//! # Order of checks on an API request
//!
//! 1. An injected fault for the route, if any (before auth, as the edge would answer).
//! 2. `api_key` query parameter: missing → 401 code 2 `"… \"api_key or app_id not provided\""`,
//!    wrong → 401 code 2 `"… \"api_key not valid\""`.
//! 3. The route's rate limit (fixed one-minute windows; with `--per-second-limits` also a
//!    minute's limit ÷ 30 per second): exceeded → 429 code 9.
//! 4. `stream-auth-type: jwt` (any header-name case) and `Authorization: <raw HS256 JWT>`
//!    signed with the secret, payload with `"server": true`, no `exp` needed. Missing header,
//!    wrong auth type, a `Bearer ` (or any scheme) prefix, a malformed token or a token without
//!    `server: true` → 401 code 5; bad signature → 43; `exp` in the past → 40; `nbf` in the
//!    future → 41; `iat` in the future → 42 (all against the emulator clock).
//! 5. Validation → 400 code 4 with `exception_fields` naming the field, then the handler.
//!
//! Every response except control endpoints and edge faults (`non_json`, `drop`) carries
//! lower-case `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` (Unix
//! seconds at the end of the current minute). Error bodies have `code`, `message`
//! (`"<Operation> failed with error: \"<detail>\""`), `StatusCode`, `duration`, `more_info`,
//! `details` and, for input errors, `exception_fields`.
//!
//! # Decisions where the real API is not documented
//!
//! - An unknown channel in `POST /export_channels` (or an unknown user in `POST /export/users`)
//!   is refused at once with 400 code 4, `exception_fields` naming `channels[i]` / `user_ids[i]`.
//! - The soft-deleted channel is accepted, but left out of the file unless
//!   `include_soft_deleted_channels` is true.
//! - `messages_since` is exclusive and `messages_until` inclusive (`since < created_at <= until`).
//!   Both accept any RFC 3339 form (`Z` or an offset, 0–9 fraction digits) and `null`; a naive
//!   time without an offset is not RFC 3339 and gets 400.
//! - Truncated messages (created at or before the channel's `truncated_at`) are left out unless
//!   `include_truncated_messages`. Soft-deleted messages are always exported with
//!   `type: "deleted"`; `clear_deleted_message_text` empties their `text` (and `html`).
//! - `format: "csv"` is refused with 400 (not emulated).
//! - QueryChannels (`POST /channels`): the filters, sorts, limits and decisions are in the
//!   `query` module; soft-deleted channels are not listed, ties are in `cid` order.
//! - `GET /users/{id}/export` of [`data::HEAVY_USER`] gives 400 code 4 ("has more than 10000
//!   messages"); in `POST /export/users` the same user makes the task fail with
//!   `error.type = "validation_error"`.
//! - File shapes: see the `files` module (v1 is `{"channels": [{channel, members, messages}],
//!   "users"?}`; v2 and users exports are `{"type", "item"}` JSON lines).
//! - Result URLs point at the emulator itself (the request's `Host`):
//!   `http://HOST/exports/channels/<task>/channels-export.json?Expires=<unix>&Signature=<hex>`,
//!   where the signature is the hex HMAC-SHA256 with the API secret of `"<url path>\n<expires>"`.
//!   They expire 24 h after signing and are re-signed on every status read. A bad, missing or
//!   expired signature gets 403 with an S3-style XML `AccessDenied` body.
//!
//! # Tasks
//!
//! Ids are UUID v4. The state is derived from the emulator clock at read time: `waiting` for
//! `timings.waiting`, then `pending`, then `running`, then `completed` (or `failed`). Timestamps
//! are RFC 3339 UTC with microseconds, trailing zeros trimmed, and `Z`; `updated_at` is the moment
//! the current state began.
//!
//! # Control endpoints (`/_emulator/…`: no auth, no rate limit, not counted)
//!
//! - `POST /_emulator/faults` `{"route": "<route name>|*", "count": N, "fault": {...}}`: the next
//!   N requests of that route get the fault. Kinds: `{"kind":"status","status":503,"code":-1,
//!   "message":"..."}` (Stream error body; a 429 also has rate-limit headers with remaining 0),
//!   `{"kind":"non_json","status":429,"body":"Too Many Requests"}` (plain text, no rate-limit
//!   headers, as the edge sends), `{"kind":"malformed_json"}` (the normal status, invalid JSON),
//!   `{"kind":"truncated"}` (the normal response, full `Content-Length` declared, the connection
//!   closed after half the body), `{"kind":"delay","ms":3000}` (then a normal answer),
//!   `{"kind":"drop"}` (the connection closes without a response), `{"kind":"redirect",
//!   "status":302,"location":"..."}` (by default to the request itself), `{"kind":"oversize",
//!   "bytes":N}` (a success status with an N-byte JSON body, streamed); `status` also takes
//!   `"exception_fields": N` (that many generated field errors). `malformed_json` and
//!   `truncated` run the request normally first (a task is created). `GET` lists the rules,
//!   `DELETE` clears them.
//! - `POST /_emulator/tasks/{id}` `{"hold": true}` freezes a task, `{"hold": false}` lets it go
//!   on; `{"status": "waiting"|"pending"|"running"|"completed"|"failed", "error": {"type",
//!   "description"}}` moves it there now and holds it there unless `"hold": false` is given too.
//!   `GET` shows `{task_id, status, held, created_at, updated_at}`.
//! - `PUT /_emulator/task_defaults` `{"waiting_ms", "pending_ms", "running_ms", "outcome":
//!   "completed"|"failed"}` (each optional) for tasks created afterwards; `GET` shows them.
//! - `GET /_emulator/counters` → `{"routes": {"get_task": 3, …}, "tasks": {"<id>": <status
//!   reads>}, "exports_created": N, "traceparents": [{"route": "get_task", "traceparent": "00-…"
//!   or null}, …]}` (every request to an API route counts, faulted or refused ones too; unknown
//!   routes count as `unknown`; `traceparents` lists the latest 256 API requests in order, with
//!   the W3C header each carried); `POST /_emulator/counters/reset`.
//! - `PUT /_emulator/rate_limits` `{"get_task": 5, …}` sets per-minute limits and restarts those
//!   windows; `GET` shows them.
//! - `POST /_emulator/clock` `{"advance_secs": 90000}` moves the emulator clock forward (URL
//!   expiry, JWT times, task states, rate-limit windows); `GET` shows it.
//! - `POST /_emulator/synthetic_exports` `{"records": N, "version": "v1"|"v2", "record_bytes": 512}`
//!   creates a completed task whose file (under `/exports/synthetic/`) is generated as it is
//!   downloaded: a file of any size, for benchmarks of reading exports. Returns `{"task_id"}`.

mod auth;
mod config;
mod conn;
mod control;
pub mod data;
mod faults;
mod files;
mod query;
mod rate_limit;
mod routes;
mod state;
mod tasks;
mod wire;

use std::{net::SocketAddr, time::Duration};

use tokio::{sync::oneshot, task::JoinHandle};

pub use config::{DEFAULT_RATE_LIMIT, DEFAULT_SEED, EmulatorConfig, RateLimits, TaskTimings};

/// A running emulator. Dropping it leaves the server running; [`EmulatorHandle::shutdown`] stops it.
pub struct EmulatorHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl EmulatorHandle {
    /// The address the emulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL to give a Stream client (`http://addr`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections and waits (at most 3 s) for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(3), &mut self.task).await.is_err() {
            self.task.abort();
        }
    }
}

/// Starts the emulator on `listener` in a background task.
pub async fn spawn(listener: tokio::net::TcpListener, config: EmulatorConfig) -> std::io::Result<EmulatorHandle> {
    let addr = listener.local_addr()?;
    let state = state::AppState::new(&config, addr);
    let app = routes::router(state).into_make_service_with_connect_info::<conn::ConnInfo>();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let serve = axum::serve(conn::EmuListener::new(listener), app).with_graceful_shutdown(async {
            let _ = stopped.await;
        });
        if let Err(error) = serve.await {
            tracing::warn!(%error, "emulator server stopped with an error");
        }
    });
    Ok(EmulatorHandle { addr, stop: Some(stop), task })
}

/// Command-line settings of `stream-export emulator`.
#[derive(clap::Args, Clone, Debug)]
pub struct EmulatorArgs {
    /// The address to listen on.
    #[arg(long, env = "STREAM_EMULATOR_LISTEN", default_value = "127.0.0.1:8900")]
    pub listen: SocketAddr,
    /// The API key clients must send.
    #[arg(long, env = "STREAM_API_KEY")]
    pub api_key: String,
    /// The API secret that signs JWTs and result URLs.
    #[arg(long, env = "STREAM_API_SECRET", hide_env_values = true)]
    pub api_secret: String,
    /// Milliseconds a new task stays `waiting`.
    #[arg(long, default_value_t = 200)]
    pub waiting_ms: u64,
    /// Milliseconds a task stays `pending`.
    #[arg(long, default_value_t = 200)]
    pub pending_ms: u64,
    /// Milliseconds a task stays `running`.
    #[arg(long, default_value_t = 400)]
    pub running_ms: u64,
    /// Per-minute limit of every route.
    #[arg(long, default_value_t = DEFAULT_RATE_LIMIT)]
    pub rate_limit: u32,
    /// Per-minute limit of one route, as ROUTE=N (repeatable; e.g. get_task=60).
    #[arg(long = "route-rate-limit", value_name = "ROUTE=N")]
    pub route_rate_limits: Vec<String>,
    /// Seed of the generated data set.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Most channels per export request.
    #[arg(long, default_value_t = 25)]
    pub channel_limit: usize,
    /// Add this many synthetic channels `messaging:bulk-NNNNNN` (created over the year before the
    /// messages, a bulk import of 45 (fewer under 90) in one microsecond, teams
    /// acme/globex/initech): listing and exporting at scale.
    #[arg(long, default_value_t = 0)]
    pub synthetic_channels: usize,
    /// Also limit each second to a route's per-minute limit ÷ 30 (at least 1), as Stream does.
    #[arg(long)]
    pub per_second_limits: bool,
}

impl EmulatorArgs {
    /// The emulator settings these arguments describe.
    pub fn to_config(&self) -> anyhow::Result<EmulatorConfig> {
        let mut config = EmulatorConfig::new(self.api_key.clone(), self.api_secret.clone());
        config.timings = TaskTimings {
            waiting: Duration::from_millis(self.waiting_ms),
            pending: Duration::from_millis(self.pending_ms),
            running: Duration::from_millis(self.running_ms),
        };
        config.rate_limits = RateLimits::uniform(self.rate_limit);
        for item in &self.route_rate_limits {
            let (name, limit) = item
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--route-rate-limit wants ROUTE=N, got {item:?}"))?;
            let route = config::Route::from_name(name.trim())
                .ok_or_else(|| anyhow::anyhow!("--route-rate-limit: unknown route {name:?}"))?;
            let limit =
                limit.trim().parse().map_err(|_| anyhow::anyhow!("--route-rate-limit: {limit:?} is not a number"))?;
            config.rate_limits.set(route, limit);
        }
        config.seed = self.seed;
        config.channel_limit = self.channel_limit;
        config.synthetic_channels = self.synthetic_channels;
        config.rate_limits.per_second = self.per_second_limits;
        Ok(config)
    }
}

/// Runs `stream-export emulator` until Ctrl-C or SIGTERM.
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let handle = spawn(listener, config).await?;
    tracing::info!(address = %handle.addr(), base_url = %handle.base_url(), "Stream API emulator listening");
    shutdown_signal().await?;
    tracing::info!("Stream API emulator stopping");
    handle.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = term.recv() => {}
        }
        Ok(())
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await?;
        Ok(())
    }
}
