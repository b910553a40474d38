//! The export schedule RPCs: `CreateExportSchedule`, `GetExportSchedule`,
//! `ListExportSchedules`, `UpdateExportSchedule` and `DeleteExportSchedule`. The windows'
//! jobs are started by `jobs::schedules`, each checked for the owner when it starts.

use chrono::Utc;
use prost::Message;
use tonic::{Request, Response, Status};
use tonic_types::FieldViolation;

use super::{
    ExportApi,
    audit::{self, Subject},
    authorization::{NOBODY, Resource},
    call::Call,
    caller::Caller,
    jobs::{archive_location, check_items, check_list_size, normalised_archive, page_size, read_token},
    page_token::{self, Listing},
    rpc::Rpc,
    validation,
};
use crate::{
    contract::{status, task::timestamp},
    jobs::{
        plan,
        schedules::{DEFAULT_LAG, duration_micros, windows_due},
        store_failure,
    },
    proto::{
        CreateExportJobRequest, CreateExportScheduleRequest, DeleteExportScheduleRequest, ExportSchedule,
        GetExportScheduleRequest, ListExportSchedulesRequest, ListExportSchedulesResponse, UpdateExportScheduleRequest,
    },
    store::{
        Fingerprint,
        jobs::micros,
        registry::Cursor,
        schedules::{ScheduleCreated, ScheduleRecord},
    },
};

/// `CreateExportSchedule`: validated, authorized (and an explicit list's channels checked for
/// the caller) before anything is stored; its windows then start jobs in the background.
pub(super) async fn create_export_schedule(
    api: &ExportApi,
    request: Request<CreateExportScheduleRequest>,
) -> Result<Response<ExportSchedule>, Status> {
    let rpc = Rpc::CreateExportSchedule;
    let call = Call::begin(api, &request)?;
    let message = request.get_ref();
    let outcome = async {
        let Some(given) = &message.schedule else {
            let required = FieldViolation::new("schedule", "is required: its template, interval and start_time");
            return Err(status::invalid_request(vec![required]));
        };
        if let Some(template) = &given.template {
            check_list_size(api, template, "schedule.template.")?;
        }
        let mut problems = validation::export_schedule("schedule", given).err().unwrap_or_default();
        problems.extend(validation::request_id(&message.request_id).err().unwrap_or_default());
        if !problems.is_empty() {
            return Err(status::invalid_request(problems));
        }
        let template = template_of(given);
        let archive = archive_location(api, &template.archive_uri)?;
        let schedule_id = uuid::Uuid::new_v4().to_string();
        let resource = Resource::Schedule { id: &schedule_id, owner: None, archive: archive.as_deref() };
        api.policies.check(&call.caller, rpc, &resource)?;
        if let Some(items) = plan::listed(&template) {
            check_items(&api.policies, &call.caller, &template, &items)?;
        }
        let lag = given.lag.unwrap_or_else(default_lag);
        let start = micros(given.start_time.as_ref());
        let interval = duration_micros(given.interval.as_ref());
        let now = Utc::now();
        let due = windows_due(start, interval, duration_micros(Some(&lag)), now.timestamp_micros());
        let settings = api.schedules.settings();
        if due > settings.max_backfill {
            let why = format!(
                "{due} windows have already ended; a new schedule may catch up at most {} (start later, or use a longer interval)",
                settings.max_backfill
            );
            return Err(status::invalid_request(vec![FieldViolation::new("schedule.start_time", why)]));
        }
        let asked = ExportSchedule {
            template: Some(template),
            interval: given.interval,
            start_time: given.start_time,
            lag: Some(lag),
            paused: given.paused,
            full_every: given.full_every,
            ..ExportSchedule::default()
        };
        let fingerprint = Fingerprint::of_bytes(rpc.name(), &asked.encode_to_vec()).to_hex();
        let created = Some(timestamp(now));
        let schedule = ExportSchedule {
            schedule_id,
            owner: call.caller.name.clone(),
            next_window_start: asked.start_time,
            create_time: created,
            update_time: created,
            ..asked
        };
        let record = ScheduleRecord {
            schedule,
            owner_source: call.caller.source.name().to_owned(),
            fingerprint: fingerprint.clone(),
            request_id: message.request_id.clone(),
            revision: 0,
        };
        match api.schedules.create(record).await? {
            ScheduleCreated::New(created) => Ok(created.schedule),
            ScheduleCreated::Existing(existing) if existing.fingerprint == fingerprint => Ok(existing.schedule),
            ScheduleCreated::Existing(_) => Err(status::request_id_reused()),
        }
    }
    .await;
    audit_outcome(&call.caller, rpc, outcome.as_ref().map(|schedule| schedule.schedule_id.as_str()));
    Ok(Response::new(outcome?))
}

