//! The client of the Stream Chat REST API: authentication, HTTP, wire types and errors.
//!
//! Everything here follows the real API's wire format (`shared/stream-api.md`), so the same
//! code talks to Stream itself or to the emulator, by base URL alone.

mod auth;
pub mod body;
mod client;
pub mod destination;
mod error;
mod rate_limit;
pub mod wire;

pub use auth::Credentials;
pub use client::{ClientConfig, RetryPolicy, StreamClient, Answer, decode};
pub use error::{Operation, UpstreamError};
pub use rate_limit::RateLimit;
