//! stream-export: a gRPC service that puts Stream Chat's asynchronous export API behind a
//! protobuf contract, holds the Stream API secret so that clients never do, and ships a
//! faithful emulator of the Stream API for trying it out and for every test.

pub mod client_cli;
pub mod codec;
pub mod config;
pub mod emulator;
pub mod export_file;
pub mod service;
pub mod startup;
pub mod store;
pub mod task_watch;
pub mod telemetry;
pub mod upstream;

/// The generated protobuf types and gRPC stubs of `streamexport.v1`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("streamexport.v1");

    /// The encoded descriptor set of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("streamexport_descriptor");

    impl TaskState {
        /// Whether the task has ended (completed, failed or canceled): it changes no more.
        pub fn is_terminal(self) -> bool {
            matches!(self, Self::Completed | Self::Failed | Self::Canceled)
        }
    }
}
