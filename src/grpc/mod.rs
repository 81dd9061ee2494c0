//! The gRPC surface: the generated contract ([`pb`]) and the `PipelineControl` service, one
//! method per RPC (validate, call the domain, convert to proto). Errors become `Status` only
//! in [`crate::error`].

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::{error::Error, hooks};

/// The generated messages, server and client of `proto/pipelinecontrol/v1`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("pipelinecontrol.v1");

    /// The encoded descriptor set of the contract, with its imports and doc comments, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pipeline_control_descriptor.bin"));
}

use pb::pipeline_control_server::PipelineControl;

/// The `pipelinecontrol.v1.PipelineControl` service.
#[derive(Debug, Clone, Default)]
pub(crate) struct PipelineControlService {}

impl PipelineControlService {
    pub(crate) fn new() -> Self {
        Self {}
    }
}

type WatchStream =
    Pin<Box<dyn Stream<Item = Result<pb::WatchExecutionResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl PipelineControl for PipelineControlService {
    async fn stop_execution(
        &self,
        _request: Request<pb::StopExecutionRequest>,
    ) -> Result<Response<pb::StopExecutionResponse>, Status> {
        hooks::handler_entry().await;
        Err(Error::NotImplemented(
            "StopExecution is part of the contract but this server does not serve it yet.",
        )
        .into())
    }

    async fn get_execution(
        &self,
        _request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        hooks::handler_entry().await;
        Err(Error::NotImplemented(
            "GetExecution is part of the contract but this server does not serve it yet.",
        )
        .into())
    }

    type WatchExecutionStream = WatchStream;

    async fn watch_execution(
        &self,
        _request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        hooks::handler_entry().await;
        Err(Error::NotImplemented(
            "WatchExecution is part of the contract but this server does not serve it yet.",
        )
        .into())
    }

    async fn get_stop_request(
        &self,
        _request: Request<pb::GetStopRequestRequest>,
    ) -> Result<Response<pb::StopRequest>, Status> {
        hooks::handler_entry().await;
        Err(Error::NotImplemented(
            "GetStopRequest is part of the contract but this server does not serve it yet.",
        )
        .into())
    }
}
