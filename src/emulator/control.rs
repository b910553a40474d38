//! Control endpoints under `/_emulator/`: faults, task steering, task defaults, counters, rate
//! limits and the clock. No auth, no rate limit, not counted. JSON in and out; a bad request gets
//! 400 `{"error": "..."}`.

use std::{collections::BTreeMap, time::Duration as StdDuration};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::Duration;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    config::Route,
    faults::{Fault, RouteSel},
    files::{ExportKind, SyntheticSpec},
    state::AppState,
    tasks::{Outcome, Status, TaskError},
    wire::timestamp,
};

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/_emulator/faults", get(list_faults).post(add_fault).delete(clear_faults))
        .route("/_emulator/tasks/{id}", get(task_state).post(steer_task))
        .route("/_emulator/synthetic_exports", post(synthetic_export))
        .route("/_emulator/task_defaults", get(get_defaults).put(put_defaults))
        .route("/_emulator/counters", get(counters))
        .route("/_emulator/counters/reset", post(reset_counters))
        .route("/_emulator/rate_limits", get(get_limits).put(put_limits))
        .route("/_emulator/clock", get(get_clock).post(advance_clock))
}

fn bad_request(message: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({"error": message.into()}))).into_response()
}

/// A refusal: the status and the `error` text.
type Refusal = (StatusCode, String);

fn refuse((status, message): Refusal) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|error| (StatusCode::BAD_REQUEST, format!("invalid body: {error}")))
}

fn ok(value: Value) -> Response {
    (StatusCode::OK, Json(value)).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultRequest {
    route: String,
    #[serde(default = "one")]
    count: u32,
    fault: Fault,
}

fn one() -> u32 {
    1
}

async fn list_faults(State(state): State<AppState>) -> Response {
    ok(json!({"faults": state.lock().faults.list()}))
}

async fn add_fault(State(state): State<AppState>, body: Bytes) -> Response {
    let request: FaultRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refuse(refusal),
    };
    let Some(route) = RouteSel::parse(&request.route) else {
        let names: Vec<&str> = Route::NAMED.iter().map(|r| r.name()).collect();
        return bad_request(format!("unknown route {:?}; use one of {names:?} or \"*\"", request.route));
    };
    let mut inner = state.lock();
    inner.faults.add(route, request.count, request.fault);
    ok(json!({"faults": inner.faults.list()}))
}

