//! A real OTLP/gRPC trace receiver: the published `TraceService` (opentelemetry-proto's tonic
//! server types), recording every export request, on a random loopback port.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value as Any},
};
use prost::Message;
use tokio::{sync::oneshot, task::JoinHandle};

/// Span kinds of the OTLP protocol.
pub const SPAN_KIND_SERVER: i32 = 2;
/// See [`SPAN_KIND_SERVER`].
pub const SPAN_KIND_CLIENT: i32 = 3;
/// The OTLP status code of an error span.
pub const STATUS_ERROR: i32 = 2;

/// One exported span, flattened for assertions (ids in lower-case hex, as in `traceparent`).
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    /// The span's name.
    pub name: String,
    /// OTLP span kind.
    pub kind: i32,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits, empty for a root span.
    pub parent_span_id: String,
    /// The W3C `tracestate`.
    pub trace_state: String,
    /// Attributes, their values as text (`"grpc"`, `"200"`).
    pub attributes: BTreeMap<String, String>,
    /// OTLP status code (0 unset, 1 ok, 2 error).
    pub status_code: i32,
    /// The span's links: (trace id, span id) in hex.
    pub links: Vec<(String, String)>,
    /// The resource's attributes.
    pub resource: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value as text.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Clone, Default)]
struct Recorder {
    requests: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Recorder {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running receiver.
pub struct OtlpReceiver {
    /// Its address.
    pub addr: SocketAddr,
    recorder: Recorder,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl OtlpReceiver {
    /// Starts a receiver on a random loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let (shutdown, stop) = oneshot::channel();
        let service = TraceServiceServer::new(recorder.clone());
        let server = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
        });
        Self { addr, recorder, shutdown: Some(shutdown), server: Some(server) }
    }

    /// Starts an OTLP/HTTP receiver (protobuf bodies on `POST /v1/traces`) on a random
    /// loopback port.
    pub async fn start_http() -> Self {
        use axum::{body::Bytes, routing::post};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let requests = Arc::clone(&recorder.requests);
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: Bytes| async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                requests.lock().unwrap().push(request);
                let response = ExportTraceServiceResponse { partial_success: None }.encode_to_vec();
                ([("content-type", "application/x-protobuf")], response)
            }),
        );
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stop.await;
                })
                .await
                .unwrap();
        });
        Self { addr, recorder, shutdown: Some(shutdown), server: Some(server) }
    }

    /// The endpoint for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Export requests received so far.
    pub fn requests(&self) -> Vec<ExportTraceServiceRequest> {
        self.recorder.requests.lock().unwrap().clone()
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        let mut spans = Vec::new();
        for request in self.requests() {
            for resource_spans in request.resource_spans {
                let resource =
                    resource_spans.resource.map(|resource| attributes(&resource.attributes)).unwrap_or_default();
                for scope in resource_spans.scope_spans {
                    for span in scope.spans {
                        spans.push(ReceivedSpan {
                            name: span.name,
                            kind: span.kind,
                            trace_id: hex::encode(&span.trace_id),
                            span_id: hex::encode(&span.span_id),
                            parent_span_id: hex::encode(&span.parent_span_id),
                            trace_state: span.trace_state,
                            attributes: attributes(&span.attributes),
                            status_code: span.status.map(|status| status.code).unwrap_or_default(),
                            links: span
                                .links
                                .iter()
                                .map(|link| (hex::encode(&link.trace_id), hex::encode(&link.span_id)))
                                .collect(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        spans
    }

    /// Waits (up to 10 s) until the spans received satisfy `done`; returns them either way.
    pub async fn wait_for(&self, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) || started.elapsed() > Duration::from_secs(10) {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every byte received, as the encoded export requests: for searching secrets.
    pub fn raw_bytes(&self) -> Vec<u8> {
        self.requests().iter().flat_map(Message::encode_to_vec).collect()
    }

    /// Stops serving (the port is closed afterwards).
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.abort();
        }
    }
}

fn attributes(list: &[KeyValue]) -> BTreeMap<String, String> {
    list.iter().map(|kv| (kv.key.clone(), kv.value.as_ref().map(text).unwrap_or_default())).collect()
}

fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::BoolValue(b)) => b.to_string(),
        Some(Any::IntValue(i)) => i.to_string(),
        Some(Any::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}
