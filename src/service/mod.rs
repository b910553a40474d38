//! The gRPC handlers of `streamexport.v1.ExportService`, one file per group of RPCs:
//!
//! - `ExportChannels`, `ExportUsers` (idempotent, recorded in the task registry) and
//!   `ExportUser` in `submits`;
//! - `GetTask`, `WatchTask`, and `ListTasks` with its `page_token`s in `task_reads`;
//! - `ReadExport` in `read_export`;
//! - the export job RPCs in `jobs`.
//!
//! Each handler begins with the per-call context (`call`: the caller, admission, the deadline),
//! validates (see [`validation`]), is checked against the [`authorization`] policies before it
//! goes upstream (a task's owner comes from the registry, `task_access`), makes its upstream
//! call, and converts the answer; every failure becomes a status of `contract::status`. Submits
//! and exports are written to the [`audit`] log. Each RPC is named once, by [`Rpc`]: its Cedar
//! action, audit `rpc` value and idempotency key all read that name. This file holds the
//! service's state and the `ExportService` impl, which only forwards to the group files.

pub mod audit;
pub mod authorization;
mod call;
pub mod caller;
mod deadline;
mod forwarded_cert;
mod jobs;
mod page_token;
mod read_export;
mod revocation;
mod rpc;
mod schedules;
mod submits;
mod task_access;
mod task_reads;
pub mod validation;

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use self::authorization::Policies;
pub use self::{
    jobs::{ExportJobEventStream, JobChecks},
    read_export::ExportRecordStream,
    rpc::Rpc,
    task_reads::TaskEventStream,
};
use crate::{
    export_file::ReadLimits,
    jobs::{Jobs, schedules::Schedules},
    proto::{
        CancelExportJobRequest, CreateExportJobRequest, ExportChannelsRequest, ExportChannelsResponse, ExportJob,
        ExportUserRequest, ExportUserResponse, ExportUsersRequest, ExportUsersResponse, GetExportJobRequest,
        GetTaskRequest, ListExportJobTasksRequest, ListExportJobTasksResponse, ListExportJobsRequest,
        ListExportJobsResponse, ListTasksRequest, ListTasksResponse, ReadExportRequest, Task, VerifyExportJobRequest,
        VerifyExportJobResponse, WatchExportJobRequest, WatchTaskRequest, export_service_server::ExportService,
    },
    proto::{
        CreateExportScheduleRequest, DeleteExportScheduleRequest, ExportSchedule, GetExportScheduleRequest,
        ListExportSchedulesRequest, ListExportSchedulesResponse, UpdateExportScheduleRequest,
    },
    store::{SubmitStore, TaskRegistry},
    task_watch::WatchHub,
    upstream::StreamClient,
};

/// Limits on the unary calls of one replica.
#[derive(Clone, Copy, Debug)]
pub struct CallLimits {
    /// Most unary calls handled at once; past it, calls are shed with RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// The longest a unary call may take, whatever deadline the caller sent.
    pub unary_timeout: Duration,
    /// Limits of ReadExport streams.
    pub reads: ReadLimits,
    /// The most records one `ListTasks` call reads from the registry: a caller who may see few
    /// tasks gets short pages (each with a token to go on) instead of a scan of every record.
    pub list_scan_limit: usize,
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            unary_timeout: Duration::from_secs(30),
            reads: ReadLimits::default(),
            list_scan_limit: 500,
        }
    }
}

/// The `ExportService` implementation.
#[derive(Clone, Debug)]
pub struct ExportApi {
    client: StreamClient,
    hub: WatchHub,
    submits: Arc<dyn SubmitStore>,
    registry: Arc<dyn TaskRegistry>,
    jobs: Jobs,
    schedules: Schedules,
    policies: Policies,
    limits: CallLimits,
    /// One permit per call in flight (see `call::Call::begin`).
    in_flight: Arc<Semaphore>,
    /// One permit per ReadExport stream that is reading its file.
    read_streams: Arc<Semaphore>,
    /// Cancelled when the drain ends the ReadExport streams still open.
    reads_ending: CancellationToken,
    /// How many records each task's file has, once a read went to its end (a task's file never
    /// changes): a `start_index` past the end is refused without downloading the file again.
    record_counts: moka::sync::Cache<String, u64>,
    /// The key that authenticates `ListTasks` page tokens.
    page_token_key: Arc<[u8; 32]>,
    /// `ListTasks` calls running, per caller.
    listings: Arc<std::sync::Mutex<HashMap<String, usize>>>,
}

/// How many tasks' record counts are remembered.
const RECORD_COUNTS_REMEMBERED: u64 = 10_000;

impl ExportApi {
    /// A service that sends every request through `client`, watches tasks through `hub`,
    /// deduplicates submits in `stores.submits`, records their tasks in `stores.registry`, runs
    /// export jobs and schedules in `schedules`, and lets callers do what `policies` permit.
    pub fn new(
        client: StreamClient,
        hub: WatchHub,
        stores: Stores,
        schedules: Schedules,
        policies: Policies,
        limits: CallLimits,
    ) -> Self {
        Self {
            client,
            hub,
            submits: stores.submits,
            registry: stores.registry,
            jobs: schedules.jobs().clone(),
            schedules,
            policies,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            read_streams: Arc::new(Semaphore::new(limits.reads.max_streams)),
            reads_ending: CancellationToken::new(),
            record_counts: moka::sync::Cache::new(RECORD_COUNTS_REMEMBERED),
            page_token_key: Arc::new(stores.page_token_key),
            listings: Arc::default(),
            limits,
        }
    }

