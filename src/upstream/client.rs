//! The HTTP client: one pooled connection set, every request signed the way Stream expects.

use std::{sync::Arc, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use tokio::time::Instant;

use bytes::Bytes;
use http::{
    Method, StatusCode,
    header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderName, HeaderValue},
};
use hyper_util::client::proxy::matcher::Matcher;
use secrecy::ExposeSecret;
use serde::{Serialize, de::DeserializeOwned};
use url::Url;

use crate::telemetry::{
    metrics,
    otel::{self, ClientOutcome},
    trace_context::TraceContext,
};

use super::{
    api_http::{ApiHttp, ApiHttpConfig},
    auth::Credentials,
    body::{self, MAX_ERROR_BODY_BYTES, OverCap},
    destination::{CheckingResolver, DestinationPolicy, Refused, same_origin},
    error::{Operation, UpstreamError},
    rate_limit::RateLimit,
    wire::{
        ApiErrorBody, ExportChannelsBody, ExportUsersBody, QueriedChannels, QueryChannelsBody, TaskCreated, TaskStatus,
        UserExport,
    },
};

/// How much of a non-JSON error body is kept in the error message.
const MAX_QUOTED_BODY: usize = 200;

/// Most redirects a download follows, all within the result URL's origin (a storage service
/// may redirect to another region's endpoint of the same host, or add a slash).
pub const MAX_DOWNLOAD_REDIRECTS: usize = 3;

/// Settings of the upstream client.
#[derive(Debug)]
pub struct ClientConfig {
    /// The API origin; paths are joined to it.
    pub base_url: Url,
    /// API key and server token.
    pub credentials: Credentials,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// Time allowed for a whole request, body included.
    pub request_timeout: Duration,
    /// How failed requests are retried.
    pub retry: RetryPolicy,
}

/// How failed upstream requests are retried: with jittered exponential backoff, and only when
/// a second request cannot do harm. A connection that could not be opened never carried the
/// request, so any call is retried; the GETs are also retried on 5xx, timeouts and broken
/// connections; a submit (POST) that may have reached Stream is never sent again, since that
/// could start a second export. 429 is never retried here: the caller gets `RetryInfo`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The first backoff.
    pub initial_backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// No retries at all.
    pub const NONE: Self =
        Self { max_retries: 0, initial_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(1) };

    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.initial_backoff)
            .with_max_delay(self.max_backoff)
            .with_max_times(self.max_retries)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_retries: 2, ..Self::NONE }
    }
}

/// A successful upstream answer with the rate-limit state it reported.
#[derive(Clone, Debug)]
pub struct Answer<T> {
    /// The decoded body.
    pub body: T,
    /// The route's rate-limit window after this request.
    pub rate_limit: Option<RateLimit>,
}

/// The Stream export API client. Cheap to clone: clones share one connection pool.
#[derive(Clone, Debug)]
pub struct StreamClient {
    /// The client of API calls (hyper's, lean: see [`ApiHttp`]).
    api: ApiHttp,
    /// The client for export files: a redirect policy and a checking resolver.
    downloads: reqwest::Client,
    destinations: Arc<DestinationPolicy>,
    request_timeout: Duration,
    retry: RetryPolicy,
}

impl StreamClient {
    /// Builds the client: rustls with the bundled web PKI roots (so it runs in a scratch
    /// container), HTTP/1.1 or HTTP/2 by ALPN, pooled connections, the proxy environment
    /// (`HTTPS_PROXY`, `NO_PROXY`, …), never a `Referer` (it would carry the api key or a signed
    /// URL).
    ///
    /// API calls follow no redirect: Stream does not send any, and following one would carry
    /// the server token to wherever it points. Downloads follow a few within the result URL's
    /// origin and reach only the destinations [`DestinationPolicy`] allows.
    pub fn new(config: ClientConfig) -> anyhow::Result<Self> {
        // The API client signs every request with headers built once; the download client
        // never carries them (a result URL is signed itself).
        let api = ApiHttp::new(ApiHttpConfig {
            base_url: &config.base_url,
            api_key: config.credentials.api_key(),
            headers: api_headers(&config.credentials)?,
            connect_timeout: config.connect_timeout,
            tls: tls_config()?,
            proxies: Matcher::from_env(),
        })?;
        let destinations = Arc::new(DestinationPolicy::new(config.base_url));
        let downloads = reqwest::Client::builder()
            .default_headers(static_headers())
            .connect_timeout(config.connect_timeout)
            // Per read, so a long download is fine while a stalled one is not.
            .read_timeout(config.request_timeout)
            .pool_idle_timeout(Duration::from_secs(55))
            .referer(false)
            .tls_backend_preconfigured(tls_config()?)
            .redirect(reqwest::redirect::Policy::custom(same_origin_redirects))
            .dns_resolver(CheckingResolver(Arc::clone(&destinations)))
            .build()?;
        Ok(Self { api, downloads, destinations, request_timeout: config.request_timeout, retry: config.retry })
    }

