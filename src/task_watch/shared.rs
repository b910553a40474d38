//! What the hub and its pollers share: the upstream client, the budget, the coordination with
//! other replicas, and the map of watched tasks, which the hub adds to and pollers retire from.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use tokio_util::sync::CancellationToken;

use super::{ChangeObserver, WatchSettings, budget::PollBudget, coordination::PollCoordinator, view::ViewSender};
use crate::{telemetry::otel::WatcherLinks, upstream::StreamClient};

/// A watched task: its view, and its watchers' calls (for the poll spans' links).
pub(super) type Watched = (ViewSender, Arc<WatcherLinks>);

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) client: StreamClient,
    pub(super) settings: WatchSettings,
    pub(super) budget: PollBudget,
    /// Who polls each task (this replica alone, or one replica of the fleet).
    pub(super) polls: Arc<dyn PollCoordinator>,
    /// Told of every observed change.
    pub(super) observer: Option<Arc<dyn ChangeObserver>>,
    pub(super) shutdown: CancellationToken,
    tasks: Mutex<HashMap<String, Watched>>,
}

impl Shared {
    pub(super) fn new(
        client: StreamClient,
        settings: WatchSettings,
        budget: PollBudget,
        polls: Arc<dyn PollCoordinator>,
        observer: Option<Arc<dyn ChangeObserver>>,
    ) -> Self {
        Self { client, settings, budget, polls, observer, shutdown: CancellationToken::new(), tasks: Mutex::default() }
    }

    pub(super) fn lock_tasks(&self) -> MutexGuard<'_, HashMap<String, Watched>> {
        lock(&self.tasks)
    }

    /// Removes the task's entry if it has no watcher left; `false` if one joined meanwhile.
    /// Watchers subscribe under the same lock, so none can slip in between.
    pub(super) fn retire_if_unwatched(&self, task_id: &str, sender: &ViewSender) -> bool {
        let mut tasks = self.lock_tasks();
        if sender.receiver_count() > 0 {
            return false;
        }
        remove_entry(&mut tasks, task_id, sender);
        true
    }

    /// Removes the task's entry: its watchers keep their last view, new ones start afresh.
    pub(super) fn forget(&self, task_id: &str, sender: &ViewSender) {
        remove_entry(&mut self.lock_tasks(), task_id, sender);
    }
}

fn remove_entry(tasks: &mut HashMap<String, Watched>, task_id: &str, sender: &ViewSender) {
    if tasks.get(task_id).is_some_and(|(current, _)| Arc::ptr_eq(current, sender)) {
        tasks.remove(task_id);
    }
}

/// Locks `mutex`, also after a panic elsewhere (the maps it guards stay consistent).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
