//! The HTTP client of API calls: hyper-util's pooled client over rustls, with every part of a
//! request that never changes (origin, base path, `api_key` query, auth headers) built once.
//!
//! Why not reqwest, which the downloads use: on a `GetTask` that answers in a few hundred
//! microseconds, reqwest re-parses each request's URL (twice) and carries per-request machinery
//! that costs 11–19 µs of CPU per call (BENCHMARKS.md, issue 14). What reqwest did for API calls is
//! kept: TLS with the bundled roots and ALPN (HTTP/1.1 or HTTP/2), connect and request timeouts,
//! pooled connections closed after 55 s idle, TCP keepalive and `TCP_NODELAY`, no redirects, the
//! `HTTP(S)_PROXY`/`ALL_PROXY`/`NO_PROXY` environment (as curl reads it), and error texts without
//! the URL (it holds the api key).

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, Uri,
    header::{CONTENT_TYPE, PROXY_AUTHORIZATION},
};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::{
    client::{
        legacy::{
            Client,
            connect::{Connected, Connection, HttpConnector, proxy::Tunnel},
        },
        proxy::matcher::Matcher,
    },
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use tokio::net::TcpStream;
use url::Url;

use super::error::{Operation, UpstreamError};

/// The characters a path segment escapes: the set of `url`'s `path_segments_mut`, so an id with a
/// `/`, `?` or `%` stays one segment, and `.`, so that no id can become a dot segment (`..`) that
/// a proxy normalising the path would resolve to another endpoint.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b'.')
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'<')
    .add(b'>')
    .add(b'`')
    .add(b'?')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'%');

/// Stream's load balancers drop idle connections after 60 s; ours go first.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(55);

/// TCP keepalive probes on pooled connections (reqwest's defaults).
const TCP_KEEPALIVE: Duration = Duration::from_secs(15);

/// How an API client connects: its settings.
pub(super) struct ApiHttpConfig<'a> {
    /// The API origin and base path.
    pub base_url: &'a Url,
    /// The `api_key` query parameter of every request.
    pub api_key: &'a str,
    /// Headers of every request (auth, client name).
    pub headers: HeaderMap,
    /// Time allowed to open a connection.
    pub connect_timeout: Duration,
    /// TLS settings (roots, provider); ALPN is set here.
    pub tls: rustls::ClientConfig,
    /// The proxy rules (normally [`Matcher::from_env`]).
    pub proxies: Matcher,
}

/// The API's HTTP client. Cheap to clone: clones share one pool.
#[derive(Clone)]
pub(super) struct ApiHttp {
    client: Client<HttpsConnector<Route>, Full<Bytes>>,
    /// `scheme://authority`.
    origin: String,
    /// The base path without its trailing `/` (`""` for the root).
    base_path: String,
    /// `api_key=<form-encoded key>`.
    query: String,
    headers: HeaderMap,
    /// The API's host and port, for the client spans.
    host: String,
    port: Option<u16>,
}

impl std::fmt::Debug for ApiHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the query (the api key) nor the headers (the JWT).
        f.debug_struct("ApiHttp").field("origin", &self.origin).field("base_path", &self.base_path).finish()
    }
}

