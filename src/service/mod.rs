//! The gRPC handlers.