    /// Cancelling this token ends every open ReadExport stream with UNAVAILABLE `SHUTTING_DOWN`
    /// and its `next_index` (the end of the drain).
    pub fn read_streams_ending(&self) -> CancellationToken {
        self.reads_ending.clone()
    }
}

/// Forwards each RPC to its group's file.
#[tonic::async_trait]
impl ExportService for ExportApi {
    async fn export_channels(
        &self,
        request: Request<ExportChannelsRequest>,
    ) -> Result<Response<ExportChannelsResponse>, Status> {
        submits::export_channels(self, request).await
    }

    async fn export_users(
        &self,
        request: Request<ExportUsersRequest>,
    ) -> Result<Response<ExportUsersResponse>, Status> {
        submits::export_users(self, request).await
    }

    async fn export_user(&self, request: Request<ExportUserRequest>) -> Result<Response<ExportUserResponse>, Status> {
        submits::export_user(self, request).await
    }

    async fn get_task(&self, request: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        task_reads::get_task(self, request).await
    }

    type WatchTaskStream = TaskEventStream;

    async fn watch_task(&self, request: Request<WatchTaskRequest>) -> Result<Response<Self::WatchTaskStream>, Status> {
        task_reads::watch_task(self, request).await
    }

    async fn list_tasks(&self, request: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        task_reads::list_tasks(self, request).await
    }

    type ReadExportStream = ExportRecordStream;

    async fn read_export(
        &self,
        request: Request<ReadExportRequest>,
    ) -> Result<Response<Self::ReadExportStream>, Status> {
        read_export::read_export(self, request).await
    }

    async fn create_export_job(&self, request: Request<CreateExportJobRequest>) -> Result<Response<ExportJob>, Status> {
        jobs::create_export_job(self, request).await
    }

    async fn get_export_job(&self, request: Request<GetExportJobRequest>) -> Result<Response<ExportJob>, Status> {
        jobs::get_export_job(self, request).await
    }

    async fn list_export_jobs(
        &self,
        request: Request<ListExportJobsRequest>,
    ) -> Result<Response<ListExportJobsResponse>, Status> {
        jobs::list_export_jobs(self, request).await
    }

    async fn cancel_export_job(&self, request: Request<CancelExportJobRequest>) -> Result<Response<ExportJob>, Status> {
        jobs::cancel_export_job(self, request).await
    }

    type WatchExportJobStream = ExportJobEventStream;

    async fn watch_export_job(
        &self,
        request: Request<WatchExportJobRequest>,
    ) -> Result<Response<Self::WatchExportJobStream>, Status> {
        jobs::watch_export_job(self, request).await
    }

    async fn list_export_job_tasks(
        &self,
        request: Request<ListExportJobTasksRequest>,
    ) -> Result<Response<ListExportJobTasksResponse>, Status> {
        jobs::list_export_job_tasks(self, request).await
    }

    async fn verify_export_job(
        &self,
        request: Request<VerifyExportJobRequest>,
    ) -> Result<Response<VerifyExportJobResponse>, Status> {
        jobs::verify_export_job(self, request).await
    }

    async fn create_export_schedule(
        &self,
        request: Request<CreateExportScheduleRequest>,
    ) -> Result<Response<ExportSchedule>, Status> {
        schedules::create_export_schedule(self, request).await
    }

    async fn get_export_schedule(
        &self,
        request: Request<GetExportScheduleRequest>,
    ) -> Result<Response<ExportSchedule>, Status> {
        schedules::get_export_schedule(self, request).await
    }

    async fn list_export_schedules(
        &self,
        request: Request<ListExportSchedulesRequest>,
    ) -> Result<Response<ListExportSchedulesResponse>, Status> {
        schedules::list_export_schedules(self, request).await
    }

    async fn update_export_schedule(
        &self,
        request: Request<UpdateExportScheduleRequest>,
    ) -> Result<Response<ExportSchedule>, Status> {
        schedules::update_export_schedule(self, request).await
    }

    async fn delete_export_schedule(
        &self,
        request: Request<DeleteExportScheduleRequest>,
    ) -> Result<Response<()>, Status> {
        schedules::delete_export_schedule(self, request).await
    }
}

/// The service's stores.
#[derive(Clone, Debug)]
pub struct Stores {
    /// Idempotent submits.
    pub submits: Arc<dyn SubmitStore>,
    /// The tasks submitted through the service.
    pub registry: Arc<dyn TaskRegistry>,
    /// The key that authenticates `ListTasks` page tokens: kept with the state, so that a token
    /// outlives a restart (and, in a fleet, shared by every replica).
    pub page_token_key: [u8; 32],
}