async fn clear_faults(State(state): State<AppState>) -> Response {
    ok(json!({"cleared": state.lock().faults.clear()}))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SteerRequest {
    hold: Option<bool>,
    status: Option<Status>,
    error: Option<TaskError>,
}

fn task_view(state: &AppState, id: &str) -> Result<Value, Refusal> {
    let missing = || (StatusCode::NOT_FOUND, format!("no task {id}"));
    let id = Uuid::parse_str(id).map_err(|_| missing())?;
    let now = state.now();
    let inner = state.lock();
    let task = inner.tasks.get(&id).ok_or_else(missing)?;
    let (status, since) = task.state(now);
    // What the export asked for, as received: tests check the windows a client sent.
    let at = |instant: Option<chrono::DateTime<chrono::Utc>>| {
        instant.map(|instant| instant.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
    };
    let channels: Vec<Value> = match &task.kind {
        ExportKind::Channels(spec) => spec
            .channels
            .iter()
            .map(|channel| json!({"cid": channel.cid, "messages_since": at(channel.since), "messages_until": at(channel.until)}))
            .collect(),
        _ => Vec::new(),
    };
    Ok(json!({
        "task_id": id.to_string(),
        "status": status.as_str(),
        "held": task.held(),
        "created_at": timestamp(task.created_at),
        "updated_at": timestamp(since),
        "channels": channels,
    }))
}

async fn task_state(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    task_view(&state, &id).map_or_else(refuse, ok)
}

/// Creates a completed task whose file is generated on the fly (`SyntheticSpec`), for
/// benchmarks of reading large exports: `{"records": N, "version": "v1"|"v2", "record_bytes": B}`,
/// and optionally `"mib_per_second": R` to serve the file no faster than a remote store would.
async fn synthetic_export(State(state): State<AppState>, body: Bytes) -> Response {
    let spec: SyntheticSpec = match parse(&body) {
        Ok(spec) => spec,
        Err(refusal) => return refuse(refusal),
    };
    let id = state.create_task(ExportKind::Synthetic(spec), None);
    let now = state.now();
    if let Some(task) = state.lock().tasks.get_mut(&id) {
        task.steer(Status::Completed, None, now);
    }
    ok(json!({"task_id": id.to_string()}))
}

async fn steer_task(State(state): State<AppState>, Path(id): Path<String>, body: Bytes) -> Response {
    let request: SteerRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refuse(refusal),
    };
    let now = state.now();
    {
        let mut inner = state.lock();
        let Some(task) = Uuid::parse_str(&id).ok().and_then(|uuid| inner.tasks.get_mut(&uuid)) else {
            return (StatusCode::NOT_FOUND, Json(json!({"error": format!("no task {id}")}))).into_response();
        };
        match request.status {
            Some(status) => {
                let hold = request.hold.unwrap_or(true);
                if hold {
                    task.set_hold(true, now);
                }
                task.steer(status, request.error, now);
                if !hold {
                    task.set_hold(false, now);
                }
            }
            None => {
                if let Some(hold) = request.hold {
                    task.set_hold(hold, now);
                }
            }
        }
    }
    task_view(&state, &id).map_or_else(refuse, ok)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DefaultsRequest {
    waiting_ms: Option<u64>,
    pending_ms: Option<u64>,
    running_ms: Option<u64>,
    outcome: Option<Outcome>,
}

fn defaults_json(state: &AppState) -> Value {
    let defaults = state.lock().task_defaults;
    json!({
        "waiting_ms": defaults.timings.waiting.as_millis() as u64,
        "pending_ms": defaults.timings.pending.as_millis() as u64,
        "running_ms": defaults.timings.running.as_millis() as u64,
        "outcome": defaults.outcome,
    })
}

async fn get_defaults(State(state): State<AppState>) -> Response {
    ok(defaults_json(&state))
}

async fn put_defaults(State(state): State<AppState>, body: Bytes) -> Response {
    let request: DefaultsRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refuse(refusal),
    };
    let phases = [request.waiting_ms, request.pending_ms, request.running_ms];
    if phases.into_iter().flatten().any(|ms| ms / 1000 > MAX_SPAN_SECS) {
        return bad_request(format!("each phase may last at most {} ms (100 years)", MAX_SPAN_SECS * 1000));
    }
    {
        let mut inner = state.lock();
        let defaults = &mut inner.task_defaults;
        if let Some(ms) = request.waiting_ms {
            defaults.timings.waiting = StdDuration::from_millis(ms);
        }
        if let Some(ms) = request.pending_ms {
            defaults.timings.pending = StdDuration::from_millis(ms);
        }
        if let Some(ms) = request.running_ms {
            defaults.timings.running = StdDuration::from_millis(ms);
        }
        if let Some(outcome) = request.outcome {
            defaults.outcome = outcome;
        }
    }
    ok(defaults_json(&state))
}

async fn counters(State(state): State<AppState>) -> Response {
    ok(state.lock().counters.json())
}

async fn reset_counters(State(state): State<AppState>) -> Response {
    let mut inner = state.lock();
    inner.counters = Default::default();
    ok(inner.counters.json())
}

async fn get_limits(State(state): State<AppState>) -> Response {
    ok(json!(state.lock().limiter.limits()))
}

async fn put_limits(State(state): State<AppState>, body: Bytes) -> Response {
    let request: BTreeMap<String, u32> = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refuse(refusal),
    };
    let mut routes = Vec::with_capacity(request.len());
    for (name, limit) in request {
        let Some(route) = Route::from_name(&name) else {
            return bad_request(format!("unknown route {name:?}"));
        };
        routes.push((route, limit));
    }
    let mut inner = state.lock();
    for (route, limit) in routes {
        inner.limiter.set_limit(route, limit);
    }
    ok(json!(inner.limiter.limits()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockRequest {
    advance_secs: i64,
}

fn clock_json(state: &AppState) -> Value {
    let offset = state.lock().clock_offset;
    json!({"now": timestamp(state.now()), "offset_secs": offset.num_seconds()})
}

async fn get_clock(State(state): State<AppState>) -> Response {
    ok(clock_json(&state))
}

/// How far any control value may move the emulator's time: the clock ahead of real time, and
/// each phase of a task. Far below chrono's limits and RFC 3339's year 9999 even added together,
/// so that no value a client sends can overflow a timestamp later.
const MAX_SPAN_SECS: u64 = 100 * 365 * 86_400;

async fn advance_clock(State(state): State<AppState>, body: Bytes) -> Response {
    let request: ClockRequest = match parse(&body) {
        Ok(request) => request,
        Err(refusal) => return refuse(refusal),
    };
    let Ok(advance) = u64::try_from(request.advance_secs) else {
        return bad_request("advance_secs must not be negative: the clock only moves forward");
    };
    {
        let mut inner = state.lock();
        let ahead = u64::try_from(inner.clock_offset.num_seconds()).unwrap_or(0);
        match ahead.checked_add(advance).filter(|total| *total <= MAX_SPAN_SECS) {
            // Both fit in an i64 of seconds: the total is at most MAX_SPAN_SECS.
            Some(_) => inner.clock_offset += Duration::seconds(advance as i64),
            None => {
                return bad_request(format!(
                    "the clock may run at most {MAX_SPAN_SECS} seconds (100 years) ahead; it is {ahead} s ahead"
                ));
            }
        }
    }
    ok(clock_json(&state))
}
