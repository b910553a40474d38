//! The Stream API emulator alone, as the official SDKs and the service call it.
//!
//! One test binary (see ARCHITECTURE.md, "Tests"): each file below is a module; `common` is the
//! one helper module that all three binaries share.

#[path = "../common/mod.rs"]
mod common;

mod api;
mod exports;
mod faults;
mod query_channels;
