//! Compiles the protobuf contract with protox (pure Rust, no system `protoc`) and writes the
//! encoded descriptor set next to the generated code, where server reflection picks it up.
//!
//! The set is encoded by protox itself (`encode_file_descriptor_set`), not re-encoded from
//! `prost_types`, so that extension options such as `google.api.http` survive: reflection
//! clients and transcoders see them. It includes the imported files (`google/api/*.proto`,
//! `google/protobuf/*.proto`), so reflection can resolve every dependency, and
//! `google/rpc/error_details.proto`, so reflection clients can decode error details.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/streamexport/v1/export.proto";
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    // The google.rpc detail messages are not used by the code, but served by reflection so
    // that grpcurl and other reflection clients can print an error's details.
    compiler.include_source_info(true).include_imports(true).open_files([proto, "google/rpc/error_details.proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("streamexport_descriptor.bin"), compiler.encode_file_descriptor_set())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small initial buffers: see src/codec.rs.
        .codec_path("crate::codec::LeanCodec")
        // JSON records are slices of the downloaded file: `Bytes`, not copied into a `Vec`.
        .bytes(".streamexport.v1.ExportRecord.json")
        // Records can carry a `Struct` already encoded: see src/contract/wire_struct.rs.
        .extern_path(".google.protobuf.Struct", "crate::contract::wire_struct::WireStruct")
        // A failed job's error is a status as RPCs return it: tonic-types' `google.rpc.Status`.
        .extern_path(".google.rpc.Status", "::tonic_types::pb::Status")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
