//! The client of the Stream Chat REST API: authentication, HTTP, wire types and errors.
//!
//! Everything here follows the real API's wire format (as the official SDKs send it;
//! `docs/emulator.md` describes it), so the same code talks to Stream itself or to the emulator, by
//! base URL alone.

mod api_http;
mod auth;
pub mod body;
pub mod channel_list;
mod client;
pub mod convert;
pub mod destination;
mod error;
mod rate_limit;
mod startup_check;
mod status;
pub mod wire;

pub use auth::Credentials;
pub use client::{Answer, ClientConfig, RetryPolicy, StreamClient, decode};
pub use error::{ErrorKind, Operation, UpstreamError};
pub use rate_limit::RateLimit;
pub use startup_check::CredentialCheck;
pub use status::download_not_started;
