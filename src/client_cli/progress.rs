//! What the person or script sees while a command runs.
//!
//! Three modes: on a terminal (stderr), a live spinner with the task's state, the elapsed time and
//! the last upstream poll (for an export job, a bar of its tasks done, its channels or users,
//! for an archived job its tasks archived and their bytes, the elapsed time and an ETA), then a record/size counter while the file is written; otherwise
//! plain lines on stderr, one per change; with `--json`, one JSON object per line on stdout.
//!
//! Outside `--json`, stdout holds only the command's answer (a task id, a result URL, records),
//! so that `$(…)` captures it. Elapsed time is always `m:ss` (`h:mm:ss` past an hour), sizes
//! always in binary units (`1.50 MiB`).

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::{
    client_cli::render::{event_json, instant, job_event_json, job_state_name, state_name},
    proto::{CreateExportJobRequest, ExportJob, ExportJobEvent, TaskEvent, TaskState},
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
    observed: Option<chrono::DateTime<chrono::Utc>>,
    download: Option<String>,
    /// The export job followed (`job … --wait`, `job watch`), as last seen.
    job: Option<ExportJob>,
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
            job: None,
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
            Mode::Plain | Mode::Terminal => eprintln!("submitted task {task_id}"),
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
            Mode::Plain if changed => eprintln!("task {}: {}", self.task_id, self.status_text()),
            Mode::Plain => {}
            Mode::Terminal => self.refresh(),
        }
    }

    /// Time passed without an event: refreshes the live display.
    pub fn tick(&mut self) {
        if self.download.is_none() {
            if self.job.is_some() {
                self.refresh_job();
            } else {
                self.refresh();
            }
        }
    }

    /// An export job was created.
    pub fn job_created(&mut self, job: &ExportJob) {
        match self.mode {
            Mode::Json => say!("{}", super::render::job_line("job_created", job)),
            Mode::Plain | Mode::Terminal => eprintln!("created job {}", job.job_id),
        }
    }

    /// Watching a job starts: on a terminal, its progress bar appears (its length, the tasks,
    /// is known from the first event).
    pub fn watching_job(&mut self) {
        if self.mode == Mode::Terminal && self.bar.is_none() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner:.cyan} job {prefix} [{bar:20.cyan/blue}] {pos}/{len} tasks, {wide_msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.enable_steady_tick(Duration::from_millis(100));
            self.bar = Some(bar);
        }
    }

    /// A `WatchExportJob` event arrived.
    pub fn job_event(&mut self, event: &ExportJobEvent) {
        let Some(job) = &event.job else { return };
        let changed = self.job.as_ref().is_none_or(|seen| !seen.same_progress(job));
        // Kept without its request, which may list 100,000 channels: the display needs only
        // where the job archives (whether to show what is archived).
        let archive_only = |request: &CreateExportJobRequest| CreateExportJobRequest {
            archive_uri: request.archive_uri.clone(),
            verify: request.verify,
            ..Default::default()
        };
        self.job = Some(ExportJob {
            job_id: job.job_id.clone(),
            owner: job.owner.clone(),
            request: job.request.as_ref().map(archive_only),
            state: job.state,
            progress: job.progress,
            create_time: job.create_time,
            update_time: job.update_time,
            end_time: job.end_time,
            error: job.error.clone(),
            manifest_uri: job.manifest_uri.clone(),
            schedule_id: job.schedule_id.clone(),
        });
        match self.mode {
            Mode::Json => say!("{}", job_event_json(event)),
            Mode::Plain if changed => eprintln!("{}", self.job_text(true)),
            Mode::Plain => {}
            Mode::Terminal => self.refresh_job(),
        }
    }

    /// The job's line: `job ID: RUNNING, 3/10 tasks done, 250 channels, 2/10 archived (1.50 MiB),
    /// 0:12 elapsed, ETA 0:30, 4 submitted` (the archived part for an archived job only; without
    /// the id, state and tasks done, which the bar shows, when `whole` is false; what matters
    /// most first, as a narrow terminal cuts the end).
    fn job_text(&self, whole: bool) -> String {
        let Some(job) = &self.job else { return String::new() };
        let progress = job.progress.unwrap_or_default();
        let mut parts = Vec::new();
        if whole {
            parts.push(format!("job {}: {}", job.job_id, job_state_name(job.state())));
            parts.push(format!("{}/{} tasks done", progress.tasks_completed, progress.tasks_total));
        }
        if progress.users_total > 0 {
            parts.push(format!("{} users", progress.users_total));
        } else {
            parts.push(format!("{} channels", progress.channels_total));
        }
        parts.extend(archived(job));
        let elapsed = self.job_elapsed(job);
        parts.push(format!("{} elapsed", clock(elapsed)));
        if !job.state().is_terminal() {
            let eta = eta(elapsed, progress.tasks_completed, progress.tasks_total);
            parts.push(format!("ETA {}", eta.map_or_else(|| "-".to_owned(), clock)));
        }
        if progress.tasks_failed > 0 {
            parts.push(format!("{} failed", progress.tasks_failed));
        }
        if progress.tasks_submitted > progress.tasks_completed && !job.state().is_terminal() {
            parts.push(format!("{} submitted", progress.tasks_submitted));
        }
        parts.join(", ")
    }

    /// The time since the job was created (by the service's clock as far as the client's
    /// agrees), or since the command started.
    fn job_elapsed(&self, job: &ExportJob) -> Duration {
        let created = job.create_time.as_ref().and_then(instant);
        let ended = job.end_time.as_ref().and_then(instant).unwrap_or_else(chrono::Utc::now);
        created.and_then(|created| (ended - created).to_std().ok()).unwrap_or_else(|| self.started.elapsed())
    }

    fn refresh_job(&self) {
        if let (Some(bar), Some(job)) = (&self.bar, &self.job) {
            let progress = job.progress.unwrap_or_default();
            bar.set_length(progress.tasks_total);
            bar.set_position(progress.tasks_completed);
            bar.set_prefix(job_state_name(job.state()));
            bar.set_message(self.job_text(false));
        }
    }

    /// A remark (a retry, a resume): above the live display, as a plain line, or as JSON.
    pub fn note(&mut self, text: &str) {
        match (self.mode, &self.bar) {
            (Mode::Json, _) => say!("{}", json!({"event": "notice", "message": text})),
            (Mode::Terminal, Some(bar)) => bar.println(text),
            (Mode::Terminal, None) | (Mode::Plain, _) => eprintln!("{text}"),
        }
    }

    /// `ReadExport` starts writing to `destination` (a path, or `stdout`): on a terminal the
    /// spinner becomes a record/size counter.
    pub fn start_download(&mut self, destination: &str) {
        self.download = Some(destination.to_owned());
        match self.mode {
            Mode::Terminal => {
                let bar = self.bar.take().unwrap_or_else(ProgressBar::new_spinner);
                let started = self.started;
                bar.set_style(
                    ProgressStyle::with_template("{spinner:.green} {since_start} elapsed, {pos} records {wide_msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner())
                        .with_key("since_start", move |_: &indicatif::ProgressState, out: &mut dyn std::fmt::Write| {
                            let _ = out.write_str(&clock(started.elapsed()));
                        }),
                );
                bar.set_position(0);
                bar.set_message(format!("({}) → {destination}", size(0)));
                self.bar = Some(bar);
            }
            Mode::Plain => eprintln!("saving records to {destination}"),
            Mode::Json => say!("{}", json!({"event": "download_started", "output": destination})),
        }
    }

    /// Progress of the download.
    pub fn records(&mut self, records: u64, bytes: u64) {
        if let Some(bar) = &self.bar {
            // Once per message: a JSON message carries many records.
            bar.set_position(records);
            let destination = self.download.as_deref().unwrap_or_default();
            bar.set_message(format!("({}) → {destination}", size(bytes)));
        }
    }

    /// The download is complete.
    pub fn finish_download(&mut self) {
        self.clear();
    }

    /// The final result: `value` with `--json`; otherwise `human` on stderr and `answer`, the
    /// part a script uses, alone on stdout.
    pub fn result(&mut self, value: Value, human: &str, answer: Option<&str>) {
        self.clear();
        match self.mode {
            Mode::Json => say!("{value}"),
            Mode::Plain | Mode::Terminal => {
                eprintln!("{human}");
                if let Some(answer) = answer {
                    say!("{answer}");
                }
            }
        }
    }

    /// Removes the live display.
    pub fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// The state, the time since the command started, and when upstream was last polled as far
    /// as the client knows: the `observe_time` of the last event (a heartbeat carries the latest).
    /// It is shown as the instant it is, not as an age: between events the service keeps polling
    /// without saying so, and an age counted from the last event would make a healthy export look
    /// stuck.
    fn status_text(&self) -> String {
        let state = self.state.map_or("CONNECTING", state_name);
        let mut text = format!("{state}, {} elapsed", clock(self.started.elapsed()));
        if let Some(observed) = self.observed {
            text.push_str(&format!(", last upstream poll at {}", observed.format("%H:%M:%S UTC")));
        }
        text
    }

    fn refresh(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("task {}: {}", self.task_id, self.status_text()));
        }
    }
}

