//! The export schedule RPCs: `CreateExportSchedule`, `GetExportSchedule`,
//! `ListExportSchedules`, `UpdateExportSchedule` and `DeleteExportSchedule`.

use tonic::{Request, Response, Status};

use super::ExportApi;
use crate::proto::{
    CreateExportScheduleRequest, DeleteExportScheduleRequest, ExportSchedule, GetExportScheduleRequest,
    ListExportSchedulesRequest, ListExportSchedulesResponse, UpdateExportScheduleRequest,
};

pub(super) async fn create_export_schedule(
    _api: &ExportApi,
    _request: Request<CreateExportScheduleRequest>,
) -> Result<Response<ExportSchedule>, Status> {
    Err(Status::unimplemented("export schedules are being built"))
}

pub(super) async fn get_export_schedule(
    _api: &ExportApi,
    _request: Request<GetExportScheduleRequest>,
) -> Result<Response<ExportSchedule>, Status> {
    Err(Status::unimplemented("export schedules are being built"))
}

pub(super) async fn list_export_schedules(
    _api: &ExportApi,
    _request: Request<ListExportSchedulesRequest>,
) -> Result<Response<ListExportSchedulesResponse>, Status> {
    Err(Status::unimplemented("export schedules are being built"))
}

pub(super) async fn update_export_schedule(
    _api: &ExportApi,
    _request: Request<UpdateExportScheduleRequest>,
) -> Result<Response<ExportSchedule>, Status> {
    Err(Status::unimplemented("export schedules are being built"))
}

pub(super) async fn delete_export_schedule(
    _api: &ExportApi,
    _request: Request<DeleteExportScheduleRequest>,
) -> Result<Response<()>, Status> {
    Err(Status::unimplemented("export schedules are being built"))
}
