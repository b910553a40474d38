//! The Python of the Python conformance suite (`.venv/python-grpc`, made by
//! `conformance/python-grpc/run.sh`), for the figures measured from a grpcio client. Shared by
//! both bench binaries (included by path).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

/// The venv's Python, if grpcio and grpcio-tools import there.
pub fn python_with_grpcio() -> Option<PathBuf> {
    let python = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.venv/python-grpc/bin/python"));
    let works = Command::new(&python)
        .args(["-c", "import grpc, grpc_tools"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    works.then_some(python)
}
