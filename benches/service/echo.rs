//! The bare tonic server of figures 1 and 2: the same `ExportService` trait, `GetTask`
//! answering a fixed `Task` (the very bytes the service returned for the benchmark's task, so
//! both reply with messages of the same size), `WatchTask` a snapshot and then silence, the
//! rest unimplemented. No layers, no upstream: the floor any tonic service pays.

use std::{net::SocketAddr, pin::Pin};

use futures::StreamExt;
use prost::Message;
use stream_export::proto::{
    CancelExportJobRequest, CreateExportJobRequest, ExportChannelsRequest, ExportChannelsResponse, ExportJob,
    ExportJobEvent, ExportRecord, ExportUserRequest, ExportUserResponse, ExportUsersRequest, ExportUsersResponse,
    GetExportJobRequest, GetTaskRequest, ListExportJobTasksRequest, ListExportJobTasksResponse, ListExportJobsRequest,
    ListExportJobsResponse, ListTasksRequest, ListTasksResponse, ReadExportRequest, Task, TaskEvent,
    VerifyExportJobRequest, VerifyExportJobResponse, WatchExportJobRequest, WatchTaskRequest,
    export_service_server::{ExportService, ExportServiceServer},
};
use stream_export::proto::{
    CreateExportScheduleRequest, DeleteExportScheduleRequest, ExportSchedule, GetExportScheduleRequest,
    ListExportSchedulesRequest, ListExportSchedulesResponse, UpdateExportScheduleRequest, task_event::EventType,
};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

struct Echo {
    task: Task,
}

#[tonic::async_trait]
impl ExportService for Echo {
    async fn export_channels(
        &self,
        _: Request<ExportChannelsRequest>,
    ) -> Result<Response<ExportChannelsResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn export_users(&self, _: Request<ExportUsersRequest>) -> Result<Response<ExportUsersResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn export_user(&self, _: Request<ExportUserRequest>) -> Result<Response<ExportUserResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn list_tasks(&self, _: Request<ListTasksRequest>) -> Result<Response<ListTasksResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn get_task(&self, _: Request<GetTaskRequest>) -> Result<Response<Task>, Status> {
        Ok(Response::new(self.task.clone()))
    }

    type ReadExportStream = Pin<Box<dyn Stream<Item = Result<ExportRecord, Status>> + Send>>;

    async fn read_export(&self, _: Request<ReadExportRequest>) -> Result<Response<Self::ReadExportStream>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    type WatchTaskStream = Pin<Box<dyn Stream<Item = Result<TaskEvent, Status>> + Send>>;

    /// One snapshot, then an open stream that never sends again: the least a tonic server
    /// holds per open server stream, to set the service's memory per watcher against.
    async fn watch_task(&self, _: Request<WatchTaskRequest>) -> Result<Response<Self::WatchTaskStream>, Status> {
        let snapshot = TaskEvent {
            sequence: 1,
            r#type: EventType::Snapshot as i32,
            task: Some(self.task.clone()),
            observe_time: None,
        };
        let events = futures::stream::once(async move { Ok(snapshot) }).chain(futures::stream::pending());
        Ok(Response::new(Box::pin(events)))
    }

    async fn create_export_job(&self, _: Request<CreateExportJobRequest>) -> Result<Response<ExportJob>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn get_export_job(&self, _: Request<GetExportJobRequest>) -> Result<Response<ExportJob>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn list_export_jobs(
        &self,
        _: Request<ListExportJobsRequest>,
    ) -> Result<Response<ListExportJobsResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn cancel_export_job(&self, _: Request<CancelExportJobRequest>) -> Result<Response<ExportJob>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    type WatchExportJobStream = Pin<Box<dyn Stream<Item = Result<ExportJobEvent, Status>> + Send>>;

    async fn watch_export_job(
        &self,
        _: Request<WatchExportJobRequest>,
    ) -> Result<Response<Self::WatchExportJobStream>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn list_export_job_tasks(
        &self,
        _: Request<ListExportJobTasksRequest>,
    ) -> Result<Response<ListExportJobTasksResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn verify_export_job(
        &self,
        _: Request<VerifyExportJobRequest>,
    ) -> Result<Response<VerifyExportJobResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn create_export_schedule(
        &self,
        _: Request<CreateExportScheduleRequest>,
    ) -> Result<Response<ExportSchedule>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn get_export_schedule(
        &self,
        _: Request<GetExportScheduleRequest>,
    ) -> Result<Response<ExportSchedule>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn list_export_schedules(
        &self,
        _: Request<ListExportSchedulesRequest>,
    ) -> Result<Response<ListExportSchedulesResponse>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn update_export_schedule(
        &self,
        _: Request<UpdateExportScheduleRequest>,
    ) -> Result<Response<ExportSchedule>, Status> {
        Err(Status::unimplemented("echo server"))
    }

    async fn delete_export_schedule(&self, _: Request<DeleteExportScheduleRequest>) -> Result<Response<()>, Status> {
        Err(Status::unimplemented("echo server"))
    }
}

/// Runs the echo server on `addr` until killed. `task_hex` is the encoded `Task` to answer.
/// The runtime is `#[tokio::main]`'s default, as the service's is.
pub fn run(addr: &str, task_hex: &str) {
    let addr: SocketAddr = addr.parse().expect("--echo-server wants ADDR TASK_HEX");
    let bytes = hex::decode(task_hex).expect("TASK_HEX is hex");
    let task = Task::decode(bytes.as_slice()).expect("TASK_HEX is an encoded Task");
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    runtime.block_on(async move {
        tonic::transport::Server::builder()
            .add_service(ExportServiceServer::new(Echo { task }))
            .serve(addr)
            .await
            .expect("the echo server runs");
    });
}
