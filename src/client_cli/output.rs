//! Saving records: where `--output` points (checked before anything is submitted), an
//! atomically written JSON-lines file or stdout, and `ReadExport` into it with resume.

use std::{
    error::Error as _,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBuilder};
use serde_json::Value;
use tonic::{Code, Status};

use crate::{
    client_cli::{
        Session,
        failure::{Failure, reason, retry_delay},
    },
    contract::{json::from_struct, wire_struct::WireStruct},
    proto::{ExportRecord, ReadExportRequest, RecordEncoding},
};

/// The output file's write buffer: large, so that a gigabyte costs a thousand `write`s, not
/// a hundred thousand.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// How many times in a row an interrupted read is resumed without receiving a record in between
/// before giving up.
const MAX_RESUMES: usize = 5;

/// Where `--output` sends the records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// `--output -`: JSON lines on stdout (progress and the summary then go to stderr only).
    Stdout,
    /// A file, written atomically; `overwrite` allows replacing an existing one.
    File {
        /// The path as the user typed it.
        path: PathBuf,
        /// `--overwrite` was given.
        overwrite: bool,
    },
}

impl Output {
    /// `--output PATH`, checked before anything is submitted, so that a typo costs no export:
    /// the path is not a directory, its directory exists, and an existing file is replaced only
    /// with `--overwrite`. (Whether the directory is writable is found by [`Output::open`], which
    /// creates the temporary file.)
    pub fn check(path: &Path, overwrite: bool) -> Result<Self, Failure> {
        if path.as_os_str() == "-" {
            return Ok(Output::Stdout);
        }
        let usage = |why: String| Failure::Usage(format!("--output {}: {why}", path.display()));
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => return Err(usage("is a directory; give a file name".into())),
            Ok(_) if !overwrite => {
                return Err(usage("already exists; choose another name, or add --overwrite to replace it".into()));
            }
            Ok(_) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(usage(error.to_string())),
        }
        if path.file_name().is_none() {
            return Err(usage("not a file name".into()));
        }
        let directory = directory_of(path);
        match std::fs::metadata(directory) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(usage(format!("{} is not a directory", directory.display()))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(usage(format!("the directory {} does not exist", directory.display())));
            }
            Err(error) => return Err(usage(format!("{}: {error}", directory.display()))),
        }
        Ok(Output::File { path: path.to_owned(), overwrite })
    }

    /// Opens the destination: creates the temporary file (proving the directory writable), or
    /// takes stdout.
    pub fn open(&self) -> Result<Sink, Failure> {
        match self {
            Output::Stdout => Ok(Sink::Stdout(StdoutJsonl::default())),
            Output::File { path, overwrite } => AtomicJsonl::create(path, *overwrite).map(Sink::File),
        }
    }
}

/// The directory a file path names, `.` for a bare name.
fn directory_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// An opened `--output`: records go to a file or to stdout.
#[derive(Debug)]
pub enum Sink {
    /// An atomically written file.
    File(AtomicJsonl),
    /// Stdout.
    Stdout(StdoutJsonl),
}

