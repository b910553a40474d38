//! `ReadExport`: a completed task's file, downloaded from Stream and streamed as records
//! (parsed by `export_file`), within the replica's ReadExport slots, ended by the drain or by a
//! policy reload that takes the permission away.

use std::sync::Arc;

use chrono::Utc;
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
    export_file,
    proto::{ExportRecord, ReadExportRequest, TaskState},
    upstream::{self, convert},
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
        // Reading the task re-signs its URL; only that URL is ever fetched.
        let status =
            self.client.get_task(&task_id, Some(call.deadline)).await.map_err(|error| upstream_failure(&error))?;
        let task = convert::task(status.body, Utc::now());
        let url = match (task.state(), task.result) {
            (TaskState::Completed, Some(result)) if !result.url.is_empty() => result.url,
            _ => return Err(status::task_not_completed(&task.upstream_status)),
        };
        let response = self.client.download(&url).await.map_err(|error| {
            tracing::warn!(%error, "export download refused");
            upstream::download_not_started(&error, *start_index)
        })?;
        let (record_counts, counted_task) = (self.record_counts.clone(), task_id.clone());
        let records = export_file::session::start(
            response.bytes_stream(),
            *start_index,
            encoding,
            reads,
            slot,
            self.reads_ending.clone(),
            Box::new(move |records| record_counts.insert(counted_task, records)),
        );
        Ok((task_id, revocation::end_when_revoked(Box::pin(records), &self.policies, grant)))
    }
}
