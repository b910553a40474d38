//! The Stream API routes and the edge middleware in front of them (faults, auth, rate limits).

use std::time::Duration as StdDuration;

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::{ConnectInfo, Path, RawQuery, Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    auth,
    config::Route,
    conn::ConnInfo,
    control,
    data::{HEAVY_USER, USER_EXPORT_MESSAGE_LIMIT},
    faults::Fault,
    files::{ChannelExportSpec, ChannelSelection, ExportKind, Version},
    query::ChannelQuery,
    rate_limit::RateInfo,
    state::AppState,
    tasks::{Status, TaskError},
    wire::{ApiError, Timer, json, timestamp},
};

/// The prefix of the control endpoints: no auth, no rate limit, no counting.
pub(crate) const CONTROL_PREFIX: &str = "/_emulator/";
/// The bucket named in completed results.
const S3_BUCKET: &str = "stream-chat-emulator-exports";
/// Lifetime of a signed result URL.
const URL_LIFETIME_SECS: i64 = 24 * 3600;

/// The whole emulator application.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/export_channels", post(export_channels))
        .route("/export_channels/{id}", get(get_export_channels))
        .route("/tasks/{id}", get(get_task))
        .route("/users/{id}/export", get(export_user))
        .route("/export/users", post(export_users))
        .route("/channels", post(query_channels))
        .route("/exports/{kind}/{task}/{file}", get(download))
        .merge(control::router())
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

// ---------------------------------------------------------------- edge middleware

async fn edge(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    if path.starts_with(CONTROL_PREFIX) {
        return next.run(request).await;
    }
    let timer = Timer::start();
    let route = Route::classify(&method, &path);
    let response = faulted(state, route, timer, request, next).await;
    tracing::debug!(%method, path, status = response.status().as_u16(), route = route.name(), "emulator request");
    response
}