/// The lag of a schedule that names none (also when an update clears it).
fn default_lag() -> prost_types::Duration {
    prost_types::Duration { seconds: i64::try_from(DEFAULT_LAG.as_secs()).unwrap_or(i64::MAX), nanos: 0 }
}

/// A schedule's template as stored: the window and `request_id` are the schedule's to set.
fn template_of(schedule: &ExportSchedule) -> CreateExportJobRequest {
    CreateExportJobRequest {
        messages_since: None,
        messages_until: None,
        request_id: String::new(),
        ..schedule.template.clone().unwrap_or_default()
    }
}

/// A schedule's archive as the policies see it: its template's `archive_uri`, normalised.
fn archive_of(schedule: &ExportSchedule) -> Option<String> {
    schedule.template.as_ref().and_then(|template| normalised_archive(&template.archive_uri))
}

fn audit_outcome(caller: &Caller, rpc: Rpc, outcome: Result<&str, &Status>) {
    audit::record(caller, rpc, &Subject::Schedule(outcome.as_ref().map_or("", |id| id)), outcome);
}

/// `GetExportSchedule`: the schedule, with the jobs it started read again.
pub(super) async fn get_export_schedule(
    api: &ExportApi,
    request: Request<GetExportScheduleRequest>,
) -> Result<Response<ExportSchedule>, Status> {
    let call = Call::begin(api, &request)?;
    let record = api.authorize_schedule(&call.caller, Rpc::GetExportSchedule, &request.get_ref().schedule_id).await?;
    Ok(Response::new(record.schedule))
}

/// `ListExportSchedules`: the schedules this caller may read, newest first.
pub(super) async fn list_export_schedules(
    api: &ExportApi,
    request: Request<ListExportSchedulesRequest>,
) -> Result<Response<ListExportSchedulesResponse>, Status> {
    let call = Call::begin(api, &request)?;
    let caller = &call.caller;
    api.policies.check(caller, Rpc::ListExportSchedules, &Resource::Service)?;
    let message = request.get_ref();
    let size = page_size(message.page_size)?;
    let nobodys = Resource::Schedule { id: "", owner: Some(NOBODY), archive: None };
    let own_only = api.policies.is_enforced() && !api.policies.allows(caller, Rpc::GetExportSchedule, &nobodys);
    let listing = Listing::schedules(own_only);
    let after = read_token(api, &message.page_token, caller, listing)?;
    // Schedules are few (the service caps them): read all, keep what this caller may read.
    let mut all = api.schedules.all().await.map_err(|error| store_failure(&error))?;
    all.retain(|record| {
        let schedule = &record.schedule;
        let archive = archive_of(schedule);
        let resource =
            Resource::Schedule { id: &schedule.schedule_id, owner: Some(&schedule.owner), archive: archive.as_deref() };
        (!own_only || schedule.owner == caller.name) && api.policies.allows(caller, Rpc::GetExportSchedule, &resource)
    });
    let position = |schedule: &ExportSchedule| (micros(schedule.create_time.as_ref()), schedule.schedule_id.clone());
    all.sort_by_key(|record| std::cmp::Reverse(position(&record.schedule)));
    let mut page: Vec<ExportSchedule> = all
        .into_iter()
        .map(|record| record.schedule)
        .filter(|schedule| after.as_ref().is_none_or(|at| position(schedule) < (at.created_micros, at.task_id.clone())))
        .take(size + 1)
        .collect();
    let more = page.len() > size;
    page.truncate(size);
    let next_page_token = match (more, page.last()) {
        (true, Some(last)) => {
            let (created_micros, task_id) = position(last);
            page_token::write(&Cursor { created_micros, task_id }, caller, listing, &api.page_token_key)
        }
        _ => String::new(),
    };
    Ok(Response::new(ListExportSchedulesResponse { schedules: page, next_page_token }))
}

