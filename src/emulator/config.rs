//! Settings of an emulator instance and the names of the emulated routes.

use std::time::Duration;

/// How long a new task stays in each state before it moves on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskTimings {
    /// Time spent in `waiting` after creation.
    pub waiting: Duration,
    /// Time spent in `pending` after `waiting`.
    pub pending: Duration,
    /// Time spent in `running` before `completed` (or `failed`).
    pub running: Duration,
}

impl Default for TaskTimings {
    fn default() -> Self {
        Self {
            waiting: Duration::from_millis(200),
            pending: Duration::from_millis(200),
            running: Duration::from_millis(400),
        }
    }
}

/// Per-route request limits, each per one-minute window (the real API's unit).
///
/// The real default for the export routes is 60/min; the emulator defaults to a generous
/// 10 000/min so that tests do not trip over it unless they lower a limit on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimits {
    /// `POST /export_channels`.
    pub export_channels: u32,
    /// `GET /export_channels/{id}`.
    pub get_export_channels: u32,
    /// `GET /tasks/{id}`.
    pub get_task: u32,
    /// `GET /users/{id}/export`.
    pub export_user: u32,
    /// `POST /export/users`.
    pub export_users: u32,
    /// `GET /exports/...` (download of a result file).
    pub download: u32,
    /// `POST /channels` (QueryChannels).
    pub query_channels: u32,
    /// Also limit each second to a route's per-minute limit ÷ 30 (at least 1), as Stream does.
    /// Off by default, so that tests may send bursts.
    pub per_second: bool,
}

impl RateLimits {
    /// The same limit on every route.
    pub fn uniform(per_minute: u32) -> Self {
        Self {
            export_channels: per_minute,
            get_export_channels: per_minute,
            get_task: per_minute,
            export_user: per_minute,
            export_users: per_minute,
            download: per_minute,
            query_channels: per_minute,
            per_second: false,
        }
    }

    pub(crate) fn get(&self, route: Route) -> u32 {
        match route {
            Route::ExportChannels => self.export_channels,
            Route::GetExportChannels => self.get_export_channels,
            Route::GetTask => self.get_task,
            Route::ExportUser => self.export_user,
            Route::ExportUsers => self.export_users,
            Route::Download => self.download,
            Route::QueryChannels => self.query_channels,
            Route::Unknown => DEFAULT_RATE_LIMIT,
        }
    }

    pub(crate) fn set(&mut self, route: Route, per_minute: u32) {
        match route {
            Route::ExportChannels => self.export_channels = per_minute,
            Route::GetExportChannels => self.get_export_channels = per_minute,
            Route::GetTask => self.get_task = per_minute,
            Route::ExportUser => self.export_user = per_minute,
            Route::ExportUsers => self.export_users = per_minute,
            Route::Download => self.download = per_minute,
            Route::QueryChannels => self.query_channels = per_minute,
            Route::Unknown => {}
        }
    }
}

/// The default per-minute limit of every route.
pub const DEFAULT_RATE_LIMIT: u32 = 10_000;

impl Default for RateLimits {
    fn default() -> Self {
        Self::uniform(DEFAULT_RATE_LIMIT)
    }
}

/// Settings of an emulator instance.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The API key clients must send as `api_key`.
    pub api_key: String,
    /// The secret that signs server JWTs and result URLs.
    pub api_secret: String,
    /// State durations of tasks created by the export routes.
    pub timings: TaskTimings,
    /// Per-route, per-minute request limits.
    pub rate_limits: RateLimits,
    /// Seed of the deterministic data set.
    pub seed: u64,
    /// Most channels accepted by one `POST /export_channels` (25 per the docs).
    pub channel_limit: usize,
    /// Most user ids accepted by one `POST /export/users` (25).
    pub user_ids_limit: usize,
    /// How many messages `heavy-user` wrote: over the synchronous export limit by default; set
    /// it under (9,999) to get the largest user `GET /users/{id}/export` still answers.
    pub heavy_user_messages: usize,
    /// How many synthetic `messaging:bulk-NNNNNN` channels to add to the data set (listing at
    /// scale; none by default).
    pub synthetic_channels: usize,
}

/// The default data-set seed.
pub const DEFAULT_SEED: u64 = 42;

impl EmulatorConfig {
    /// An emulator with these credentials and default timings, limits and data.
    pub fn new(api_key: impl Into<String>, api_secret: impl Into<String>) -> Self {
        Self {
            api_key: api_key.into(),
            api_secret: api_secret.into(),
            timings: TaskTimings::default(),
            rate_limits: RateLimits::default(),
            seed: DEFAULT_SEED,
            channel_limit: 25,
            user_ids_limit: 25,
            heavy_user_messages: super::data::HEAVY_USER_MESSAGES,
            synthetic_channels: 0,
        }
    }
}

/// An emulated route, used for rate limits, faults and counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Route {
    ExportChannels,
    GetExportChannels,
    GetTask,
    ExportUser,
    ExportUsers,
    Download,
    QueryChannels,
    Unknown,
}

impl Route {
    /// Every route that has a name a client can use.
    pub(crate) const NAMED: [Route; 7] = [
        Route::ExportChannels,
        Route::GetExportChannels,
        Route::GetTask,
        Route::ExportUser,
        Route::ExportUsers,
        Route::Download,
        Route::QueryChannels,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Route::ExportChannels => "export_channels",
            Route::GetExportChannels => "get_export_channels",
            Route::GetTask => "get_task",
            Route::ExportUser => "export_user",
            Route::ExportUsers => "export_users",
            Route::Download => "download",
            Route::QueryChannels => "query_channels",
            Route::Unknown => "unknown",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Route> {
        Route::NAMED.into_iter().find(|route| route.name() == name)
    }

    /// The operation name used in error messages (`"<Operation> failed with error: ..."`).
    pub(crate) fn operation(self) -> &'static str {
        match self {
            Route::ExportChannels => "ExportChannels",
            Route::GetExportChannels => "GetExportChannelsStatus",
            Route::GetTask => "GetTask",
            Route::ExportUser => "ExportUser",
            Route::ExportUsers => "ExportUsers",
            Route::Download => "Download",
            Route::QueryChannels => "QueryChannels",
            Route::Unknown => "Unknown",
        }
    }

    /// Maps a method and a path to the route axum will dispatch it to.
    pub(crate) fn classify(method: &axum::http::Method, path: &str) -> Route {
        use axum::http::Method;
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let get = method == Method::GET || method == Method::HEAD;
        let post = method == Method::POST;
        match segments.as_slice() {
            ["export_channels"] if post => Route::ExportChannels,
            ["export_channels", id] if get && !id.is_empty() => Route::GetExportChannels,
            ["tasks", id] if get && !id.is_empty() => Route::GetTask,
            ["users", id, "export"] if get && !id.is_empty() => Route::ExportUser,
            ["export", "users"] if post => Route::ExportUsers,
            ["channels"] if post => Route::QueryChannels,
            ["exports", "channels" | "users", task, file] if get && !task.is_empty() && !file.is_empty() => {
                Route::Download
            }
            _ => Route::Unknown,
        }
    }
}