    /// The same client with another retry policy (the watch pollers keep their own pace).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// `POST /export_channels`: starts a channel export.
    pub async fn export_channels(
        &self,
        body: &ExportChannelsBody,
        deadline: Option<Instant>,
    ) -> Result<Answer<TaskCreated>, UpstreamError> {
        self.send(Operation::ExportChannels, Method::POST, &["export_channels"], Some(body), deadline).await
    }

    /// `POST /export/users`: starts a batch user export.
    pub async fn export_users(
        &self,
        body: &ExportUsersBody,
        deadline: Option<Instant>,
    ) -> Result<Answer<TaskCreated>, UpstreamError> {
        self.send(Operation::ExportUsers, Method::POST, &["export", "users"], Some(body), deadline).await
    }

    /// `GET /users/{id}/export`: one user's data, synchronously.
    pub async fn export_user(
        &self,
        user_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<UserExport>, UpstreamError> {
        self.send(Operation::ExportUser, Method::GET, &["users", user_id, "export"], None::<&()>, deadline).await
    }

    /// `GET /tasks/{id}`: a task's status; re-signs a completed task's result URL.
    pub async fn get_task(
        &self,
        task_id: &str,
        deadline: Option<Instant>,
    ) -> Result<Answer<TaskStatus>, UpstreamError> {
        self.send(Operation::GetTask, Method::GET, &["tasks", task_id], None::<&()>, deadline).await
    }

    /// `POST /channels`: one page of the channels a filter matches (see `channel_list` for
    /// listing them all).
    pub async fn query_channels(
        &self,
        body: &QueryChannelsBody,
        deadline: Option<Instant>,
    ) -> Result<Answer<QueriedChannels>, UpstreamError> {
        self.send(Operation::QueryChannels, Method::POST, &["channels"], Some(body), deadline).await
    }

    /// Starts the download of an export file from a result URL that upstream returned (the URL
    /// is signed itself: no Stream credentials are sent). The body is left to stream; each read
    /// may wait at most the request timeout. A destination the [`DestinationPolicy`] refuses, or
    /// a redirect to another origin, is [`UpstreamError::Refused`].
    pub async fn download(&self, url: &str) -> Result<reqwest::Response, UpstreamError> {
        let operation = Operation::Download;
        let url = Url::parse(url).map_err(|error| UpstreamError::Decode {
            operation,
            status: 200,
            detail: format!("the result URL does not parse: {error}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            let detail = format!("the result URL's scheme {} is not http or https", url.scheme());
            return Err(UpstreamError::Refused { operation, detail });
        }
        self.destinations
            .check_literal(&url)
            .await
            .map_err(|refused| UpstreamError::Refused { operation, detail: refused.to_string() })?;
        // The client span names the file by host and path: the query is the signature.
        let span =
            otel::client_span("GET", url.host_str().unwrap_or_default(), url.port_or_known_default(), url.path(), 0);
        let sent = self.downloads.get(url).send().await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                let error = UpstreamError::from_reqwest(operation, error);
                otel::client_span_ended(&span, ClientOutcome::Failed(transport_label(&error)));
                return Err(error);
            }
        };
        let status = response.status();
        otel::client_span_ended(&span, ClientOutcome::Answered { status: status.as_u16(), stream_code: None });
        if status.is_success() {
            return Ok(response);
        }
        // The body is not quoted: a storage error document can echo the signature.
        Err(UpstreamError::Api {
            operation,
            status: status.as_u16(),
            code: None,
            message: "the file server refused the download".into(),
            exception_fields: Default::default(),
            rate_limit: None,
        })
    }

    /// Sends a request, retrying what is safe to retry (see [`RetryPolicy`]) as long as the
    /// next attempt can start before `deadline`.
    async fn send<B: Serialize + ?Sized + Sync, T: DeserializeOwned>(
        &self,
        operation: Operation,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
        deadline: Option<Instant>,
    ) -> Result<Answer<T>, UpstreamError> {
        let attempts = std::sync::atomic::AtomicUsize::new(0);
        let attempt = || {
            let resend = attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.send_once(operation, method.clone(), segments, body, deadline, resend)
        };
        attempt
            .retry(self.retry.backoff())
            .sleep(tokio::time::sleep)
            .when(|error| error.is_retryable())
            .adjust(|_, delay| delay.filter(|delay| deadline.is_none_or(|d| Instant::now() + *delay < d)))
            .notify(|error, delay| tracing::debug!(%error, ?delay, "retrying upstream request"))
            .await
    }

    /// One attempt, bounded by the request timeout and what is left of `deadline`, in a client
    /// span of its own (`resend`: the attempts before this one).
    async fn send_once<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        operation: Operation,
        method: Method,
        segments: &[&str],
        body: Option<&B>,
        deadline: Option<Instant>,
        resend: usize,
    ) -> Result<Answer<T>, UpstreamError> {
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if remaining.is_some_and(|r| r.is_zero()) {
            return Err(UpstreamError::DeadlineExceeded { operation });
        }
        let timeout = remaining.map_or(self.request_timeout, |r| r.min(self.request_timeout));
        let cut_by_deadline = timeout < self.request_timeout;

        let path = self.api.path(segments);
        let span = otel::client_span(method.as_str(), self.api.host(), self.api.port(), &path, resend);
        let mut headers = HeaderMap::new();
        if let Some(trace) = TraceContext::outgoing(span.span_context()) {
            if let Ok(parent) = HeaderValue::try_from(trace.traceparent) {
                headers.insert(HeaderName::from_static("traceparent"), parent);
            }
            if let Some(Ok(state)) = trace.tracestate.map(HeaderValue::try_from) {
                headers.insert(HeaderName::from_static("tracestate"), state);
            }
        }
        let body = match body.map(serde_json::to_vec).transpose() {
            Ok(body) => body.map(Bytes::from),
            Err(error) => return Err(UpstreamError::Transport { operation, detail: error.to_string() }),
        };
        let started = std::time::Instant::now();
        let exchange = async {
            let response =
                self.api.send(method, &path, headers, body).await.map_err(|error| error.classify(operation))?;
            let status = response.status();
            let rate_limit = RateLimit::from_headers(response.headers());
            let limit = if status.is_success() { operation.max_body_bytes() } else { MAX_ERROR_BODY_BYTES };
            let bytes = body::read_capped(response.into_body(), limit)
                .await
                .map_err(|error| UpstreamError::from_transport(operation, &error, false))?;
            Ok((status, rate_limit, bytes))
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(UpstreamError::Timeout { operation }))
            .map_err(|error| match error {
                UpstreamError::Timeout { .. } if cut_by_deadline => UpstreamError::DeadlineExceeded { operation },
                other => other,
            });
        let (status, rate_limit, bytes) = match answer {
            Ok(answer) => answer,
            Err(error) => {
                metrics::upstream(operation.name(), transport_label(&error), started.elapsed(), None);
                otel::client_span_ended(&span, ClientOutcome::Failed(transport_label(&error)));
                return Err(error);
            }
        };
        metrics::upstream(operation.name(), status.as_str(), started.elapsed(), rate_limit.map(|l| l.remaining));
        let decoded = self.decode_answer(operation, status, rate_limit, bytes);
        let stream_code = match &decoded {
            Err(UpstreamError::Api { code, .. }) => *code,
            _ => None,
        };
        otel::client_span_ended(&span, ClientOutcome::Answered { status: status.as_u16(), stream_code });
        decoded
    }