impl Sink {
    /// Records written so far.
    pub fn records(&self) -> u64 {
        match self {
            Sink::File(file) => file.records,
            Sink::Stdout(out) => out.records,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        match self {
            Sink::File(file) => file.bytes,
            Sink::Stdout(out) => out.bytes,
        }
    }

    /// Whoever read stdout went away (`| head`): nothing more is wanted.
    pub fn closed(&self) -> bool {
        matches!(self, Sink::Stdout(out) if out.closed)
    }

    /// What the destination is called in messages: the path as typed, or `stdout`.
    pub fn name(&self) -> String {
        match self {
            Sink::File(file) => file.path.display().to_string(),
            Sink::Stdout(_) => "stdout".into(),
        }
    }

    /// Appends `{"type": kind, "item": item}`.
    pub fn write(&mut self, kind: &str, item: Value) -> Result<(), Failure> {
        match self {
            Sink::File(file) => file.write(kind, item),
            Sink::Stdout(out) => out.write_line(record_line(kind, &item).as_bytes()),
        }
    }

    /// Appends the records of a `ReadExport` message that are not written yet (see
    /// [`AtomicJsonl::write_message`]).
    pub fn write_message(&mut self, message: ExportRecord) -> Result<(), Failure> {
        match self {
            Sink::File(file) => file.write_message(message),
            Sink::Stdout(out) => write_new_records(out.records, message, |line| out.write_line(line)),
        }
    }

    /// Completes the output: the file is committed (its final path returned), stdout flushed.
    pub fn commit(self) -> Result<Option<PathBuf>, Failure> {
        match self {
            Sink::File(file) => file.commit().map(Some),
            Sink::Stdout(mut out) => out.flush().map(|()| None),
        }
    }
}

/// JSON lines on stdout, counted like a file's, so that an interrupted read resumes after the
/// last whole line written.
#[derive(Debug, Default)]
pub struct StdoutJsonl {
    records: u64,
    bytes: u64,
    closed: bool,
    buffer: Vec<u8>,
}

impl StdoutJsonl {
    fn write_line(&mut self, json: &[u8]) -> Result<(), Failure> {
        if self.closed {
            return Ok(());
        }
        self.buffer.extend_from_slice(json);
        self.buffer.push(b'\n');
        self.records += 1;
        self.bytes += json.len() as u64 + 1;
        if self.buffer.len() >= WRITE_BUFFER_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Failure> {
        if self.closed || self.buffer.is_empty() {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&self.buffer).and_then(|()| stdout.flush()) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => self.closed = true,
            Err(error) => return Err(Failure::Local(format!("cannot write to stdout: {error}"))),
        }
        self.buffer.clear();
        Ok(())
    }
}

/// One record as a JSON line (without its line ending), `type` first.
fn record_line(kind: &str, item: &Value) -> String {
    // Written by hand so that `type` comes first (serde_json sorts object keys).
    format!("{{\"type\":{},\"item\":{item}}}", Value::from(kind))
}

/// Writes the records of `message` from index `written` on (a resumed read may repeat some).
fn write_new_records(
    written: u64,
    message: ExportRecord,
    mut write_line: impl FnMut(&[u8]) -> Result<(), Failure>,
) -> Result<(), Failure> {
    if message.index > written {
        return Err(Failure::Local(format!("the service skipped records {written}..{}", message.index)));
    }
    if message.json.is_empty() {
        if message.index == written {
            let item = message.item.as_ref().map_or(Ok(Value::Null), item_json)?;
            write_line(record_line(&message.kind, &item).as_bytes())?;
        }
        return Ok(());
    }
    let already = usize::try_from(written - message.index).unwrap_or(usize::MAX);
    for json in message.json.iter().skip(already) {
        write_line(json)?;
    }
    Ok(())
}

/// A received record's `Struct` as JSON.
pub fn item_json(item: &WireStruct) -> Result<Value, Failure> {
    let item = item.to_struct().map_err(|error| Failure::Local(format!("a record does not decode: {error}")))?;
    Ok(from_struct(&item))
}

/// A JSON-lines file that appears under its final name only when complete: records go to a
/// temporary file in the same directory, renamed over the final name by [`AtomicJsonl::commit`].
/// Dropped without a commit (an error, Ctrl-C), it removes the temporary file.
#[derive(Debug)]
pub struct AtomicJsonl {
    path: PathBuf,
    temp: PathBuf,
    overwrite: bool,
    writer: Option<BufWriter<File>>,
    /// Records written so far.
    pub records: u64,
    /// Bytes written so far.
    pub bytes: u64,
    /// Bytes whose writeback to disk has been started (see [`AtomicJsonl::start_writeback`]).
    writeback_started: u64,
}

/// How often the file's writeback is started while it is written.
const WRITEBACK_EVERY_BYTES: u64 = 32 * 1024 * 1024;

impl AtomicJsonl {
    /// Creates the temporary file beside `path`; `overwrite` allows [`AtomicJsonl::commit`] to
    /// replace an existing file. Errors name `path` as given, not the temporary file.
    pub fn create(path: &Path, overwrite: bool) -> Result<Self, Failure> {
        let name =
            path.file_name().ok_or_else(|| Failure::Usage(format!("--output {}: not a file name", path.display())))?;
        let directory = directory_of(path);
        let temp = directory.join(format!(".{}.{}.part", name.to_string_lossy(), uuid::Uuid::new_v4().simple()));
        let file = File::create_new(&temp).map_err(|error| {
            Failure::Usage(format!(
                "--output {}: cannot create a file in {}: {error}",
                path.display(),
                directory.display()
            ))
        })?;
        Ok(Self {
            path: path.to_owned(),
            temp,
            overwrite,
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            records: 0,
            bytes: 0,
            writeback_started: 0,
        })
    }

