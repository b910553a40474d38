//! The `stream-export` binary as a child process: the CLI, TLS and tokens, logs, drain.
//!
//! One test binary (see ARCHITECTURE.md, "Tests"): each file below is a module; `common` is the
//! one helper module that all three binaries share.

#[path = "../common/mod.rs"]
mod common;

mod archives;
mod cli;
mod cli_client;
mod cli_schedules;
mod docs;
mod drain;
mod fleet;
mod fleet_jobs;
mod fleet_redis;
mod fleet_watch;
mod policies;
mod proxy;
mod schedules;
mod security;
mod state;
mod telemetry;
mod traces;
