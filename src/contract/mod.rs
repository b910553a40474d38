//! The bottom layer: the gRPC contract and what every layer above says in its terms.
//!
//! The generated `streamexport.v1` types ([`proto`]), the task and job models' helpers on them
//! ([`task`], [`job`]), the one place where failures become gRPC statuses ([`status`]), and the one
//! conversion between JSON and `google.protobuf.Struct` ([`json`]) and the `Struct` that generated
//! messages hold, parsed or already encoded ([`wire_struct`]). Nothing here knows Stream's
//! wire format or any other module of the crate.

pub mod job;
pub mod json;
pub mod status;
pub mod task;
pub mod wire_struct;

/// The generated protobuf types and gRPC stubs of `streamexport.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("streamexport.v1");

    /// The encoded descriptor set of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("streamexport_descriptor");
}

/// The largest response message the service sends and its CLI accepts. An `ExportUser` answer is
/// one message holding the whole user (up to `upstream::body::MAX_USER_EXPORT_BODY_BYTES` of JSON,
/// which protobuf's `Struct` can make up to about twice as large); gRPC clients accept 4 MiB by
/// default, so a client of `ExportUser` raises its limit to this (see the README).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