async fn faulted(state: AppState, route: Route, timer: Timer, request: Request, next: Next) -> Response {
    let now_secs = state.now().timestamp();
    let traceparent = request.headers().get("traceparent").and_then(|value| value.to_str().ok());
    let fault = {
        let mut inner = state.lock();
        inner.counters.route(route, traceparent);
        inner.faults.take(route)
    };
    match fault {
        None => normal(state, route, timer, request, next).await,
        Some(Fault::Status { status, code, message, exception_fields }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let fields = (0..exception_fields)
                .map(|n| (format!("field_{n}"), Value::String(format!("field_{n} is not valid"))))
                .collect::<serde_json::Map<_, _>>();
            let error = ApiError {
                status,
                code,
                message: message
                    .unwrap_or_else(|| format!("{} failed with error: \"injected fault\"", route.operation())),
                exception_fields: (exception_fields > 0).then_some(fields),
            };
            let mut info = state.lock().limiter.peek(route, now_secs);
            if status == StatusCode::TOO_MANY_REQUESTS {
                info = info.exhausted();
            }
            with_rate(error.response(timer), info)
        }
        Some(Fault::NonJson { status, body }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
            let body = body.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
        }
        Some(Fault::Drop) => {
            if let Some(ConnectInfo(conn)) = request.extensions().get::<ConnectInfo<ConnInfo>>() {
                tracing::debug!(remote = %conn.remote, route = route.name(), "dropping the connection (injected fault)");
                conn.kill();
            }
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
        Some(Fault::Redirect { status, location }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
            let location = location.unwrap_or_else(|| request.uri().to_string());
            let location = HeaderValue::from_str(&location).unwrap_or(HeaderValue::from_static("/"));
            (status, [(header::LOCATION, location)]).into_response()
        }
        Some(Fault::Oversize { bytes }) => {
            const CHUNK: usize = 64 * 1024;
            let status = if route == Route::ExportChannels || route == Route::ExportUsers {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let head = futures::stream::once(async { Ok::<Bytes, std::io::Error>(Bytes::from_static(b"{\"pad\":\"")) });
            let chunks = usize::try_from(bytes).unwrap_or(usize::MAX) / CHUNK;
            let middle = futures::stream::iter((0..chunks).map(|_| Ok(Bytes::from(vec![b'x'; CHUNK]))));
            let tail = futures::stream::once(async { Ok(Bytes::from_static(b"\"}")) });
            let body = Body::from_stream(head.chain(middle).chain(tail));
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Some(Fault::Delay { ms }) => {
            tokio::time::sleep(StdDuration::from_millis(ms)).await;
            normal(state, route, timer, request, next).await
        }
        Some(Fault::MalformedJson) => {
            let response = normal(state, route, timer, request, next).await;
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let cut = if bytes.len() < 2 { Bytes::from_static(b"{") } else { bytes.slice(..bytes.len() / 2) };
            let mut response = Response::from_parts(parts, Body::from(cut));
            response.headers_mut().remove(header::CONTENT_LENGTH);
            response
        }
        Some(Fault::Truncated) => {
            let response = normal(state, route, timer, request, next).await;
            let (parts, body) = response.into_parts();
            let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap_or_default();
            let full = bytes.len();
            let half = bytes.slice(..full / 2);
            let first = futures::stream::once(async move { Ok::<Bytes, std::io::Error>(half) });
            let abort = futures::stream::once(async {
                tokio::time::sleep(StdDuration::from_millis(50)).await;
                Err(std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "truncated by an injected fault"))
            });
            let mut response = Response::from_parts(parts, Body::from_stream(first.chain(abort)));
            response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(full));
            response
        }
    }
}

fn with_rate(mut response: Response, info: RateInfo) -> Response {
    info.apply(response.headers_mut());
    response
}

/// Auth and rate limit, then the handler; the rate-limit headers go on every answer.
async fn normal(state: AppState, route: Route, timer: Timer, mut request: Request, next: Next) -> Response {
    let operation = route.operation();
    let now_secs = state.now().timestamp();
    let authenticated = !matches!(route, Route::Unknown | Route::Download);
    if authenticated && let Err(error) = auth::check_api_key(request.uri().query(), &state.api_key, operation) {
        let info = state.lock().limiter.peek(route, now_secs);
        return with_rate(error.response(timer), info);
    }
    let consumed = state.lock().limiter.consume(route, now_secs);
    let info = match consumed {
        Ok(info) => info,
        Err(info) => {
            state.lock().counters.rate_limited(route);
            let error = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                9,
                operation,
                "Too many requests, check response headers for more information.",
            );
            return with_rate(error.response(timer), info);
        }
    };
    if authenticated
        && let Err(error) = auth::check_jwt(request.headers(), &state.api_secret, &state.api_key, now_secs, operation)
    {
        return with_rate(error.response(timer), info);
    }
    request.extensions_mut().insert(timer);
    with_rate(next.run(request).await, info)
}

// ---------------------------------------------------------------- handlers

async fn not_found(timer: Option<Extension<Timer>>, method: Method, uri: axum::http::Uri) -> Response {
    let timer = timer.map_or_else(Timer::start, |Extension(timer)| timer);
    let detail = format!("{method} {} is not a known route", uri.path());
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: 16,
        message: format!("Not found: {detail}"),
        exception_fields: None,
    }
    .response(timer)
}

fn parse_body(operation: &str, body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::input(operation, "body", "the request body must be a JSON object")),
        Err(_) => Err(ApiError::input(operation, "body", "invalid request body: malformed JSON")),
    }
}

fn parse_time(operation: &str, field: &str, value: Option<&Value>) -> Result<Option<DateTime<Utc>>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => DateTime::parse_from_rfc3339(text)
            .map(|at| Some(at.with_timezone(&Utc)))
            .map_err(|_| ApiError::input(operation, field, &format!("{field} must be an RFC 3339 date-time"))),
        Some(_) => Err(ApiError::input(operation, field, &format!("{field} must be an RFC 3339 date-time"))),
    }
}

fn parse_flag(operation: &str, map: &Map<String, Value>, field: &str) -> Result<bool, ApiError> {
    match map.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(flag)) => Ok(*flag),
        Some(_) => Err(ApiError::input(operation, field, &format!("{field} must be a boolean"))),
    }
}

fn non_empty_str(value: Option<&Value>) -> Option<&str> {
    value.and_then(Value::as_str).filter(|text| !text.is_empty())
}

