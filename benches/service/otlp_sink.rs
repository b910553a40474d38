//! The OTLP receiver of the tracing figure: the published `TraceService`, counting the spans it
//! receives and keeping nothing else.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};

#[derive(Clone, Default)]
struct Counter(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Counter {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .map(|scope| scope.spans.len())
            .sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// A running sink: its address and the spans received so far.
pub struct OtlpSink {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Counter,
}

impl OtlpSink {
    /// Starts the sink on a free loopback port, on the bench's runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP sink");
        let addr = listener.local_addr().expect("the OTLP sink's address");
        let received = Counter::default();
        let service = TraceServiceServer::new(received.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Self { addr, received }
    }

    /// Spans received so far.
    pub fn spans(&self) -> u64 {
        self.received.0.load(Ordering::Relaxed)
    }
}
