//! The submits: `ExportChannels` and `ExportUsers`, which start an export task (once per
//! idempotency key, recorded in the task registry), and `ExportUser`, which exports one user at
//! once. Each is checked against the policies (every channel or user, before anything goes
//! upstream) and written to the audit log.

use std::future::Future;

use chrono::Utc;
use futures::FutureExt;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use super::{
    ExportApi,
    audit::{self, Subject},
    authorization::Resource,
    call::{Call, annotate_task, upstream_failure},
    caller::Caller,
    rpc::Rpc,
    validation,
};
use crate::{
    contract::status,
    proto::{
        ExportChannelsRequest, ExportChannelsResponse, ExportFormatVersion, ExportUserRequest, ExportUserResponse,
        ExportUsersRequest, ExportUsersResponse, TaskRecord, task_record,
    },
    store::{Fingerprint, StoreError},
    upstream::{Answer, Operation, UpstreamError, convert, wire::TaskCreated},
};

/// `ExportChannels`: every channel must be permitted, or nothing goes upstream.
pub(super) async fn export_channels(
    api: &ExportApi,
    request: Request<ExportChannelsRequest>,
) -> Result<Response<ExportChannelsResponse>, Status> {
    let rpc = Rpc::ExportChannels;
    let call = Call::begin(api, &request)?;
    let message = request.get_ref();
    let subject = Subject::Channels(message.channels.iter().map(|c| format!("{}:{}", c.r#type, c.id)).collect());
    let outcome = async {
        let body = validation::export_channels(message).map_err(status::invalid_request)?;
        let version = if message.version() == ExportFormatVersion::V2 { "v2" } else { "v1" };
        for channel in &message.channels {
            let resource = Resource::Channel { kind: &channel.r#type, id: &channel.id, version };
            api.policies.check(&call.caller, rpc, &resource)?;
        }
        let fingerprint = Fingerprint::of(rpc.name(), &body);
        let client = api.client.clone();
        let upstream = move |deadline| async move { client.export_channels(&body, deadline).await };
        let record = task_record(&call.caller, task_record::Submit::ExportChannels(message.clone()));
        let submit = Submit { rpc, operation: Operation::ExportChannels, request_id: &message.request_id, fingerprint };
        api.submit_once(&call, submit, record, upstream).await
    }
    .await;
    finish_submit(&call, rpc, &subject, outcome.as_ref().map(|(task_id, _)| task_id.as_str()));
    let (task_id, record) = outcome?;
    if let Some(record) = record {
        api.record_submit(TaskRecord { task_id: task_id.clone(), ..record }).await;
    }
    Ok(Response::new(ExportChannelsResponse { task_id }))
}

/// `ExportUsers`: every user must be permitted, or nothing goes upstream.
pub(super) async fn export_users(
    api: &ExportApi,
    request: Request<ExportUsersRequest>,
) -> Result<Response<ExportUsersResponse>, Status> {
    let rpc = Rpc::ExportUsers;
    let call = Call::begin(api, &request)?;
    let message = request.get_ref();
    let outcome = async {
        let body = validation::export_users(message).map_err(status::invalid_request)?;
        for user_id in &message.user_ids {
            api.policies.check(&call.caller, rpc, &Resource::User(user_id))?;
        }
        let fingerprint = Fingerprint::of(rpc.name(), &body);
        let client = api.client.clone();
        let upstream = move |deadline| async move { client.export_users(&body, deadline).await };
        let record = task_record(&call.caller, task_record::Submit::ExportUsers(message.clone()));
        let submit = Submit { rpc, operation: Operation::ExportUsers, request_id: &message.request_id, fingerprint };
        api.submit_once(&call, submit, record, upstream).await
    }
    .await;
    let audited = outcome.as_ref().map(|(task_id, _)| task_id.as_str());
    finish_submit(&call, rpc, &Subject::Users(&message.user_ids), audited);
    let (task_id, record) = outcome?;
    if let Some(record) = record {
        api.record_submit(TaskRecord { task_id: task_id.clone(), ..record }).await;
    }
    Ok(Response::new(ExportUsersResponse { task_id }))
}

/// `ExportUser`: one user's data, exported at once (no task, no idempotency key).
pub(super) async fn export_user(
    api: &ExportApi,
    request: Request<ExportUserRequest>,
) -> Result<Response<ExportUserResponse>, Status> {
    let rpc = Rpc::ExportUser;
    let call = Call::begin(api, &request)?;
    let user_id = &request.get_ref().user_id;
    let outcome = async {
        validation::user_id(user_id).map_err(status::invalid_request)?;
        api.policies.check(&call.caller, rpc, &Resource::User(user_id))?;
        api.client.export_user(user_id, Some(call.deadline)).await.map_err(|error| upstream_failure(&error))
    }
    .await;
    let users = std::slice::from_ref(user_id);
    audit::record(&call.caller, rpc, &Subject::Users(users), outcome.as_ref().map(|_| ""));
    Ok(Response::new(convert::user_export(outcome?.body)))
}

/// What one submit is, for [`ExportApi::submit_once`].
struct Submit<'a> {
    rpc: Rpc,
    operation: Operation,
    request_id: &'a str,
    fingerprint: Fingerprint,
}

/// The task registry's record of a submit by `caller` (its task id filled in once known).
fn task_record(caller: &Caller, submit: task_record::Submit) -> TaskRecord {
    let rpc = match &submit {
        task_record::Submit::ExportChannels(_) => Rpc::ExportChannels,
        task_record::Submit::ExportUsers(_) => Rpc::ExportUsers,
    };
    TaskRecord {
        owner: caller.name.clone(),
        rpc: rpc.name().to_owned(),
        submit: Some(submit),
        create_time: Some(crate::contract::task::timestamp(Utc::now())),
        ..TaskRecord::default()
    }
}

/// The epilogue of a submit: names the new task in the call's span, and audits the submit.
fn finish_submit(call: &Call, rpc: Rpc, subject: &Subject<'_>, outcome: Result<&str, &Status>) {
    if let Ok(task_id) = outcome {
        annotate_task(task_id);
    }
    audit::record(&call.caller, rpc, subject, outcome);
}

impl ExportApi {
    /// Runs a submit once per idempotency key (the caller, `rpc` and `request_id`): a repeat of
    /// `request_id` with the same request returns the first task; with another request,
    /// INVALID_ARGUMENT.
    ///
    /// `upstream` makes the POST with the deadline it is given. Without a `request_id` that is
    /// this call's deadline. With one, the POST runs detached from this call, bounded only by
    /// the upstream timeout, and this call (like every repeat) waits for it until its own
    /// deadline: a caller that leaves or times out never abandons a submit that Stream may
    /// already have, so its retry finds the task instead of starting a second export.
    async fn submit_once<F>(
        &self,
        call: &Call,
        submit: Submit<'_>,
        record: TaskRecord,
        upstream: impl FnOnce(Option<Instant>) -> F,
    ) -> Result<(String, Option<TaskRecord>), Status>
    where
        F: Future<Output = Result<Answer<TaskCreated>, UpstreamError>> + Send + 'static,
    {
        let post = |deadline| upstream(deadline).map(|outcome| outcome.map(|created| created.body.task_id));
        if submit.request_id.is_empty() {
            let task_id = post(Some(call.deadline)).await.map_err(|error| upstream_failure(&error))?;
            return Ok((task_id, Some(record)));
        }
        let key = format!("{}\n{}\n{}", call.caller.name, submit.rpc, submit.request_id);
        let once = self.submits.get_or_submit_recording(key, submit.fingerprint, post(None).boxed(), record.clone());
        let (submitted, recorded) = tokio::time::timeout_at(call.deadline, once)
            .await
            .map_err(|_| upstream_failure(&UpstreamError::DeadlineExceeded { operation: submit.operation }))?
            .map_err(|error| store_failure(&error))?;
        if submitted.fingerprint != submit.fingerprint {
            return Err(status::request_id_reused());
        }
        Ok((submitted.task_id, (!recorded).then_some(record)))
    }

    /// Records a submitted task (owner, request, time) unless the submit store recorded it with
    /// the submit; a registry failure is logged, not returned: the export has started, and the
    /// caller needs its task id.
    async fn record_submit(&self, record: TaskRecord) {
        let task_id = record.task_id.clone();
        if let Err(error) = self.registry.record(record).await {
            tracing::warn!(%error, task_id, "a submitted task could not be recorded in the task registry");
        }
    }
}

/// The status of a failed store call: the submit's own failure as any upstream failure.
fn store_failure(error: &StoreError) -> Status {
    match error {
        StoreError::Submit(error) => upstream_failure(error),
        StoreError::Aborted => status::submit_aborted(),
        StoreError::Unavailable(why) => {
            tracing::warn!(%why, "a submit with a request_id was refused: the idempotency store is unavailable");
            status::idempotency_store_unavailable()
        }
    }
}
