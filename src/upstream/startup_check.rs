//! The start-up check of the Stream credentials: a wrong API key or secret is found when the
//! service starts, with one clear log line, instead of by the first caller.

use std::time::Duration;

use url::Url;

use super::{ErrorKind, StreamClient};

/// The task the check asks for: a UUID no task has.
const NO_SUCH_TASK: &str = "00000000-0000-0000-0000-000000000000";

/// The check, ready to run once: the service's own client, and what to name in the log.
#[derive(Clone, Debug)]
pub struct CredentialCheck {
    client: StreamClient,
    origin: Url,
    timeout: Duration,
}

impl CredentialCheck {
    /// A check of `client`'s credentials against `origin`, bounded by `timeout` (the upstream
    /// request timeout: start-up waits no longer for an unreachable Stream).
    pub fn new(client: StreamClient, origin: Url, timeout: Duration) -> Self {
        Self { client, origin, timeout }
    }

    /// Asks Stream once for a task that does not exist: the cheapest request of the export
    /// API, one that starts nothing, and one Stream authenticates before it looks the task up
    /// (so `404` means the key and the secret were accepted).
    ///
    /// Rejected credentials (HTTP 401) stop start-up: they are read once, from the settings,
    /// and every call would fail until the process restarts with others. Any other failure
    /// (Stream unreachable, failing, rate limited) is logged and start-up goes on: the
    /// credentials stay untested, and calls get `UNAVAILABLE` until Stream answers.
    pub async fn run(&self) -> anyhow::Result<()> {
        let origin = self.origin.origin().ascii_serialization();
        let deadline = tokio::time::Instant::now() + self.timeout;
        let answer = self.client.get_task(NO_SUCH_TASK, Some(deadline)).await;
        match answer.as_ref().map_err(|error| error.kind()) {
            Ok(_) | Err(ErrorKind::NotFound | ErrorKind::InvalidRequest) => {
                tracing::info!(upstream = %origin, "Stream accepted the API key and secret");
                Ok(())
            }
            Err(ErrorKind::CredentialsRejected) => {
                tracing::error!(
                    upstream = %origin,
                    error = %answer.err().map(|error| error.to_string()).unwrap_or_default(),
                    "Stream rejected the API key or secret; check STREAM_API_KEY and STREAM_API_SECRET"
                );
                anyhow::bail!("Stream ({origin}) rejected the API key or secret")
            }
            Err(_) => {
                tracing::warn!(
                    upstream = %origin,
                    error = %answer.err().map(|error| error.to_string()).unwrap_or_default(),
                    "cannot check the Stream credentials now; starting anyway"
                );
                Ok(())
            }
        }
    }
}