    /// The answer read by [`Self::send_once`], decoded.
    fn decode_answer<T: DeserializeOwned>(
        &self,
        operation: Operation,
        status: StatusCode,
        rate_limit: Option<RateLimit>,
        bytes: Result<bytes::Bytes, OverCap>,
    ) -> Result<Answer<T>, UpstreamError> {
        match bytes {
            Ok(bytes) => decode(operation, status, rate_limit, &bytes),
            Err(OverCap { limit }) if status.is_success() => Err(UpstreamError::TooLarge { operation, limit }),
            Err(OverCap { limit }) => Err(UpstreamError::Api {
                operation,
                status: status.as_u16(),
                code: None,
                message: format!("(an error body over {limit} bytes, not read)"),
                exception_fields: Default::default(),
                rate_limit,
            }),
        }
    }
}

/// The download redirect policy: at most [`MAX_DOWNLOAD_REDIRECTS`], each within the origin of
/// the result URL (a signed URL is only valid where it was signed; another origin is where a
/// compromised file server would send the service).
fn same_origin_redirects(attempt: reqwest::redirect::Attempt<'_>) -> reqwest::redirect::Action {
    let previous = attempt.previous();
    let Some(first) = previous.first() else { return attempt.follow() };
    if previous.len() > MAX_DOWNLOAD_REDIRECTS {
        let refused = Refused(format!("the file server redirected more than {MAX_DOWNLOAD_REDIRECTS} times"));
        return attempt.error(refused);
    }
    if !same_origin(first, attempt.url()) {
        let to = attempt.url().host_str().unwrap_or("(no host)").to_owned();
        let refused = Refused(format!("the file server redirected the download to another origin ({to})"));
        return attempt.error(refused);
    }
    attempt.follow()
}

