//! The Stream API client.
