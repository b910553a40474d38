//! What the person or script sees while a command runs.
//!
//! Three modes: on a terminal (stderr), a live spinner with the task's state, the elapsed time and
//! the last upstream poll, then a record/byte counter while the file is written; otherwise plain
//! lines on stdout, one per change; with `--json`, one JSON object per line on stdout.

use std::{
    io::IsTerminal,
    path::Path,
    time::{Duration, Instant},
};

use chrono::Utc;
use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::{
    client_cli::render::{event_json, instant, state_name},
    proto::{TaskEvent, TaskState},
};

/// How output is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Live display on stderr (a terminal).
    Terminal,
    /// One line per change on stdout.
    Plain,
    /// One JSON object per line on stdout.
    Json,
}

/// The display of one command.
#[derive(Debug)]
pub struct Display {
    mode: Mode,
    bar: Option<ProgressBar>,
    started: Instant,
    task_id: String,
    state: Option<TaskState>,
    observed: Option<chrono::DateTime<Utc>>,
    download: Option<String>,
}

impl Display {
    /// A display for `--json`, a terminal, or plain lines.
    pub fn new(json: bool) -> Self {
        let mode = if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        };
        Self {
            mode,
            bar: None,
            started: Instant::now(),
            task_id: String::new(),
            state: None,
            observed: None,
            download: None,
        }
    }

    /// The mode in use.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// A task was submitted.
    pub fn submitted(&mut self, task_id: &str) {
        self.task_id = task_id.to_owned();
        match self.mode {
            Mode::Json => say!("{}", json!({"event": "submitted", "task_id": task_id})),
            Mode::Plain => say!("submitted task {task_id}"),
            Mode::Terminal => eprintln!("submitted task {task_id}"),
        }
    }

    /// Watching starts: on a terminal, the spinner appears.
    pub fn watching(&mut self, task_id: &str) {
        self.task_id = task_id.to_owned();
        if self.mode == Mode::Terminal && self.bar.is_none() {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner:.cyan} {wide_msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
            self.refresh();
        }
    }

    /// A `WatchTask` event arrived.
    pub fn event(&mut self, event: &TaskEvent) {
        let state = event.task.as_ref().map(|t| t.state());
        if let Some(observed) = event.observe_time.as_ref().and_then(instant) {
            self.observed = Some(observed);
        }
        let changed = state.is_some() && state != self.state;
        if state.is_some() {
            self.state = state;
        }
        match self.mode {
            Mode::Json => say!("{}", event_json(event)),
            Mode::Plain if changed => say!("task {}: {}", self.task_id, self.status_text()),
            Mode::Plain => {}
            Mode::Terminal => self.refresh(),
        }
    }

    /// Time passed without an event: refreshes the live display.
    pub fn tick(&mut self) {
        if self.download.is_none() {
            self.refresh();
        }
    }

    /// A remark (a retry, a resume): above the live display, as a plain line, or as JSON.
    pub fn note(&mut self, text: &str) {
        match (self.mode, &self.bar) {
            (Mode::Json, _) => say!("{}", json!({"event": "notice", "message": text})),
            (Mode::Terminal, Some(bar)) => bar.println(text),
            (Mode::Terminal, None) => eprintln!("{text}"),
            (Mode::Plain, _) => say!("{text}"),
        }
    }

    /// `ReadExport` starts writing `path`: on a terminal the spinner becomes a record/byte counter.
    pub fn start_download(&mut self, path: &Path) {
        self.download = Some(path.display().to_string());
        match self.mode {
            Mode::Terminal => {
                let bar = self.bar.take().unwrap_or_else(ProgressBar::new_spinner);
                bar.set_style(
                    ProgressStyle::with_template("{spinner:.green} [{elapsed_precise}] {pos} records {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.set_position(0);
                bar.set_message(format!("(0 B) → {}", path.display()));
                self.bar = Some(bar);
            }
            Mode::Plain => say!("saving records to {}", path.display()),
            Mode::Json => say!("{}", json!({"event": "download_started", "output": path.display().to_string()})),
        }
    }

    /// Progress of the download.
    pub fn records(&mut self, records: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            // Once per message: a JSON message carries many records.
            bar.set_position(records);
            let path = self.download.as_deref().unwrap_or_default();
            bar.set_message(format!("({}) → {path}", HumanBytes(bytes)));
        }
    }

    /// The download is complete.
    pub fn finish_download(&mut self) {
        self.clear();
    }

    /// The final result: `value` with `--json`, else `human` on stdout.
    pub fn result(&mut self, value: Value, human: &str) {
        self.clear();
        match self.mode {
            Mode::Json => say!("{value}"),
            Mode::Plain | Mode::Terminal => say!("{human}"),
        }
    }

    /// Removes the live display.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// The state, the time since the command started and since upstream was last polled.
    fn status_text(&self) -> String {
        let state = self.state.map_or("CONNECTING", state_name);
        let elapsed = self.started.elapsed().as_secs();
        let mut text = format!("{state}, {}:{:02} elapsed", elapsed / 60, elapsed % 60);
        if let Some(observed) = self.observed {
            let ago = (Utc::now() - observed).num_milliseconds().max(0) as f64 / 1000.0;
            text.push_str(&format!(", last upstream poll {ago:.1}s ago"));
        }
        text
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("task {}: {}", self.task_id, self.status_text()));
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        self.clear();
    }
}
