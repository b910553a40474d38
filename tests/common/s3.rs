//! A real S3 server for the archive tests: s3s-fs over a scratch directory, served by hyper in
//! the test process on a loopback port, with one bucket ([`BUCKET`]) and fixed credentials
//! (requests are SigV4-checked, as AWS checks them).
//!
//! Every request passes a wrapper first, which counts it by [`RequestKind`], can answer it with
//! an injected failure ([`S3Server::fail_next`]) or hold it ([`S3Server::hold`]) before s3s-fs
//! sees it. The test reads what was stored straight from the directory ([`S3Server::object`],
//! [`S3Server::keys`], [`S3Server::pending_uploads`]): s3s-fs keeps an object as a plain file
//! at `<root>/<bucket>/<key>`, and its multipart state as hidden files in `<root>`.
//!
//! Dropping the server stops it: its accept loop and every open connection end.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http_body_util::BodyExt;
use hyper::{Request, Response, StatusCode, body::Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto::Builder as ConnBuilder,
};
use s3s::{Body, auth::SimpleAuth, service::S3ServiceBuilder};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};

/// The bucket every server has from the start.
pub const BUCKET: &str = "exports";
/// The access key the server accepts.
pub const ACCESS_KEY: &str = "test-access-key";
/// The secret of [`ACCESS_KEY`].
pub const SECRET_KEY: &str = "test-secret-key-0123456789abcdef";
/// The region clients sign for (s3s checks the signature, not the region).
pub const REGION: &str = "us-east-1";

/// What an S3 request does, as told by its method, path and query (path-style requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// `PUT /bucket/key` without `uploadId`: PutObject (also CopyObject).
    Put,
    /// `POST /bucket/key?uploads`: CreateMultipartUpload.
    CreateMultipart,
    /// `PUT /bucket/key?partNumber=N&uploadId=U`: UploadPart.
    UploadPart,
    /// `POST /bucket/key?uploadId=U`: CompleteMultipartUpload.
    Complete,
    /// `DELETE /bucket/key?uploadId=U`: AbortMultipartUpload.
    Abort,
    /// `GET /bucket/key`: GetObject.
    Get,
    /// `HEAD /bucket/key`: HeadObject.
    Head,
    /// `GET /bucket?...`: a listing.
    List,
    /// `DELETE /bucket/key`: DeleteObject.
    Delete,
    /// Anything else (bucket operations, batch delete, ...).
    Other,
}

impl RequestKind {
    /// The kind of a request, from its method, path and query.
    pub fn of<B>(request: &Request<B>) -> Self {
        let query: Vec<&str> = request
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .map(|pair| pair.split_once('=').map_or(pair, |(name, _)| name))
            .collect();
        let has = |name: &str| query.contains(&name);
        let has_key =
            request.uri().path().trim_start_matches('/').split_once('/').is_some_and(|(_, key)| !key.is_empty());
        match request.method().as_str() {
            "PUT" if has_key && has("uploadId") && has("partNumber") => Self::UploadPart,
            "PUT" if has_key => Self::Put,
            "POST" if has_key && has("uploads") => Self::CreateMultipart,
            "POST" if has_key && has("uploadId") => Self::Complete,
            "DELETE" if has_key && has("uploadId") => Self::Abort,
            "DELETE" if has_key => Self::Delete,
            "GET" if has_key => Self::Get,
            "GET" => Self::List,
            "HEAD" if has_key => Self::Head,
            _ => Self::Other,
        }
    }
}

/// An injected failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `500 InternalError` with S3's XML error body (the request body is read first).
    InternalError,
    /// `503 SlowDown` with S3's XML error body (the request body is read first).
    SlowDown,
    /// The connection closed mid-request: some of the body is read, then no answer at all.
    Drop,
    /// The request is carried out, then the connection closes instead of the answer: the
    /// client cannot tell that it succeeded (its retry meets the done work).
    LoseAnswer,
}

#[derive(Default)]
struct Faults {
    /// The requests seen, by kind, failed and held ones included.
    counts: Vec<(RequestKind, usize)>,
    /// Failures still to inject, in order, each for one request of its kind.
    failures: VecDeque<(RequestKind, Failure)>,
    /// Requests waiting behind a hold now.
    held: usize,
}

