//! The gRPC handlers of `streamexport.v1.ExportService`.
//!
//! Each handler validates (see [`validation`]), makes one upstream call through the
//! [`StreamClient`], and converts the answer (see [`convert`]); every failure becomes a status
//! in [`errors`].

pub mod convert;
mod deadline;
pub mod errors;
pub mod validation;

use std::pin::Pin;

use chrono::Utc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{
    proto::{
        ExportChannelsRequest, ExportChannelsResponse, ExportUserRequest, ExportUserResponse, ExportUsersRequest,
        ExportUsersResponse, GetTaskRequest, Task, TaskEvent, WatchTaskRequest, export_service_server::ExportService,
    },
    stream::StreamClient,
    watch::{WatchHub, events},
};

/// The `ExportService` implementation.
#[derive(Clone, Debug)]
pub struct ExportApi {
    client: StreamClient,
    hub: WatchHub,
}

impl ExportApi {
    /// A service that sends every request through `client` and watches tasks through `hub`.
    pub fn new(client: StreamClient, hub: WatchHub) -> Self {
        Self { client, hub }
    }
}

/// The stream type of `WatchTask`.
pub type TaskEventStream = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

#[tonic::async_trait]
impl ExportService for ExportApi {
    #[tracing::instrument(skip_all, fields(channels = request.get_ref().channels.len(), task_id))]
    async fn export_channels(
        &self,
        request: Request<ExportChannelsRequest>,
    ) -> Result<Response<ExportChannelsResponse>, Status> {
        let body = validation::export_channels(request.get_ref()).map_err(errors::invalid_request)?;
        let created = self
            .client
            .export_channels(&body, deadline::for_upstream(request.metadata()))
            .await
            .map_err(|error| upstream_failure(&error))?;
        tracing::Span::current().record("task_id", created.body.task_id.as_str());
        tracing::info!("channel export submitted");
        Ok(Response::new(ExportChannelsResponse { task_id: created.body.task_id }))
    }

    #[tracing::instrument(skip_all, fields(users = request.get_ref().user_ids.len(), task_id))]
    async fn export_users(
        &self,
        request: Request<ExportUsersRequest>,
    ) -> Result<Response<ExportUsersResponse>, Status> {
        let body = validation::export_users(request.get_ref()).map_err(errors::invalid_request)?;
        let created = self
            .client
            .export_users(&body, deadline::for_upstream(request.metadata()))
            .await
            .map_err(|error| upstream_failure(&error))?;
        tracing::Span::current().record("task_id", created.body.task_id.as_str());
        tracing::info!("user export submitted");
        Ok(Response::new(ExportUsersResponse { task_id: created.body.task_id }))
    }

    #[tracing::instrument(skip_all, fields(user_id = request.get_ref().user_id.as_str()))]
    async fn export_user(&self, request: Request<ExportUserRequest>) -> Result<Response<ExportUserResponse>, Status> {
        let user_id = &request.get_ref().user_id;
        validation::user_id(user_id).map_err(errors::invalid_request)?;
        let export = self
            .client
            .export_user(user_id, deadline::for_upstream(request.metadata()))
            .await
            .map_err(|error| upstream_failure(&error))?;
        Ok(Response::new(convert::user_export(export.body)))
    }

    #[tracing::instrument(skip_all, fields(task_id = request.get_ref().task_id.as_str()))]
    async fn get_task(&self, request: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        let task_id = &request.get_ref().task_id;
        validation::task_id(task_id).map_err(errors::invalid_request)?;
        let status = self
            .client
            .get_task(task_id, deadline::for_upstream(request.metadata()))
            .await
            .map_err(|error| upstream_failure(&error))?;
        Ok(Response::new(convert::task(status.body, Utc::now())))
    }

    type WatchTaskStream = TaskEventStream;

    #[tracing::instrument(skip_all, fields(task_id = request.get_ref().task_id.as_str()))]
    async fn watch_task(&self, request: Request<WatchTaskRequest>) -> Result<Response<Self::WatchTaskStream>, Status> {
        let deadline = deadline::from_metadata(request.metadata());
        let task_id = &request.get_ref().task_id;
        validation::task_id(task_id).map_err(errors::invalid_request)?;
        let watcher = self.hub.watch(task_id)?;
        Ok(Response::new(Box::pin(events::task_events(watcher, deadline))))
    }
}

/// Logs an upstream failure and maps it to the caller's status.
fn upstream_failure(error: &crate::stream::UpstreamError) -> Status {
    tracing::warn!(%error, "upstream request failed");
    errors::upstream_status(error)
}