    /// The final path, as the user gave it.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `{"type": kind, "item": item}` as one line.
    pub fn write(&mut self, kind: &str, item: Value) -> Result<(), Failure> {
        self.write_line(record_line(kind, &item).as_bytes())
    }

    /// Appends one line of JSON text (given without its line ending).
    pub fn write_line(&mut self, json: &[u8]) -> Result<(), Failure> {
        let writer = self.writer.as_mut().ok_or_else(|| Failure::Local("the output file is closed".into()))?;
        let written = writer.write_all(json).and_then(|()| writer.write_all(b"\n"));
        written.map_err(|error| self.io_failure(error))?;
        self.records += 1;
        self.bytes += json.len() as u64 + 1;
        if self.bytes - self.writeback_started >= WRITEBACK_EVERY_BYTES {
            self.start_writeback();
        }
        Ok(())
    }

    /// Asks the kernel to start writing what the file holds so far to disk, without waiting, so
    /// that the `fsync` of [`AtomicJsonl::commit`] finds little left to write.
    fn start_writeback(&mut self) {
        #[cfg(target_os = "linux")]
        if let Some(writer) = &self.writer {
            use std::os::fd::AsRawFd;
            let in_file = self.bytes - writer.buffer().len() as u64;
            let (from, len) = (self.writeback_started, in_file - self.writeback_started);
            // SAFETY: a plain syscall on a descriptor this value owns; no memory is passed.
            let _ = unsafe {
                libc::sync_file_range(
                    writer.get_ref().as_raw_fd(),
                    from as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            self.writeback_started = in_file;
        }
    }

    /// Appends the records of a `ReadExport` message (JSON, or a `Struct` from a server that
    /// ignores the encoding) that this file does not hold yet: after a resume, the records
    /// before [`Self::records`] are skipped, and a gap is an error.
    pub fn write_message(&mut self, message: ExportRecord) -> Result<(), Failure> {
        write_new_records(self.records, message, |line| self.write_line(line))
    }

    /// Flushes, syncs and renames the file to its final name. Without `overwrite`, a file that
    /// appeared under that name meanwhile is not replaced: the records stay in the temporary
    /// file, which the error names.
    pub fn commit(mut self) -> Result<PathBuf, Failure> {
        let writer = self.writer.take().ok_or_else(|| Failure::Local("the output file is closed".into()))?;
        let file = writer.into_inner().map_err(|error| self.io_failure(error.into_error()))?;
        file.sync_all().map_err(|error| self.io_failure(error))?;
        drop(file);
        if !self.overwrite {
            // A hard link is a rename that refuses to replace; where links are not supported,
            // a check just before the rename.
            match std::fs::hard_link(&self.temp, &self.path) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.temp);
                    self.temp = PathBuf::new();
                    return Ok(self.path.clone());
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists || self.path.exists() => {
                    let kept = std::mem::take(&mut self.temp);
                    return Err(Failure::Local(format!(
                        "--output {}: a file of that name appeared while saving; not replaced (the records are in {})",
                        self.path.display(),
                        kept.display()
                    )));
                }
                Err(_) => {}
            }
        }
        std::fs::rename(&self.temp, &self.path)
            .map_err(|error| Failure::Local(format!("cannot rename to {}: {error}", self.path.display())))?;
        self.temp = PathBuf::new();
        Ok(self.path.clone())
    }

