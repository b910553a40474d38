//! The service in-process: the real server and the emulator, each on a random loopback port.
//!
//! One test binary (see ARCHITECTURE.md, "Tests"): each file below is a module; `common` is the
//! one helper module that all three binaries share.

#[path = "../common/mod.rs"]
mod common;

mod archives;
mod authorization;
mod channel_list;
mod error_mapping;
mod export_service;
mod fault_matrix;
mod fuzz_upstream_parsing;
mod idempotency;
mod jobs;
mod protection;
mod read_export;
mod read_export_json;
mod read_export_limits;
mod s3_harness;
mod schedules;
mod transport;
mod upstream_input;
mod validation;
mod watch;
