//! A small, hostile HTTP server to stand in for Stream or its file server: routes chosen by the
//! test, every request recorded (path and headers) so that a test can assert what reached it.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::Request, http::HeaderMap, middleware::Next, response::Response};
use tokio::{net::TcpListener, task::JoinHandle};

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Path and query.
    pub uri: String,
    /// Its headers.
    pub headers: HeaderMap,
}

/// A running fake server.
pub struct FakeUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl FakeUpstream {
    /// Serves the router that `routes` builds; `routes` gets the fake's own base URL (for
    /// links back to itself).
    pub async fn spawn(routes: impl FnOnce(String) -> Router) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = Arc::clone(&seen);
        let router =
            routes(format!("http://{addr}")).layer(axum::middleware::from_fn(move |request: Request, next: Next| {
                let record = Arc::clone(&record);
                async move {
                    let uri = request.uri().to_string();
                    record.lock().unwrap().push(Seen { uri, headers: request.headers().clone() });
                    let response: Response = next.run(request).await;
                    response
                }
            }));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self { addr, seen, task }
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A completed task whose file is at `url`, as `GET /tasks/{id}` answers.
pub fn completed_task(task_id: &str, url: &str) -> serde_json::Value {
    serde_json::json!({
        "task_id": task_id,
        "status": "completed",
        "created_at": "2024-01-01T00:00:00Z",
        "updated_at": "2024-01-01T00:00:01Z",
        "result": {"url": url, "path": "exports/file.json"},
        "duration": "1.00ms"
    })
}