struct Shared {
    faults: Mutex<Faults>,
    /// The kinds held now (every [`Hold`] adds one entry; dropping it removes it).
    holds: watch::Sender<Vec<RequestKind>>,
    /// Serialises create-only puts, so that two racing `If-None-Match: *` puts cannot both win
    /// (s3s-fs checks that the file exists, then writes it).
    creates: tokio::sync::Mutex<()>,
}

impl Shared {
    fn count(&self, kind: RequestKind) -> Option<Failure> {
        let mut faults = self.faults.lock().unwrap();
        match faults.counts.iter_mut().find(|(counted, _)| *counted == kind) {
            Some((_, count)) => *count += 1,
            None => faults.counts.push((kind, 1)),
        }
        let position = faults.failures.iter().position(|(failing, _)| *failing == kind)?;
        faults.failures.remove(position).map(|(_, failure)| failure)
    }

    async fn wait_while_held(&self, kind: RequestKind) {
        let mut holds = self.holds.subscribe();
        if !holds.borrow().contains(&kind) {
            return;
        }
        self.faults.lock().unwrap().held += 1;
        let _ = holds.wait_for(|held| !held.contains(&kind)).await;
        self.faults.lock().unwrap().held -= 1;
    }
}

/// A running loopback S3 server (see the module's documentation).
pub struct S3Server {
    /// Its port on 127.0.0.1.
    pub port: u16,
    root: PathBuf,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl S3Server {
    /// Starts one on a free loopback port, over a new scratch directory, with [`BUCKET`] made.
    pub async fn start() -> Self {
        // object_store's reqwest has no crypto provider of its own (the tree keeps rustls to
        // ring): without a process default, building an S3 client panics, even over plain HTTP.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root = std::env::temp_dir().join(format!("stream-export-s3-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(root.join(BUCKET)).expect("a directory for the S3 server");
        let filesystem = s3s_fs::FileSystem::new(&root).expect("s3s-fs opens its directory");
        let mut builder = S3ServiceBuilder::new(filesystem);
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let s3 = builder.build();
        let shared = Arc::new(Shared {
            faults: Mutex::default(),
            holds: watch::Sender::new(Vec::new()),
            creates: tokio::sync::Mutex::new(()),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port for the S3 server");
        let port = listener.local_addr().expect("a bound address").port();
        let handler = shared.clone();
        let server = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((socket, _)) = listener.accept().await else { continue };
                let (s3, shared) = (s3.clone(), handler.clone());
                let service = hyper::service::service_fn(move |request| handle(s3.clone(), shared.clone(), request));
                connections.spawn(async move {
                    let _ =
                        ConnBuilder::new(TokioExecutor::new()).serve_connection(TokioIo::new(socket), service).await;
                });
                while connections.try_join_next().is_some() {}
            }
        });
        Self { port, root, shared, server }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://exports/<path>`: a URL in the server's bucket.
    pub fn url(&self, path: &str) -> String {
        format!("s3://{BUCKET}/{}", path.trim_start_matches('/'))
    }

    /// The environment a child `stream-export` needs to reach this server with object_store's
    /// `AmazonS3Builder::from_env` (which reads every `AWS_*` variable).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint()),
            ("AWS_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), REGION.into()),
        ]
    }

    /// The same settings as object_store configuration keys, for `object_store::parse_url_opts`
    /// or `AmazonS3Builder::with_config` in the test process.
    pub fn object_store_options(&self) -> Vec<(String, String)> {
        vec![
            ("aws_endpoint".into(), self.endpoint()),
            ("aws_allow_http".into(), "true".into()),
            ("aws_access_key_id".into(), ACCESS_KEY.into()),
            ("aws_secret_access_key".into(), SECRET_KEY.into()),
            ("aws_region".into(), REGION.into()),
        ]
    }