/// The metrics label of a request that got no HTTP answer.
fn transport_label(error: &UpstreamError) -> &'static str {
    match error {
        UpstreamError::Connect { .. } => "connect",
        UpstreamError::Timeout { .. } | UpstreamError::DeadlineExceeded { .. } => "timeout",
        _ => "transport",
    }
}

/// Decodes an upstream answer (its status, the rate limit read from its headers, its body): a
/// success body into `T`, anything else into an [`UpstreamError`]. Pure, so that it can be
/// fuzzed: no input makes it panic.
pub fn decode<T: DeserializeOwned>(
    operation: Operation,
    status: StatusCode,
    rate_limit: Option<RateLimit>,
    bytes: &[u8],
) -> Result<Answer<T>, UpstreamError> {
    if status.is_success() {
        let body = serde_json::from_slice(bytes).map_err(|error| UpstreamError::Decode {
            operation,
            status: status.as_u16(),
            detail: error.to_string(),
        })?;
        return Ok(Answer { body, rate_limit });
    }
    Err(api_error(operation, status, bytes, rate_limit))
}

/// Turns an error response into an [`UpstreamError::Api`], reading Stream's error document
/// when there is one.
fn api_error(operation: Operation, status: StatusCode, bytes: &[u8], rate_limit: Option<RateLimit>) -> UpstreamError {
    let (code, message, exception_fields) = match serde_json::from_slice::<ApiErrorBody>(bytes) {
        Ok(body) => (Some(body.code), body.message, body.exception_fields),
        Err(_) => (None, quote_body(bytes), Default::default()),
    };
    UpstreamError::Api { operation, status: status.as_u16(), code, message, exception_fields, rate_limit }
}

/// The start of a non-JSON body, printable characters only, for an error message.
fn quote_body(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let quoted: String = text.chars().filter(|c| !c.is_control() || *c == ' ').take(MAX_QUOTED_BODY).collect();
    if quoted.trim().is_empty() { "(empty body)".to_owned() } else { quoted.trim().to_owned() }
}

/// The headers of every API request: [`static_headers`] and Stream's server-side auth (the
/// JWT marked sensitive, so that no debug output of a request shows it).
fn api_headers(credentials: &Credentials) -> anyhow::Result<HeaderMap> {
    let mut headers = static_headers();
    headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
    headers.insert(HeaderName::from_static("stream-auth-type"), HeaderValue::from_static("jwt"));
    let mut token = HeaderValue::from_str(credentials.server_token().expose_secret())
        .map_err(|_| anyhow::anyhow!("the server token is not a valid header value"))?;
    token.set_sensitive(true);
    headers.insert(AUTHORIZATION, token);
    Ok(headers)
}

fn static_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        HeaderName::from_static("x-stream-client"),
        HeaderValue::from_static(concat!("stream-export-", env!("CARGO_PKG_VERSION"))),
    );
    headers
}

fn tls_config() -> Result<rustls::ClientConfig, rustls::Error> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