fn parse_export_channels(state: &AppState, body: &Bytes) -> Result<ChannelExportSpec, ApiError> {
    const OP: &str = "ExportChannels";
    let map = parse_body(OP, body)?;
    let channels = match map.get("channels") {
        None | Some(Value::Null) => return Err(ApiError::input(OP, "channels", "channels is a required field")),
        Some(Value::Array(channels)) => channels,
        Some(_) => return Err(ApiError::input(OP, "channels", "channels must be an array")),
    };
    if channels.is_empty() {
        return Err(ApiError::input(OP, "channels", "channels must contain at least 1 item"));
    }
    if channels.len() > state.channel_limit {
        let detail = format!("channels must contain at most {} items", state.channel_limit);
        return Err(ApiError::input(OP, "channels", &detail));
    }
    let mut selections = Vec::with_capacity(channels.len());
    for (n, channel) in channels.iter().enumerate() {
        let field = format!("channels[{n}]");
        let Value::Object(channel) = channel else {
            return Err(ApiError::input(OP, &field, &format!("{field} must be an object")));
        };
        let cid = match (
            non_empty_str(channel.get("cid")),
            non_empty_str(channel.get("type")),
            non_empty_str(channel.get("id")),
        ) {
            (Some(cid), kind, id) => {
                let valid = cid.split_once(':').is_some_and(|(t, i)| !t.is_empty() && !i.is_empty());
                let consistent = kind.is_none_or(|k| cid.starts_with(&format!("{k}:")))
                    && id.is_none_or(|i| cid.ends_with(&format!(":{i}")));
                if !valid || !consistent {
                    let detail = format!("{field}.cid must be type:id and agree with type and id");
                    return Err(ApiError::input(OP, &format!("{field}.cid"), &detail));
                }
                cid.to_owned()
            }
            (None, Some(kind), Some(id)) => format!("{kind}:{id}"),
            (None, None, _) => {
                let detail = format!("{field}.type is required when cid is not given");
                return Err(ApiError::input(OP, &format!("{field}.type"), &detail));
            }
            (None, Some(_), None) => {
                let detail = format!("{field}.id is required when cid is not given");
                return Err(ApiError::input(OP, &format!("{field}.id"), &detail));
            }
        };
        let since_field = format!("{field}.messages_since");
        let until_field = format!("{field}.messages_until");
        let since = parse_time(OP, &since_field, channel.get("messages_since"))?;
        let until = parse_time(OP, &until_field, channel.get("messages_until"))?;
        if state.data.channel_index(&cid).is_none() {
            let detail = format!("channel {cid} does not exist");
            return Err(ApiError::input(OP, &field, &detail));
        }
        selections.push(ChannelSelection { cid, since, until });
    }
    let version = match map.get("version") {
        None | Some(Value::Null) => Version::V1,
        Some(Value::String(v)) if v == "v1" => Version::V1,
        Some(Value::String(v)) if v == "v2" => Version::V2,
        Some(_) => return Err(ApiError::input(OP, "version", "version must be one of v1, v2")),
    };
    match map.get("format") {
        None | Some(Value::Null) => {}
        Some(Value::String(format)) if format == "json" => {}
        Some(_) => {
            return Err(ApiError::input(OP, "format", "format must be json (csv is not emulated)"));
        }
    }
    Ok(ChannelExportSpec {
        channels: selections,
        version,
        include_truncated: parse_flag(OP, &map, "include_truncated_messages")?,
        include_soft_deleted: parse_flag(OP, &map, "include_soft_deleted_channels")?,
        clear_deleted_text: parse_flag(OP, &map, "clear_deleted_message_text")?,
        export_users: parse_flag(OP, &map, "export_users")?,
    })
}

async fn export_channels(State(state): State<AppState>, Extension(timer): Extension<Timer>, body: Bytes) -> Response {
    match parse_export_channels(&state, &body) {
        Ok(spec) => {
            let id = state.create_task(ExportKind::Channels(spec), None);
            json(StatusCode::CREATED, timer, json!({"task_id": id.to_string()}))
        }
        Err(error) => error.response(timer),
    }
}

