//! The generated contract of `proto/pipelinecontrol/v1`: messages, the server and the client,
//! and the descriptor set that reflection serves. The service (`grpc`) and the command line
//! (`client`) both use it; it uses neither.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

pub(crate) mod codec;

tonic::include_proto!("pipelinecontrol.v1");

/// Response metadata of GetExecution and WatchExecution: the SageMaker endpoint the service
/// calls for the execution, when it is not AWS's default (an emulator, a private endpoint), so
/// that a command answering a callback goes where the service's SageMaker is.
pub const SAGEMAKER_ENDPOINT_HEADER: &str = "pipeline-control-sagemaker-endpoint";

/// The encoded descriptor set of the contract, with its imports and doc comments, for server
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/pipeline_control_descriptor.bin"));
