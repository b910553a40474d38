//! Following a task with `WatchTask` to its end, resuming interrupted streams.

use std::time::Duration;

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
const MAX_INTERRUPTIONS: u32 = 10;

/// Watches `task_id` until it reaches a terminal state and returns the task as last seen.
///
/// A stream that is interrupted (`UNAVAILABLE`: server shutdown, maximum stream lifetime, a
/// replica restarting; or a broken connection) or ends before the terminal state is called again
/// after the `RetryInfo` delay: the new stream starts with a fresh snapshot, so nothing is lost.
pub async fn follow(session: &mut Session, task_id: &str) -> Result<Task, Failure> {
    session.display.watching(task_id);
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
                            interruptions = 0;
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
        let delay = match ended {
            None => Duration::from_millis(200),
            Some(ref status) if is_interruption(status) => retry_delay(status, Duration::from_millis(500)),
            Some(status) => return Err(Failure::rpc("watching the task")(status)),
        };
        interruptions += 1;
        if interruptions > MAX_INTERRUPTIONS {
            let status = ended.unwrap_or_else(|| tonic::Status::unavailable("the watch stream keeps ending"));
            return Err(Failure::rpc("watching the task")(status));
        }
        session.display.note(&format!(
            "watch interrupted; resuming in {} ({interruptions}/{MAX_INTERRUPTIONS})",
            progress::seconds(delay)
        ));
        tokio::time::sleep(delay).await;
    }
}