async fn query_channels(State(state): State<AppState>, Extension(timer): Extension<Timer>, body: Bytes) -> Response {
    const OP: &str = "QueryChannels";
    let query = parse_body(OP, &body).and_then(|map| {
        ChannelQuery::parse(&map)
            .map_err(|refused| ApiError::input(OP, &refused.field, &format!("{} {}", refused.field, refused.problem)))
    });
    match query {
        Ok(query) => {
            let data = &state.data;
            let rows: Vec<Value> = query.run(data).into_iter().map(|channel| query.row(channel, data)).collect();
            json(StatusCode::OK, timer, json!({"channels": rows}))
        }
        Err(error) => error.response(timer),
    }
}

async fn export_users(State(state): State<AppState>, Extension(timer): Extension<Timer>, body: Bytes) -> Response {
    const OP: &str = "ExportUsers";
    let parsed = (|| {
        let map = parse_body(OP, &body)?;
        let Some(Value::Array(ids)) = map.get("user_ids") else {
            return Err(ApiError::input(OP, "user_ids", "user_ids is a required array"));
        };
        if ids.is_empty() {
            return Err(ApiError::input(OP, "user_ids", "user_ids must contain at least 1 item"));
        }
        if ids.len() > state.user_ids_limit {
            let detail = format!("user_ids must contain at most {} items", state.user_ids_limit);
            return Err(ApiError::input(OP, "user_ids", &detail));
        }
        let mut out = Vec::with_capacity(ids.len());
        for (n, id) in ids.iter().enumerate() {
            let field = format!("user_ids[{n}]");
            let Some(id) = non_empty_str(Some(id)) else {
                return Err(ApiError::input(OP, &field, &format!("{field} must be a non-empty string")));
            };
            if state.data.user(id).is_none() {
                return Err(ApiError::input(OP, &field, &format!("user {id} does not exist")));
            }
            out.push(id.to_owned());
        }
        Ok(out)
    })();
    match parsed {
        Ok(ids) => {
            let error =
                ids.iter().find(|id| state.data.message_count(id) > USER_EXPORT_MESSAGE_LIMIT).map(|id| TaskError {
                    kind: "validation_error".to_owned(),
                    description: format!("user {id} has more than {USER_EXPORT_MESSAGE_LIMIT} messages"),
                });
            let id = state.create_task(ExportKind::Users(ids), error);
            json(StatusCode::CREATED, timer, json!({"task_id": id.to_string()}))
        }
        Err(error) => error.response(timer),
    }
}

/// The host the client used, for result URLs that point back at the emulator.
fn origin(state: &AppState, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .filter(|host| host.parse::<axum::http::uri::Authority>().is_ok())
        .map_or_else(|| state.local_addr.to_string(), str::to_owned)
}

fn task_status(state: &AppState, operation: &str, id: &str, headers: &HeaderMap) -> Result<Value, ApiError> {
    let missing = || ApiError::not_found(operation, &format!("task with id {id} not found"));
    let id = Uuid::parse_str(id).map_err(|_| missing())?;
    let now = state.now();
    let mut inner = state.lock();
    let task = inner.tasks.get(&id).ok_or_else(missing)?;
    let (status, since) = task.state(now);
    if status == Status::Completed && is_deleted(since, now) {
        return Err(missing());
    }
    let mut body = json!({
        "task_id": id.to_string(),
        "status": status.as_str(),
        "created_at": timestamp(task.created_at),
        "updated_at": timestamp(since),
    });
    if let Value::Object(map) = &mut body {
        match status {
            Status::Completed => {
                let (segment, file) = task.kind.location();
                let path = format!("exports/{segment}/{id}/{file}");
                let expires = now.timestamp() + URL_LIFETIME_SECS;
                let signature = super::files::sign(&state.api_secret, &format!("/{path}"), expires);
                let url = format!("http://{}/{path}?Expires={expires}&Signature={signature}", origin(state, headers));
                map.insert("result".to_owned(), json!({"url": url, "path": path, "s3_bucket_name": S3_BUCKET}));
            }
            Status::Failed => {
                let error = task.error();
                map.insert(
                    "error".to_owned(),
                    json!({
                        "type": error.kind,
                        "description": error.description,
                        "stacktrace": "",
                        "version": concat!("emulator-", env!("CARGO_PKG_VERSION")),
                    }),
                );
            }
            _ => {}
        }
    }
    inner.counters.task_read(id);
    Ok(body)
}

