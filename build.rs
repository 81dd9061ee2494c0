//! Compiles the gRPC contract in `proto/` with protox (pure Rust, so no system `protoc`), generates
//! the tonic server and client, and writes the encoded descriptor set that server reflection serves.
//! Source info is kept so that `grpcurl describe` shows the doc comments.

use std::{env, error::Error, path::PathBuf};

const PROTO: &str = "proto/pipelinecontrol/v1/pipeline_control.proto";
/// googleapis' error model (copied from there): `Status` is part of the contract, and the error
/// details are compiled into the same descriptor set so that reflection serves every
/// `google.rpc` type from one set of files under their usual names.
const ERROR_DETAILS: &str = "google/rpc/error_details.proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_file(PROTO)?;
    compiler.open_file(ERROR_DETAILS)?;

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("pipeline_control_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .emit_rerun_if_changed(false)
        // prost's codec, but a request that does not decode is the caller's fault. (The
        // generated client, used by tests and the load generator, shares it: a response that
        // does not decode reads as INVALID_ARGUMENT there.)
        .codec_path("crate::pb::codec::Codec")
        // The google.rpc messages are tonic-types' (the ones its error details use).
        .extern_path(".google.rpc", "::tonic_types::pb")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
