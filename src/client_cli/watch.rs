//! Following a task with `WatchTask`, or an export job with `WatchExportJob`, to its end,
//! resuming interrupted streams.

use std::{future::Future, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use tonic::{Response, Status, Streaming};

use crate::{
    client_cli::{
        Session,
        failure::{Failure, retry_delay},
        output::is_interruption,
        progress::{self, Display},
    },
    proto::{ExportJob, ExportJobEvent, Task, TaskEvent, WatchExportJobRequest, WatchTaskRequest},
};

/// How often the live display is refreshed while no event arrives.
const TICK: Duration = Duration::from_millis(250);
/// Interruptions in a row (without an event between them) before giving up.
const MAX_INTERRUPTIONS: usize = 10;

/// The delays before calling again: backon's series from 0.2 s, doubling up to 5 s (about half a
/// minute in all: time for a replica to restart), unless the status says how long.
fn retry_delays() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_factor(2.0)
        .with_max_delay(Duration::from_secs(5))
        .with_max_times(MAX_INTERRUPTIONS)
        .build()
}

/// Watches `task_id` until it reaches a terminal state and returns the task as last seen.
///
/// A stream that is interrupted (`UNAVAILABLE`: server shutdown, maximum stream lifetime, a
/// replica restarting; or a broken connection) or ends before the terminal state is called again
/// after the `RetryInfo` delay or the next of [`retry_delays`] (a fresh series once an event
/// arrives): the new stream starts with a fresh snapshot, so nothing is lost.
pub async fn follow(session: &mut Session, task_id: &str) -> Result<Task, Failure> {
    session.display.watching(task_id);
    let client = session.client.clone();
    let open = || {
        let mut client = client.clone();
        let request = WatchTaskRequest { task_id: task_id.to_owned() };
        async move { client.watch_task(request).await }
    };
    follow_stream(&mut session.display, "watching the task", open, |display, event: TaskEvent| {
        display.event(&event);
        event.task.filter(|t| t.state().is_terminal())
    })
    .await
}

/// Watches export job `job_id` with `WatchExportJob` until it ends (SUCCEEDED, FAILED or
/// CANCELLED) and returns the job as last seen; interrupted streams are resumed as in [`follow`].
pub async fn follow_job(session: &mut Session, job_id: &str) -> Result<ExportJob, Failure> {
    session.display.watching_job();
    let client = session.client.clone();
    let open = || {
        let mut client = client.clone();
        let request = WatchExportJobRequest { job_id: job_id.to_owned() };
        async move { client.watch_export_job(request).await }
    };
    follow_stream(&mut session.display, "watching the job", open, |display, event: ExportJobEvent| {
        display.job_event(&event);
        event.job.filter(|job| job.state().is_terminal())
    })
    .await
}

/// Reads the streams that `open` opens, handing each event to `seen`, until `seen` returns the
/// end; an interrupted stream (see [`is_interruption`]), or one that ends early, is opened again
/// after backon's delays, at most [`MAX_INTERRUPTIONS`] times in a row without an event.
async fn follow_stream<E, T, Open, Fut>(
    display: &mut Display,
    action: &'static str,
    mut open: Open,
    mut seen: impl FnMut(&mut Display, E) -> Option<T>,
) -> Result<T, Failure>
where
    Open: FnMut() -> Fut,
    Fut: Future<Output = Result<Response<Streaming<E>>, Status>>,
{
    let mut delays = retry_delays();
    let mut interruptions = 0;
    loop {
        let ended = match open().await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match tokio::time::timeout(TICK, stream.message()).await {
                        Err(_) => display.tick(),
                        Ok(Ok(Some(event))) => {
                            if interruptions > 0 {
                                delays = retry_delays();
                                interruptions = 0;
                            }
                            if let Some(end) = seen(display, event) {
                                return Ok(end);
                            }
                        }
                        Ok(Ok(None)) => break None,
                        Ok(Err(status)) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        if let Some(status) = ended.as_ref().filter(|status| !is_interruption(status)) {
            return Err(Failure::rpc(action)(status.clone()));
        }
        let Some(fallback) = delays.next() else {
            let status = ended.unwrap_or_else(|| Status::unavailable("the watch stream keeps ending"));
            return Err(Failure::rpc(action)(status));
        };
        let delay = ended.as_ref().map_or(fallback, |status| retry_delay(status, fallback));
        interruptions += 1;
        display.note(&format!(
            "watch interrupted; resuming in {} ({interruptions}/{MAX_INTERRUPTIONS})",
            progress::seconds(delay)
        ));
        tokio::time::sleep(delay).await;
    }
}