async fn get_export_channels(
    State(state): State<AppState>,
    Extension(timer): Extension<Timer>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match task_status(&state, Route::GetExportChannels.operation(), &id, &headers) {
        Ok(body) => json(StatusCode::OK, timer, body),
        Err(error) => error.response(timer),
    }
}

async fn get_task(
    State(state): State<AppState>,
    Extension(timer): Extension<Timer>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    match task_status(&state, Route::GetTask.operation(), &id, &headers) {
        Ok(body) => json(StatusCode::OK, timer, body),
        Err(error) => error.response(timer),
    }
}

async fn export_user(
    State(state): State<AppState>,
    Extension(timer): Extension<Timer>,
    Path(id): Path<String>,
) -> Response {
    const OP: &str = "ExportUser";
    let data = &state.data;
    let Some(user) = data.user(&id) else {
        return ApiError::not_found(OP, &format!("user {id} does not exist")).response(timer);
    };
    if data.message_count(&id) > USER_EXPORT_MESSAGE_LIMIT {
        let detail = format!(
            "user {id} has more than {USER_EXPORT_MESSAGE_LIMIT} messages, use the asynchronous export (POST /export/users)"
        );
        return ApiError::input(OP, "user_id", &detail).response(timer);
    }
    let mut messages: Vec<Value> =
        data.authored(&id).into_iter().map(|(channel, message)| message.json(channel, None, false)).collect();
    if let Some(channel) = data.heavy_channel().filter(|_| id == HEAVY_USER) {
        messages.extend(channel.messages().iter().map(|message| message.json(channel, None, false)));
    }
    let reactions: Vec<Value> =
        data.reactions_by(&id).into_iter().map(|(_, message, reaction)| reaction.json(message, None)).collect();
    json(StatusCode::OK, timer, json!({"user": user.json(), "messages": messages, "reactions": reactions}))
}

fn access_denied(message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>AccessDenied</Code><Message>{message}</Message><RequestId>EMULATOR</RequestId><HostId>stream-export-emulator</HostId></Error>"
    );
    (StatusCode::FORBIDDEN, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

/// Whether a file completed `since` was deleted by `now`: Stream keeps export files (and
/// re-signs their URLs) for 60 days; then the file and the task are gone.
fn is_deleted(since: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now - since > chrono::Duration::days(FILE_RETENTION_DAYS)
}

/// How long Stream keeps an export file.
const FILE_RETENTION_DAYS: i64 = 60;

fn no_such_key() -> Response {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";
    (StatusCode::NOT_FOUND, [(header::CONTENT_TYPE, "application/xml")], body).into_response()
}

async fn download(
    State(state): State<AppState>,
    Path((segment, task, file)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    uri: axum::http::Uri,
) -> Response {
    let mut expires = None;
    let mut signature = None;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "Expires" => expires = value.parse::<i64>().ok(),
            "Signature" => signature = Some(value.into_owned()),
            _ => {}
        }
    }
    let (Some(expires), Some(signature)) = (expires, signature) else {
        return access_denied("Query-string authentication requires the Signature and Expires parameters");
    };
    if !super::files::verify(&state.api_secret, uri.path(), expires, &signature) {
        return access_denied("The request signature we calculated does not match the signature you provided.");
    }
    let now = state.now();
    if now.timestamp() > expires {
        return access_denied("Request has expired");
    }
    let kind = {
        let inner = state.lock();
        let task = Uuid::parse_str(&task).ok().and_then(|id| inner.tasks.get(&id));
        match task {
            Some(task)
                if task.state(now).0 == Status::Completed
                    && !is_deleted(task.state(now).1, now)
                    && task.kind.location() == (segment.as_str(), file.as_str()) =>
            {
                task.kind.clone()
            }
            _ => return no_such_key(),
        }
    };
    let content_type = kind.content_type();
    if let ExportKind::Synthetic(spec) = kind {
        let body = axum::body::Body::from_stream(spec.stream());
        return (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response();
    }
    let data = std::sync::Arc::clone(&state.data);
    let built = tokio::task::spawn_blocking(move || kind.build(&data)).await;
    match built {
        Ok(bytes) => (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], bytes).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
