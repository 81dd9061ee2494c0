//! The generated contract of `proto/pipelinecontrol/v1`: messages, the server and the client,
//! and the descriptor set that reflection serves. The service (`grpc`) and the command line
//! (`client`) both use it; it uses neither.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

pub(crate) mod codec;

tonic::include_proto!("pipelinecontrol.v1");

/// The encoded descriptor set of the contract, with its imports and doc comments, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pipeline_control_descriptor.bin"));