/// What an archived job has in its archive: `2/10 archived (1.50 MiB)`, the tasks whose file is
/// there of all its tasks, and their bytes; none for a job without an archive.
pub fn archived(job: &ExportJob) -> Option<String> {
    let progress = job.progress.unwrap_or_default();
    let archives = job.request.as_ref().is_some_and(|request| !request.archive_uri.is_empty());
    (archives || progress.tasks_archived > 0).then(|| {
        format!("{}/{} archived ({})", progress.tasks_archived, progress.tasks_total, size(progress.bytes_archived))
    })
}

/// Elapsed time as a clock: `0:21`, `12:05`, `1:02:03`.
pub fn clock(elapsed: Duration) -> String {
    let seconds = elapsed.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 { format!("{hours}:{minutes:02}:{seconds:02}") } else { format!("{minutes}:{seconds:02}") }
}

/// The time left if the tasks still to do go as fast as those done so far; none before the
/// first is done.
pub fn eta(elapsed: Duration, done: u64, total: u64) -> Option<Duration> {
    if done == 0 || done > total {
        return None;
    }
    Some(elapsed.mul_f64((total - done) as f64 / done as f64))
}

/// A short delay in seconds: `0.5s`, `2.0s`.
pub fn seconds(delay: Duration) -> String {
    format!("{:.1}s", delay.as_secs_f64())
}