    /// The bytes stored under `key` in [`BUCKET`], if an object is there.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        let path = self.root.join(BUCKET).join(key);
        path.is_file().then(|| std::fs::read(&path).expect("the object's file reads"))
    }

    /// The keys in [`BUCKET`] that start with `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let mut keys = Vec::new();
        collect_files(&self.root.join(BUCKET), "", &mut keys);
        keys.retain(|key| key.starts_with(prefix));
        keys.sort();
        keys
    }

    /// What is left of multipart uploads not completed nor aborted, and of writes not finished:
    /// the names of s3s-fs's upload, part and temporary files (it has no
    /// ListMultipartUploads). Empty when nothing is pending.
    pub fn pending_uploads(&self) -> Vec<String> {
        let mut pending: Vec<String> = std::fs::read_dir(&self.root)
            .expect("the server's directory lists")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter(|name| {
                (name.starts_with(".upload-") && name.ends_with(".json"))
                    || name.starts_with(".upload_id-")
                    || (name.starts_with(".tmp.") && name.ends_with(".internal.part"))
            })
            .collect();
        pending.sort();
        pending
    }

    /// Answers the next `times` requests of `kind` with `failure` instead of handing them on.
    /// Failures queue up: a later call adds to the earlier ones.
    pub fn fail_next(&self, kind: RequestKind, failure: Failure, times: usize) {
        let mut faults = self.shared.faults.lock().unwrap();
        faults.failures.extend(std::iter::repeat_n((kind, failure), times));
    }

    /// How many requests of `kind` arrived so far (failed and held ones included).
    pub fn count(&self, kind: RequestKind) -> usize {
        let faults = self.shared.faults.lock().unwrap();
        faults.counts.iter().find(|(counted, _)| *counted == kind).map_or(0, |(_, count)| *count)
    }

    /// Holds every request of `kind` (before it is read) until the returned guard is dropped.
    pub fn hold(&self, kind: RequestKind) -> Hold {
        self.shared.holds.send_modify(|held| held.push(kind));
        Hold { shared: self.shared.clone(), kind }
    }

    /// How many requests wait behind a [`Hold`] now.
    pub fn held(&self) -> usize {
        self.shared.faults.lock().unwrap().held
    }

    /// Waits until at least `count` requests wait behind a [`Hold`] (at most 10 s).
    pub async fn wait_until_held(&self, count: usize) {
        let started = Instant::now();
        while self.held() < count {
            assert!(started.elapsed() < Duration::from_secs(10), "{count} requests were not held in time");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The directory s3s-fs serves (the bucket is the folder [`BUCKET`] in it).
    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Holds requests of one kind while it lives (see [`S3Server::hold`]).
pub struct Hold {
    shared: Arc<Shared>,
    kind: RequestKind,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.shared.holds.send_modify(|held| {
            if let Some(position) = held.iter().position(|kind| *kind == self.kind) {
                held.remove(position);
            }
        });
    }
}

/// The wrapper in front of s3s: count, hold, fail, or hand on.
async fn handle(
    s3: s3s::service::S3Service,
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    let kind = RequestKind::of(&request);
    let failure = shared.count(kind);
    shared.wait_while_held(kind).await;
    match failure {
        Some(Failure::Drop) => {
            let mut body = request.into_body();
            let mut read = 0;
            while read < 64 * 1024 {
                match body.frame().await {
                    Some(Ok(frame)) => read += frame.data_ref().map_or(0, |data| data.len()),
                    _ => break,
                }
            }
            Err("connection dropped by the test".into())
        }
        Some(failure @ (Failure::InternalError | Failure::SlowDown)) => {
            // Read the whole body first, so that the client sees the answer and not a broken pipe.
            let _ = request.into_body().collect().await;
            let (status, code) = match failure {
                Failure::SlowDown => (StatusCode::SERVICE_UNAVAILABLE, "SlowDown"),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            };
            Ok(s3_error(status, code, "injected by the test"))
        }
        Some(Failure::LoseAnswer) => {
            let _ = hand_on(&s3, &shared, kind, request).await?;
            Err("answer lost by the test".into())
        }
        None => hand_on(&s3, &shared, kind, request).await,
    }
}

/// Hands a request on to s3s-fs.
async fn hand_on(
    s3: &s3s::service::S3Service,
    shared: &Shared,
    kind: RequestKind,
    request: Request<Incoming>,
) -> Result<Response<Body>, BoxError> {
    match kind {
        RequestKind::Put if request.headers().get("if-none-match").is_some_and(|value| value == "*") => {
            let _create = shared.creates.lock().await;
            Ok(s3.call(request.map(Body::from)).await?)
        }
        _ => Ok(s3.call(request.map(Body::from)).await?),
    }
}

/// An S3 error answer: `status` with the XML body S3 sends.
fn s3_error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>test</RequestId></Error>"
    );
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/xml".parse().unwrap());
    response
}

/// Adds the files under `dir` to `keys`, as `/`-separated paths after `prefix`.
fn collect_files(dir: &Path, prefix: &str, keys: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = format!("{prefix}{name}");
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => collect_files(&entry.path(), &format!("{path}/"), keys),
            Ok(kind) if kind.is_file() => keys.push(path),
            _ => {}
        }
    }
}
