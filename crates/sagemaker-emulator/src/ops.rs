//! The SageMaker operations: input checked as SageMaker checks it, state changed through the
//! engine, output shaped as the API model says (PascalCase members, epoch-second times).
//! Each call sees only the [`Resources`] of its caller's account and region, and the ARNs it
//! makes name them.
//!
//! This file dispatches; `executions`: the execution operations; `pipelines`: the pipeline
//! and pipeline-version operations; `common`: what both use (ClientRequestToken replay,
//! finding a pipeline, pagination). `executions` and `pipelines` import `common` only.

mod common;
mod executions;
mod pipelines;

use serde_json::Value;

use super::state::{Emulator, Operation, Resources};
use common::{OpResult, parse};

/// Runs `op` on its JSON input, in the account and region `res` holds.
pub(crate) fn call(emulator: &Emulator, res: &Resources, op: Operation, input: Value) -> OpResult {
    match op {
        Operation::CreatePipeline => pipelines::create_pipeline(emulator, res, parse(input)?),
        Operation::DescribePipeline => pipelines::describe_pipeline(res, parse(input)?),
        Operation::StartPipelineExecution => executions::start_execution(emulator, res, input),
        Operation::DescribePipelineExecution => {
            executions::describe_execution(emulator, res, parse(input)?)
        }
        Operation::ListPipelineExecutions => {
            executions::list_executions(emulator, res, parse(input)?)
        }
        Operation::ListPipelineExecutionSteps => {
            executions::list_steps(emulator, res, parse(input)?)
        }
        Operation::StopPipelineExecution => executions::stop_execution(emulator, res, input),
        Operation::SendPipelineExecutionStepSuccess => executions::send(emulator, res, input, true),
        Operation::SendPipelineExecutionStepFailure => {
            executions::send(emulator, res, input, false)
        }
        Operation::RetryPipelineExecution => executions::retry_execution(emulator, res, input),
        Operation::ListPipelines => pipelines::list_pipelines(res, parse(input)?),
        Operation::DeletePipeline => pipelines::delete_pipeline(emulator, res, input),
        Operation::UpdatePipeline => pipelines::update_pipeline(emulator, res, parse(input)?),
        Operation::UpdatePipelineExecution => {
            executions::update_execution(emulator, res, parse(input)?)
        }
        Operation::ListPipelineVersions => pipelines::list_versions(res, parse(input)?),
        Operation::UpdatePipelineVersion => pipelines::update_version(res, parse(input)?),
        Operation::ListPipelineParametersForExecution => {
            executions::list_parameters(emulator, res, parse(input)?)
        }
        Operation::DescribePipelineDefinitionForExecution => {
            executions::describe_definition(emulator, res, parse(input)?)
        }
    }
}