impl ApiHttp {
    /// Builds the client. Fails on a proxy setting it cannot honour (SOCKS) or a base URL
    /// without a host.
    pub(super) fn new(config: ApiHttpConfig<'_>) -> anyhow::Result<Self> {
        let base_url = config.base_url;
        let host = base_url.host_str().ok_or_else(|| anyhow::anyhow!("the upstream URL has no host"))?;
        // `host_str` brackets an IPv6 address, as an authority needs it.
        let origin = match base_url.port() {
            Some(port) => format!("{}://{host}:{port}", base_url.scheme()),
            None => format!("{}://{host}", base_url.scheme()),
        };
        let origin_uri: Uri = origin.parse()?;
        let mut headers = config.headers;

        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(config.connect_timeout));
        tcp.set_keepalive(Some(TCP_KEEPALIVE));
        let route = match config.proxies.intercept(&origin_uri) {
            None => Route::Direct(tcp),
            Some(proxy) => {
                let proxy_uri = proxy.uri().clone();
                if !matches!(proxy_uri.scheme_str(), Some("http" | "https")) {
                    anyhow::bail!(
                        "the proxy for {origin} is not an http:// or https:// proxy (SOCKS is not supported)"
                    );
                }
                // The proxy's own TLS (an https:// proxy) speaks HTTP/1.1: CONNECT or forwarding.
                let to_proxy = HttpsConnectorBuilder::new()
                    .with_tls_config(without_alpn(&config.tls))
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(tcp);
                if base_url.scheme() == "https" {
                    let tunnel = Tunnel::new(proxy_uri, to_proxy);
                    Route::Tunnel(match proxy.basic_auth() {
                        Some(auth) => tunnel.with_auth(auth.clone()),
                        None => tunnel,
                    })
                } else {
                    if let Some(auth) = proxy.basic_auth() {
                        let mut auth = auth.clone();
                        auth.set_sensitive(true);
                        headers.insert(PROXY_AUTHORIZATION, auth);
                    }
                    Route::Forward { to_proxy, proxy: proxy_uri }
                }
            }
        };
        let connector = HttpsConnectorBuilder::new()
            .with_tls_config(without_alpn(&config.tls))
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(route);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .build(connector);
        let query =
            format!("api_key={}", url::form_urlencoded::byte_serialize(config.api_key.as_bytes()).collect::<String>());
        Ok(Self {
            client,
            origin,
            base_path: base_url.path().trim_end_matches('/').to_owned(),
            query,
            headers,
            host: host.to_owned(),
            port: base_url.port_or_known_default(),
        })
    }

    /// The API's host.
    pub(super) fn host(&self) -> &str {
        &self.host
    }

    /// The API's port.
    pub(super) fn port(&self) -> Option<u16> {
        self.port
    }

    /// The path of an endpoint: the base path and `segments`, each escaped.
    pub(super) fn path(&self, segments: &[&str]) -> String {
        let mut path = self.base_path.clone();
        for segment in segments {
            path.push('/');
            path.extend(utf8_percent_encode(segment, PATH_SEGMENT));
        }
        path
    }

    /// Sends `method path?api_key=…` with the client's headers, `extra` headers and a JSON
    /// `body`; the answer's body is left to read.
    pub(super) async fn send(
        &self,
        method: Method,
        path: &str,
        extra: HeaderMap,
        body: Option<Bytes>,
    ) -> Result<Response<Incoming>, SendError> {
        let uri = Uri::try_from(format!("{}{path}?{}", self.origin, self.query)).map_err(SendError::Uri)?;
        let has_body = body.is_some();
        let mut request = Request::new(Full::new(body.unwrap_or_default()));
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.clone_from(&self.headers);
        headers.extend(extra);
        if has_body {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
        self.client.request(request).await.map_err(SendError::Http)
    }
}

/// Why a request got no answer.
#[derive(Debug)]
pub(super) enum SendError {
    /// The path did not make a URI (a byte the escaping let through).
    Uri(http::uri::InvalidUri),
    /// Connecting, the proxy, TLS or the exchange failed.
    Http(hyper_util::client::legacy::Error),
}

impl SendError {
    /// What the failure means to the caller (a connection that could not be opened never
    /// carried the request, so even a submit may be sent again).
    pub(super) fn classify(self, operation: Operation) -> UpstreamError {
        match self {
            SendError::Uri(error) => {
                UpstreamError::Transport { operation, detail: format!("the request path is not a valid URI: {error}") }
            }
            SendError::Http(error) => UpstreamError::from_transport(operation, &error, error.is_connect()),
        }
    }
}