/// A size in binary units: `512 B`, `1.50 MiB`.
pub fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

impl Drop for Display {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_clock_format_and_one_size_unit() {
        assert_eq!(clock(Duration::from_millis(21_900)), "0:21");
        assert_eq!(clock(Duration::from_secs(725)), "12:05");
        assert_eq!(clock(Duration::from_secs(3723)), "1:02:03");
        assert_eq!(size(512), "512 B");
        assert_eq!(size(1536 * 1024), "1.50 MiB");
        assert_eq!(seconds(Duration::from_millis(500)), "0.5s");
    }

    #[test]
    fn an_archived_job_shows_its_tasks_archived_and_their_bytes_and_another_job_does_not() {
        let progress = crate::proto::ExportJobProgress {
            channels_total: 100,
            tasks_total: 4,
            tasks_completed: 3,
            tasks_archived: 2,
            bytes_archived: 3 * 1024 * 1024 / 2,
            ..Default::default()
        };
        let request = CreateExportJobRequest { archive_uri: "s3://bucket/teams".into(), ..Default::default() };
        let mut job =
            ExportJob { job_id: "j".into(), progress: Some(progress), request: Some(request), ..Default::default() };
        let mut display = Display::new(true);
        display.job = Some(job.clone());
        assert!(
            display.job_text(false).starts_with("100 channels, 2/4 archived (1.50 MiB), "),
            "{}",
            display.job_text(false)
        );
        job.request = None;
        job.progress = Some(crate::proto::ExportJobProgress { tasks_archived: 0, bytes_archived: 0, ..progress });
        display.job = Some(job);
        assert!(!display.job_text(true).contains("archived"), "{}", display.job_text(true));
    }

    #[test]
    fn the_eta_follows_the_pace_of_the_tasks_done() {
        assert_eq!(eta(Duration::from_secs(30), 3, 10), Some(Duration::from_secs(70)));
        assert_eq!(eta(Duration::from_secs(30), 10, 10), Some(Duration::ZERO));
        assert_eq!(eta(Duration::from_secs(30), 0, 10), None, "no pace yet");
    }
}
