//! `task list`: the tasks submitted through the service that the caller may see, newest first,
//! as a table on a terminal and as JSON lines otherwise (or with `--json`).

use std::io::IsTerminal;

use serde_json::{Value, json};

use super::{
    Session,
    export::{unary, with_retries},
    failure::Failure,
    progress::Mode,
    render::{self, instant, task_json},
};
use crate::proto::{ListTasksRequest, TaskRecord, task_record::Submit};

/// The page size asked of the service.
const PAGE_SIZE: usize = 100;

/// Lists up to `limit` tasks, following pages as needed.
pub async fn list(session: &mut Session, limit: usize) -> Result<(), Failure> {
    let mut records = Vec::new();
    let mut page_token = String::new();
    while records.len() < limit {
        let client = session.client.clone();
        let page_size = i32::try_from((limit - records.len()).min(PAGE_SIZE)).unwrap_or(i32::MAX);
        let token = page_token.clone();
        let page =
            with_retries(session, "listing tasks", || {
                let (mut client, page_token) = (client.clone(), token.clone());
                async move {
                    client.list_tasks(unary(ListTasksRequest { page_size, page_token })).await.map(|r| r.into_inner())
                }
            })
            .await?;
        records.extend(page.tasks);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    records.truncate(limit);
    if session.display.mode() == Mode::Json || !std::io::stdout().is_terminal() {
        for record in &records {
            say!("{}", record_json(record));
        }
    } else {
        print_table(&records);
    }
    Ok(())
}

/// What a submit asked for, in a few words: the channels' cids or the user ids.
fn subject(record: &TaskRecord) -> String {
    match &record.submit {
        Some(Submit::ExportChannels(request)) => request
            .channels
            .iter()
            .map(|channel| format!("{}:{}", channel.r#type, channel.id))
            .collect::<Vec<_>>()
            .join(","),
        Some(Submit::ExportUsers(request)) => request.user_ids.join(","),
        None => String::new(),
    }
}

fn state(record: &TaskRecord) -> &'static str {
    record.last_observed.as_ref().map_or("-", |task| render::state_name(task.state()))
}

fn record_json(record: &TaskRecord) -> Value {
    let time = |at: Option<&prost_types::Timestamp>| {
        at.and_then(instant).map_or(Value::Null, |at| json!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
    };
    let (channels, user_ids) = match &record.submit {
        Some(Submit::ExportChannels(request)) => (
            request.channels.iter().map(|channel| json!(format!("{}:{}", channel.r#type, channel.id))).collect(),
            Vec::new(),
        ),
        Some(Submit::ExportUsers(request)) => (Vec::new(), request.user_ids.iter().map(|id| json!(id)).collect()),
        None => (Vec::new(), Vec::new()),
    };
    json!({
        "event": "task",
        "task_id": record.task_id,
        "owner": record.owner,
        "rpc": record.rpc,
        "channels": channels,
        "user_ids": user_ids,
        "create_time": time(record.create_time.as_ref()),
        "last_observed": record.last_observed.as_ref().map_or(Value::Null, task_json),
        "observe_time": time(record.observe_time.as_ref()),
    })
}

fn print_table(records: &[TaskRecord]) {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| {
            let created = record
                .create_time
                .as_ref()
                .and_then(instant)
                .map_or_else(String::new, |at| at.format("%Y-%m-%d %H:%M:%S").to_string());
            vec![
                record.task_id.clone(),
                record.owner.clone(),
                record.rpc.clone(),
                state(record).to_owned(),
                created,
                subject(record),
            ]
        })
        .collect();
    table(&["TASK ID", "OWNER", "RPC", "STATE", "CREATED (UTC)", "CHANNELS / USERS"], &rows, "(no tasks)");
}

/// Prints `rows` under `header` in columns as wide as their widest cell; `empty` when there is
/// no row.
pub fn table(header: &[&str], rows: &[Vec<String>], empty: &str) {
    let header: Vec<String> = header.iter().map(|title| (*title).to_owned()).collect();
    let mut widths: Vec<usize> = header.iter().map(|title| title.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(cell, &width)| format!("{cell:<width$}")).collect();
        say!("{}", cells.join("  ").trim_end());
    }
    if rows.is_empty() {
        say!("{empty}");
    }
}