    fn io_failure(&self, error: std::io::Error) -> Failure {
        Failure::Local(format!("cannot write {}: {error}", self.path.display()))
    }
}

impl Drop for AtomicJsonl {
    fn drop(&mut self) {
        self.writer.take();
        if !self.temp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// What a saved export amounts to.
#[derive(Debug)]
pub struct Saved {
    /// The final file (none for stdout).
    pub path: Option<PathBuf>,
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Reads a completed task's records with `ReadExport` into `sink` and completes it.
///
/// An interrupted read (see [`is_interruption`]: a drained or killed replica, a broken download,
/// a lost connection) is resumed from the records the sink already holds, over a new connection
/// if need be, after backon's delays; [`MAX_RESUMES`] interruptions in a row without a record
/// received between them end it. A record already written is never written twice.
pub async fn save_export(session: &mut Session, task_id: &str, mut sink: Sink) -> Result<Saved, Failure> {
    session.display.start_download(&sink.name());
    let resume_delays = || {
        ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(500))
            .with_factor(2.0)
            .with_max_times(MAX_RESUMES)
            .build()
    };
    let mut delays = resume_delays();
    let mut resumes = 0;
    loop {
        let start_index = sink.records();
        let request =
            ReadExportRequest { task_id: task_id.to_owned(), start_index, encoding: RecordEncoding::Json.into() };
        let ended = match session.client.read_export(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            sink.write_message(message)?;
                            session.display.records(sink.records(), sink.bytes());
                            if sink.closed() {
                                break None;
                            }
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        let Some(status) = ended else {
            let (records, bytes) = (sink.records(), sink.bytes());
            let path = sink.commit()?;
            session.display.finish_download();
            return Ok(Saved { path, records, bytes });
        };
        if sink.records() > start_index {
            // Progress since the last interruption: a fresh series of tries.
            delays = resume_delays();
            resumes = 0;
        }
        let delay = match delays.next() {
            Some(delay) if is_interruption(&status) => retry_delay(&status, delay),
            _ => return Err(Failure::rpc("reading the export")(status)),
        };
        resumes += 1;
        session.display.note(&format!(
            "reading stopped after {} records ({}); resuming at record {} in {} ({resumes}/{MAX_RESUMES})",
            sink.records(),
            reason(&status).unwrap_or_else(|| super::failure::code_name(status.code()).to_owned()),
            sink.records(),
            super::progress::seconds(delay),
        ));
        tokio::time::sleep(delay).await;
    }
}

/// Whether a read that ended with `status` was interrupted rather than refused: any
/// `UNAVAILABLE` (a drained replica, a broken download, an idle or too-long stream, a refused
/// connection while a replica restarts), or a failure of the connection itself, which tonic
/// reports with the transport's error as the status's source (a replica killed mid-stream).
pub fn is_interruption(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable => true,
        Code::Unknown | Code::Internal | Code::Cancelled => status.source().is_some(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::contract::status as errors;

    #[test]
    fn any_unavailable_or_broken_connection_is_an_interruption() {
        assert!(is_interruption(&errors::read_shutting_down(7)), "a drained replica");
        assert!(is_interruption(&errors::read_interrupted("idle", 9)));
        assert!(is_interruption(&errors::download_failed("cut", 5)));
        assert!(is_interruption(&errors::shutting_down()), "without next_index too: the file knows where");
        assert!(!is_interruption(&errors::export_unreadable("bad", 4)), "DATA_LOSS is final");
        assert!(!is_interruption(&errors::read_aborted(4)));
        let reset = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(is_interruption(&Status::from_error(Box::new(reset))), "a transport error");
        assert!(!is_interruption(&Status::unknown("the server said so")), "a status the server sent");
    }

    #[test]
    fn the_file_appears_only_on_commit_and_an_abandoned_one_leaves_nothing() {
        let directory = std::env::temp_dir().join(format!("atomic-jsonl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("out.jsonl");

        let mut file = AtomicJsonl::create(&path, false).unwrap();
        file.write("user", json!({"id": "u"})).unwrap();
        assert!(!path.exists());
        drop(file);
        assert_eq!(std::fs::read_dir(&directory).unwrap().count(), 0, "the temporary file is removed");

        let mut file = AtomicJsonl::create(&path, false).unwrap();
        file.write("user", json!({"id": "u"})).unwrap();
        file.write("message", json!({"n": 1})).unwrap();
        file.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"type\":\"user\",\"item\":{\"id\":\"u\"}}\n{\"type\":\"message\",\"item\":{\"n\":1}}\n");
        assert_eq!(std::fs::read_dir(&directory).unwrap().count(), 1);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
