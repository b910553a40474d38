//! stream-export: a gRPC service that puts Stream Chat's asynchronous export API behind a
//! protobuf contract, holds the Stream API secret so that clients never do, and ships a
//! faithful emulator of the Stream API for trying it out and for every test.
//!
//! ARCHITECTURE.md is the map: the layers, which way imports point, and where to start reading.

#![warn(missing_docs)]

pub mod archive;
pub mod client_cli;
pub mod codec;
pub mod config;
pub mod contract;
pub mod emulator;
pub mod error_chain;
pub mod export_file;
pub mod fleet;
pub mod jobs;
pub mod service;
pub mod startup;
pub mod store;
pub mod task_watch;
pub mod telemetry;
pub mod upstream;

pub use contract::proto;
