//! Saving records: an atomically written JSON-lines file, and `ReadExport` into it with resume.

use std::{
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;
use tonic::Code;

use crate::{
    client_cli::{
        Session,
        failure::{Failure, metadata, reason, retry_delay},
    },
    contract::{json::from_struct, wire_struct::WireStruct},
    proto::{ExportRecord, ReadExportRequest, RecordEncoding},
};

/// The output file's write buffer: large, so that a gigabyte costs a thousand `write`s, not
/// a hundred thousand.
const WRITE_BUFFER_BYTES: usize = 1024 * 1024;

/// How many times an interrupted read (`UNAVAILABLE` with `next_index`) is resumed before giving up.
const MAX_RESUMES: u32 = 5;

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
    /// Creates the temporary file beside `path`.
    pub fn create(path: &Path) -> Result<Self, Failure> {
        let name =
            path.file_name().ok_or_else(|| Failure::Usage(format!("--output {}: not a file name", path.display())))?;
        let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let temp = directory.join(format!(".{}.{}.part", name.to_string_lossy(), uuid::Uuid::new_v4().simple()));
        let file = File::create_new(&temp)
            .map_err(|error| Failure::Local(format!("cannot create {}: {error}", temp.display())))?;
        Ok(Self {
            path: path.to_owned(),
            temp,
            writer: Some(BufWriter::with_capacity(WRITE_BUFFER_BYTES, file)),
            records: 0,
            bytes: 0,
            writeback_started: 0,
        })
    }

    /// Appends `{"type": kind, "item": item}` as one line.
    pub fn write(&mut self, kind: &str, item: Value) -> Result<(), Failure> {
        // Written by hand so that `type` comes first (serde_json sorts object keys).
        let line = format!("{{\"type\":{},\"item\":{item}}}", Value::from(kind));
        self.write_line(line.as_bytes())
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
        if message.index > self.records {
            return Err(Failure::Local(format!("the service skipped records {}..{}", self.records, message.index)));
        }
        if message.json.is_empty() {
            if message.index == self.records {
                let item = message.item.as_ref().map_or(Ok(Value::Null), item_json)?;
                self.write(&message.kind, item)?;
            }
            return Ok(());
        }
        let already = usize::try_from(self.records - message.index).unwrap_or(usize::MAX);
        for json in message.json.iter().skip(already) {
            self.write_line(json)?;
        }
        Ok(())
    }

    /// Flushes, syncs and renames the file to its final name.
    pub fn commit(mut self) -> Result<PathBuf, Failure> {
        let writer = self.writer.take().ok_or_else(|| Failure::Local("the output file is closed".into()))?;
        let file = writer.into_inner().map_err(|error| self.io_failure(error.into_error()))?;
        file.sync_all().map_err(|error| self.io_failure(error))?;
        drop(file);
        std::fs::rename(&self.temp, &self.path)
            .map_err(|error| Failure::Local(format!("cannot rename to {}: {error}", self.path.display())))?;
        self.temp = PathBuf::new();
        Ok(self.path.clone())
    }

    fn io_failure(&self, error: std::io::Error) -> Failure {
        Failure::Local(format!("cannot write {}: {error}", self.temp.display()))
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
    /// The final file.
    pub path: PathBuf,
    /// Records written.
    pub records: u64,
    /// Bytes written.
    pub bytes: u64,
}

/// Reads a completed task's records with `ReadExport` into `file` and commits it. An interrupted
/// read (see [`resume_index`]: a broken download, a drained or idle stream) is resumed, at most
/// [`MAX_RESUMES`] times; a record already written is never written twice.
pub async fn save_export(session: &mut Session, task_id: &str, mut file: AtomicJsonl) -> Result<Saved, Failure> {
    session.display.start_download(&file.path);
    let mut resumes = 0;
    let mut start_index = 0;
    loop {
        let request =
            ReadExportRequest { task_id: task_id.to_owned(), start_index, encoding: RecordEncoding::Json.into() };
        let ended = match session.client.read_export(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(message)) => {
                            file.write_message(message)?;
                            session.display.records(file.records, file.bytes);
                        }
                        Ok(None) => break None,
                        Err(status) => break Some(status),
                    }
                }
            }
            Err(status) => Some(status),
        };
        let Some(status) = ended else {
            let (records, bytes) = (file.records, file.bytes);
            let path = file.commit()?;
            session.display.finish_download();
            return Ok(Saved { path, records, bytes });
        };
        let resume_at = resume_index(&status, file.records);
        let Some(next) = resume_at.filter(|_| resumes < MAX_RESUMES) else {
            return Err(Failure::rpc("reading the export")(status));
        };
        resumes += 1;
        start_index = next;
        session.display.note(&format!(
            "reading stopped after {} records ({}); resuming at record {start_index} ({resumes}/{MAX_RESUMES})",
            file.records,
            reason(&status).unwrap_or_else(|| "UNAVAILABLE".into())
        ));
        tokio::time::sleep(retry_delay(&status, Duration::from_millis(500))).await;
    }
}

/// Where to resume a read that ended with `status`, if it can be: any `UNAVAILABLE` that says
/// where (`ErrorInfo.metadata["next_index"]`: a broken download, a drained replica, an idle or
/// too-long stream), and a `DOWNLOAD_FAILED` without it at the records already `written`.
pub fn resume_index(status: &tonic::Status, written: u64) -> Option<u64> {
    if status.code() != Code::Unavailable {
        return None;
    }
    match metadata(status, "next_index").and_then(|n| n.parse().ok()) {
        Some(next) => Some(next),
        None => (reason(status).as_deref() == Some("DOWNLOAD_FAILED")).then_some(written),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::contract::status as errors;

    #[test]
    fn any_unavailable_with_a_next_index_is_resumed_there() {
        assert_eq!(resume_index(&errors::read_shutting_down(7), 3), Some(7), "a drained replica");
        assert_eq!(resume_index(&errors::read_interrupted("idle", 9), 3), Some(9));
        assert_eq!(resume_index(&errors::download_failed("cut", 5), 3), Some(5));
        assert_eq!(resume_index(&errors::shutting_down(), 3), None, "no next_index: where would it resume?");
        assert_eq!(resume_index(&errors::export_unreadable("bad", 4), 3), None, "DATA_LOSS is final");
        assert_eq!(resume_index(&errors::read_aborted(4), 3), None);
    }

    #[test]
    fn the_file_appears_only_on_commit_and_an_abandoned_one_leaves_nothing() {
        let directory = std::env::temp_dir().join(format!("atomic-jsonl-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("out.jsonl");

        let mut file = AtomicJsonl::create(&path).unwrap();
        file.write("user", json!({"id": "u"})).unwrap();
        assert!(!path.exists());
        drop(file);
        assert_eq!(std::fs::read_dir(&directory).unwrap().count(), 0, "the temporary file is removed");

        let mut file = AtomicJsonl::create(&path).unwrap();
        file.write("user", json!({"id": "u"})).unwrap();
        file.write("message", json!({"n": 1})).unwrap();
        file.commit().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "{\"type\":\"user\",\"item\":{\"id\":\"u\"}}\n{\"type\":\"message\",\"item\":{\"n\":1}}\n");
        assert_eq!(std::fs::read_dir(&directory).unwrap().count(), 1);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