/// The TLS settings without ALPN protocols: the connector builder sets them per connection kind.
fn without_alpn(tls: &rustls::ClientConfig) -> rustls::ClientConfig {
    let mut tls = tls.clone();
    tls.alpn_protocols.clear();
    tls
}

/// How a connection to the API is opened: directly, through a CONNECT tunnel (an `https://` API
/// behind a proxy; TLS stays end to end), or to a forwarding proxy (an `http://` API; requests go
/// in absolute form).
#[derive(Clone)]
enum Route {
    Direct(HttpConnector),
    Tunnel(Tunnel<HttpsConnector<HttpConnector>>),
    Forward { to_proxy: HttpsConnector<HttpConnector>, proxy: Uri },
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Route {
    type Response = RouteIo;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<RouteIo, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match self {
            Route::Direct(tcp) => tower::Service::<Uri>::poll_ready(tcp, cx).map_err(Into::into),
            Route::Tunnel(tunnel) => tower::Service::<Uri>::poll_ready(tunnel, cx).map_err(Into::into),
            Route::Forward { to_proxy, .. } => tower::Service::<Uri>::poll_ready(to_proxy, cx),
        }
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        match self {
            Route::Direct(tcp) => {
                let connecting = tower::Service::call(tcp, destination);
                Box::pin(async move {
                    let io = connecting.await?;
                    Ok(RouteIo { io: MaybeHttpsStream::Http(io), proxied: false })
                })
            }
            Route::Tunnel(tunnel) => {
                let connecting = tower::Service::call(tunnel, destination);
                Box::pin(async move { Ok(RouteIo { io: connecting.await?, proxied: false }) })
            }
            Route::Forward { to_proxy, proxy } => {
                let connecting = tower::Service::call(to_proxy, proxy.clone());
                Box::pin(async move { Ok(RouteIo { io: connecting.await?, proxied: true }) })
            }
        }
    }
}

/// A connection opened by a [`Route`]; `proxied` makes the client send absolute-form requests.
struct RouteIo {
    io: MaybeHttpsStream<TokioIo<TcpStream>>,
    proxied: bool,
}

impl Connection for RouteIo {
    fn connected(&self) -> Connected {
        self.io.connected().proxy(self.proxied)
    }
}

impl hyper::rt::Read for RouteIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for RouteIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(base: &str, proxies: Matcher) -> anyhow::Result<ApiHttp> {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let base_url = Url::parse(base)?;
        ApiHttp::new(ApiHttpConfig {
            base_url: &base_url,
            api_key: "key&=+ é",
            headers: HeaderMap::new(),
            connect_timeout: Duration::from_secs(1),
            tls,
            proxies,
        })
    }

    #[tokio::test]
    async fn paths_escape_each_segment_and_keep_the_base_path() {
        let api = build("https://api.example.com/", Matcher::builder().build()).unwrap();
        assert_eq!(api.path(&["tasks", "a/b c?%"]), "/tasks/a%2Fb%20c%3F%25");
        assert_eq!(api.path(&["users", "zoë", "export"]), "/users/zo%C3%AB/export");
        assert_eq!(api.path(&["users", "..", "export"]), "/users/%2E%2E/export", "never a dot segment");
        assert_eq!(api.path(&["users", "john.doe", "export"]), "/users/john%2Edoe/export");
        assert_eq!(api.query, "api_key=key%26%3D%2B+%C3%A9");
        assert_eq!((api.host(), api.port()), ("api.example.com", Some(443)));
        let local = build("http://[::1]:8080/v1/", Matcher::builder().build()).unwrap();
        assert_eq!(local.path(&["tasks", "t"]), "/v1/tasks/t");
        assert_eq!(local.origin, "http://[::1]:8080");
    }

    #[tokio::test]
    async fn a_socks_proxy_is_refused_at_startup() {
        let socks = Matcher::builder().all("socks5://127.0.0.1:1080").build();
        let refused = build("https://api.example.com/", socks).unwrap_err();
        assert!(refused.to_string().contains("SOCKS is not supported"), "{refused}");
    }
}
