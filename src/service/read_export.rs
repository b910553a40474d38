//! `ReadExport`: a completed task's file, downloaded from Stream (or, once Stream has deleted
//! it, read from the archive of the job that made it) and streamed as records
//! (parsed by `export_file`), within the replica's ReadExport slots, ended by the drain or by a
//! policy reload that takes the permission away.

use std::{io, sync::Arc};

use chrono::Utc;
use futures::TryStreamExt;
use tonic::{Request, Response, Status};

use super::{
    ExportApi,
    audit::{self, Subject},
    call::{Call, annotate_task, upstream_failure},
    revocation::{self, BoxedStream},
    rpc::Rpc,
    validation,
};
use crate::{
    contract::status,
    export_file::{self, ByteStream},
    jobs::store_failure,
    proto::{ExportRecord, ReadExportRequest, TaskState},
    upstream::{self, ErrorKind, convert},
};

/// The stream type of `ReadExport`.
pub type ExportRecordStream = BoxedStream<ExportRecord>;

/// `ReadExport`, audited whether or not the stream opened.
pub(super) async fn read_export(
    api: &ExportApi,
    request: Request<ReadExportRequest>,
) -> Result<Response<ExportRecordStream>, Status> {
    let call = Call::begin(api, &request)?;
    let opened = api.open_export(&request, &call).await;
    let task_id = opened.as_ref().map_or(request.get_ref().task_id.as_str(), |(task_id, _)| task_id.as_str());
    audit::record(&call.caller, Rpc::ReadExport, &Subject::Task(task_id), opened.as_ref().map(|_| task_id));
    Ok(Response::new(opened?.1))
}

impl ExportApi {
    /// Checks a ReadExport request and opens its file: the task must be completed, and the
    /// stream takes one of the replica's ReadExport slots (or is refused at once). Returns the
    /// task id in its canonical spelling with the stream.
    async fn open_export(
        &self,
        request: &Request<ReadExportRequest>,
        call: &Call,
    ) -> Result<(String, ExportRecordStream), Status> {
        let ReadExportRequest { task_id, start_index, encoding } = request.get_ref();
        let (task_id, encoding) = validation::read_export(task_id, *encoding).map_err(status::invalid_request)?;
        annotate_task(&task_id);
        let grant = self.authorize_task(&call.caller, Rpc::ReadExport, &task_id).await?;
        if let Some(records) = self.record_counts.get(&task_id).filter(|records| start_index > records) {
            return Err(status::start_index_past_end(*start_index, records));
        }
        let reads = self.limits.reads;
        let slot = Arc::clone(&self.read_streams)
            .try_acquire_owned()
            .map_err(|_| status::read_limit_reached(reads.max_streams))?;
        let body = match self.stream_file(&task_id, call, *start_index).await? {
            Ok(body) => body,
            Err(gone) => self.archived_file(&task_id, gone).await?,
        };
        let (record_counts, counted_task) = (self.record_counts.clone(), task_id.clone());
        let records = export_file::session::start(
            body,
            *start_index,
            encoding,
            reads,
            slot,
            self.reads_ending.clone(),
            Box::new(move |records| record_counts.insert(counted_task, records)),
        );
        Ok((task_id, revocation::end_when_revoked(Box::pin(records), &self.policies, grant)))
    }

    /// The task's file from Stream; `Ok(Err(gone))` when Stream does not have it (the task or
    /// its file is gone: deleted, past Stream's 60 days, or never there).
    async fn stream_file(
        &self,
        task_id: &str,
        call: &Call,
        start_index: u64,
    ) -> Result<Result<ByteStream, Gone>, Status> {
        // Reading the task re-signs its URL; only that URL is ever fetched.
        let status = match self.client.get_task(task_id, Some(call.deadline)).await {
            Ok(status) => status,
            Err(error) if error.kind() == ErrorKind::NotFound => {
                let unknown = Some(upstream_failure(&error));
                return Ok(Err(Gone { why: "Stream no longer knows the task".into(), unknown }));
            }
            Err(error) => return Err(upstream_failure(&error)),
        };
        let task = convert::task(status.body, Utc::now());
        let url = match (task.state(), task.result) {
            (TaskState::Completed, Some(result)) if !result.url.is_empty() => result.url,
            _ => return Err(status::task_not_completed(&task.upstream_status)),
        };
        match self.client.download(&url).await {
            Ok(response) => Ok(Ok(export_file::boxed(
                response.bytes_stream().map_err(|error| io::Error::other(error.without_url())),
            ))),
            Err(error) if error.kind() == ErrorKind::NotFound => {
                Ok(Err(Gone { why: "Stream no longer has its file".into(), unknown: None }))
            }
            Err(error) => {
                tracing::warn!(%error, "export download refused");
                Err(upstream::download_not_started(&error, start_index))
            }
        }
    }

    /// The archived copy of a task's file that Stream no longer has: the task's job archived
    /// it. NOT_FOUND `EXPORT_FILE_GONE` when no archive holds it, and Stream's own NOT_FOUND for
    /// a task that neither Stream nor the task registry knows.
    async fn archived_file(&self, task_id: &str, gone: Gone) -> Result<ByteStream, Status> {
        let record = self.registry.get(task_id).await.ok().flatten();
        let Some(record) = record else {
            return Err(gone.unknown.unwrap_or_else(|| status::export_file_gone(task_id, &gone.why)));
        };
        let gone = gone.why.as_str();
        let job_id = Some(record.job_id).filter(|job_id| !job_id.is_empty());
        let Some(job_id) = job_id else { return Err(status::export_file_gone(task_id, gone)) };
        let Some((location, file)) =
            self.jobs.archived_file(&job_id, task_id).await.map_err(|error| store_failure(&error))?
        else {
            return Err(status::export_file_gone(task_id, gone));
        };
        match self.jobs.archives().open(&location, &file.key).await {
            Ok(Some(body)) => {
                tracing::info!(key = file.key, "the task's Stream file is gone; its archived copy is read");
                Ok(export_file::boxed(body))
            }
            Ok(None) => Err(status::export_file_gone(task_id, &format!("{gone}; the archive has no {}", file.key))),
            Err(error) => Err(status::archive_unavailable(&error.to_string())),
        }
    }
}

/// A task's file that Stream does not have.
struct Gone {
    /// How it is gone, for the caller.
    why: String,
    /// Stream's NOT_FOUND, when it does not know the task at all.
    unknown: Option<Status>,
}