/// `UpdateExportSchedule`: the fields `update_mask` names, written over the schedule as read.
pub(super) async fn update_export_schedule(
    api: &ExportApi,
    request: Request<UpdateExportScheduleRequest>,
) -> Result<Response<ExportSchedule>, Status> {
    let rpc = Rpc::UpdateExportSchedule;
    let call = Call::begin(api, &request)?;
    let message = request.get_ref();
    let given = message.schedule.clone().unwrap_or_default();
    let outcome = async {
        let paths = message.update_mask.as_ref().map(|mask| mask.paths.clone()).unwrap_or_default();
        if let Some(template) = given.template.as_ref().filter(|_| paths.iter().any(|path| path == "template")) {
            check_list_size(api, template, "schedule.template.")?;
        }
        let mut problems =
            validation::schedule_id("schedule.schedule_id", &given.schedule_id).err().unwrap_or_default();
        problems.extend(validation::export_schedule_update(&given, &paths).err().unwrap_or_default());
        if !problems.is_empty() {
            return Err(status::invalid_request(problems));
        }
        let record = api.authorize_schedule(&call.caller, rpc, &given.schedule_id).await?;
        let changes_template = paths.iter().any(|path| path == "template");
        let template = template_of(&given);
        if changes_template {
            // The new archive and channels are checked too: an update may not take the
            // schedule where its owner could not create it.
            let archive = archive_location(api, &template.archive_uri)?;
            let resource = Resource::Schedule {
                id: &record.schedule.schedule_id,
                owner: Some(&record.schedule.owner),
                archive: archive.as_deref(),
            };
            api.policies.check(&call.caller, rpc, &resource)?;
            if let Some(items) = plan::listed(&template) {
                check_items(&api.policies, &call.caller, &template, &items)?;
            }
        }
        let edit = |schedule: &mut ExportSchedule| {
            for path in &paths {
                match path.as_str() {
                    "paused" => schedule.paused = given.paused,
                    "template" => schedule.template = Some(template.clone()),
                    "interval" => schedule.interval = given.interval,
                    "lag" => schedule.lag = Some(given.lag.unwrap_or_else(default_lag)),
                    "full_every" => schedule.full_every = given.full_every,
                    _ => {}
                }
            }
            Ok(())
        };
        let schedule_id = record.schedule.schedule_id;
        match api.schedules.update(&schedule_id, edit).await? {
            Some(written) => Ok(written.schedule),
            None => Err(status::schedule_not_found(&schedule_id)),
        }
    }
    .await;
    audit_outcome(&call.caller, rpc, outcome.as_ref().map(|schedule| schedule.schedule_id.as_str()));
    Ok(Response::new(outcome?))
}

/// `DeleteExportSchedule`: no window starts after it; its jobs stay.
pub(super) async fn delete_export_schedule(
    api: &ExportApi,
    request: Request<DeleteExportScheduleRequest>,
) -> Result<Response<()>, Status> {
    let rpc = Rpc::DeleteExportSchedule;
    let call = Call::begin(api, &request)?;
    let outcome = async {
        let record = api.authorize_schedule(&call.caller, rpc, &request.get_ref().schedule_id).await?;
        let schedule_id = record.schedule.schedule_id;
        match api.schedules.delete(&schedule_id).await.map_err(|error| store_failure(&error))? {
            true => Ok(schedule_id),
            false => Err(status::schedule_not_found(&schedule_id)),
        }
    }
    .await;
    audit_outcome(&call.caller, rpc, outcome.as_ref().map(String::as_str));
    outcome?;
    Ok(Response::new(()))
}

impl ExportApi {
    /// The schedule `schedule_id` if the policies let this caller do `rpc` on it. An unknown
    /// id is NOT_FOUND to a caller who may act on schedules it does not own, PERMISSION_DENIED
    /// to others (so that ids cannot be probed).
    async fn authorize_schedule(&self, caller: &Caller, rpc: Rpc, schedule_id: &str) -> Result<ScheduleRecord, Status> {
        let field = if rpc == Rpc::UpdateExportSchedule { "schedule.schedule_id" } else { "schedule_id" };
        let schedule_id = validation::schedule_id(field, schedule_id).map_err(status::invalid_request)?;
        let record = self.schedules.get(&schedule_id).await.map_err(|error| store_failure(&error))?;
        let owner = record.as_ref().map(|record| record.schedule.owner.as_str());
        let archive = record.as_ref().and_then(|record| archive_of(&record.schedule));
        self.policies.check(
            caller,
            rpc,
            &Resource::Schedule { id: &schedule_id, owner, archive: archive.as_deref() },
        )?;
        record.ok_or_else(|| status::schedule_not_found(&schedule_id))
    }
}
