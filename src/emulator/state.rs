//! Shared emulator state: settings, the data set, the clock, tasks, faults, limits and counters.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
};

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    config::{EmulatorConfig, Route},
    data::DataSet,
    faults::Faults,
    files::ExportKind,
    rate_limit::RateLimiter,
    tasks::{Outcome, Task, TaskDefaults, TaskError},
};

/// The most `traceparent` headers kept (the latest ones).
const MAX_TRACEPARENTS: usize = 256;

/// Request counts, for `GET /_emulator/counters`, with the `traceparent` of the latest API
/// requests (which route, and the header when there was one).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    routes: BTreeMap<&'static str, u64>,
    tasks: BTreeMap<String, u64>,
    exports_created: u64,
    /// 429s answered, per route.
    rate_limited: BTreeMap<&'static str, u64>,
    traceparents: VecDeque<(&'static str, Option<String>)>,
}

impl Counters {
    pub(crate) fn route(&mut self, route: Route, traceparent: Option<&str>) {
        *self.routes.entry(route.name()).or_default() += 1;
        if self.traceparents.len() == MAX_TRACEPARENTS {
            self.traceparents.pop_front();
        }
        self.traceparents.push_back((route.name(), traceparent.map(str::to_owned)));
    }

    pub(crate) fn task_read(&mut self, id: Uuid) {
        *self.tasks.entry(id.to_string()).or_default() += 1;
    }

    pub(crate) fn rate_limited(&mut self, route: Route) {
        *self.rate_limited.entry(route.name()).or_default() += 1;
    }

    pub(crate) fn export_created(&mut self) {
        self.exports_created += 1;
    }

    pub(crate) fn json(&self) -> Value {
        let traceparents: Vec<Value> = self
            .traceparents
            .iter()
            .map(|(route, traceparent)| json!({"route": route, "traceparent": traceparent}))
            .collect();
        json!({"routes": self.routes, "tasks": self.tasks, "exports_created": self.exports_created,
            "rate_limited": self.rate_limited, "traceparents": traceparents})
    }
}

/// The mutable part of the state, behind one lock that is never held across an await.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) clock_offset: Duration,
    pub(crate) tasks: HashMap<Uuid, Task>,
    pub(crate) faults: Faults,
    pub(crate) limiter: RateLimiter,
    pub(crate) counters: Counters,
    pub(crate) task_defaults: TaskDefaults,
}

/// Cheap to clone; handed to every handler.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    pub(crate) api_key: Arc<str>,
    pub(crate) api_secret: Arc<str>,
    pub(crate) channel_limit: usize,
    pub(crate) user_ids_limit: usize,
    pub(crate) data: Arc<DataSet>,
    pub(crate) local_addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl AppState {
    pub(crate) fn new(config: &EmulatorConfig, local_addr: SocketAddr) -> Self {
        Self {
            api_key: config.api_key.as_str().into(),
            api_secret: config.api_secret.as_str().into(),
            channel_limit: config.channel_limit,
            user_ids_limit: config.user_ids_limit,
            data: Arc::new(
                DataSet::generate(config.seed)
                    .with_heavy_user_messages(config.heavy_user_messages)
                    .with_synthetic_channels(config.synthetic_channels, config.seed),
            ),
            local_addr,
            inner: Arc::new(Mutex::new(Inner {
                clock_offset: Duration::zero(),
                tasks: HashMap::new(),
                faults: Faults::default(),
                limiter: RateLimiter::new(config.rate_limits),
                counters: Counters::default(),
                task_defaults: TaskDefaults { timings: config.timings, outcome: Outcome::Completed },
            })),
        }
    }

    /// Locks the mutable state, recovering from a poisoned lock.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The emulator clock: real time plus the offset moved by `POST /_emulator/clock`.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.lock().clock_offset
    }

    /// Creates an export task (counted as an export) and returns its id.
    pub(crate) fn create_task(&self, kind: ExportKind, error: Option<TaskError>) -> Uuid {
        let now = self.now();
        let mut inner = self.lock();
        let task = Task::new(kind, now, inner.task_defaults, error);
        let id = task.id;
        inner.tasks.insert(id, task);
        inner.counters.export_created();
        id
    }
}
