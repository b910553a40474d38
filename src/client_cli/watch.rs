//! Following a task with `WatchTask` to its end, resuming interrupted streams.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use crate::{
    client_cli::{
        Session,
        failure::{Failure, retry_delay},
        output::is_interruption,
        progress,
    },
    proto::{Task, WatchTaskRequest},
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
    let mut delays = retry_delays();
    let mut interruptions = 0;
    loop {
        let request = WatchTaskRequest { task_id: task_id.to_owned() };
        let ended = match session.client.watch_task(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match tokio::time::timeout(TICK, stream.message()).await {
                        Err(_) => session.display.tick(),
                        Ok(Ok(Some(event))) => {
                            if interruptions > 0 {
                                delays = retry_delays();
                                interruptions = 0;
                            }
                            session.display.event(&event);
                            if let Some(task) = event.task.filter(|t| t.state().is_terminal()) {
                                return Ok(task);
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
            return Err(Failure::rpc("watching the task")(status.clone()));
        }
        let Some(fallback) = delays.next() else {
            let status = ended.unwrap_or_else(|| tonic::Status::unavailable("the watch stream keeps ending"));
            return Err(Failure::rpc("watching the task")(status));
        };
        let delay = ended.as_ref().map_or(fallback, |status| retry_delay(status, fallback));
        interruptions += 1;
        session.display.note(&format!(
            "watch interrupted; resuming in {} ({interruptions}/{MAX_INTERRUPTIONS})",
            progress::seconds(delay)
        ));
        tokio::time::sleep(delay).await;
    }
}
