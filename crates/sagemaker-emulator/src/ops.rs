//! The SageMaker operations: input checked as SageMaker checks it, state changed through the
//! engine, output shaped as the API model says (PascalCase members, epoch-second times).
//! Each call sees only the [`Resources`] of its caller's account and region, and the ARNs it
//! makes name them.

use std::sync::{Arc, PoisonError};

use serde::Deserialize;
use serde_json::{Value, json};

use super::{
    definition::{self, StepKind},
    engine::{ExecutionState, Refusal, StepRun},
    error::AwsError,
    identity::Scope,
    state::{Emulator, Execution, ExecutionCell, IdempotentAnswer, Operation, Pipeline, Resources},
    validate::{Validator, patterns},
};

type OpResult = Result<Value, AwsError>;

/// Runs `op` on its JSON input, in the account and region `res` holds.
pub(crate) fn call(emulator: &Emulator, res: &Resources, op: Operation, input: Value) -> OpResult {
    match op {
        Operation::CreatePipeline => create_pipeline(emulator, res, parse(input)?),
        Operation::DescribePipeline => describe_pipeline(res, parse(input)?),
        Operation::StartPipelineExecution => start_execution(emulator, res, input),
        Operation::DescribePipelineExecution => describe_execution(emulator, res, parse(input)?),
        Operation::ListPipelineExecutions => list_executions(emulator, res, parse(input)?),
        Operation::ListPipelineExecutionSteps => list_steps(emulator, res, parse(input)?),
        Operation::StopPipelineExecution => stop_execution(emulator, res, input),
        Operation::SendPipelineExecutionStepSuccess => send(emulator, res, input, true),
        Operation::SendPipelineExecutionStepFailure => send(emulator, res, input, false),
        Operation::RetryPipelineExecution => retry_execution(emulator, res, input),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(input: Value) -> Result<T, AwsError> {
    serde_json::from_value(input).map_err(|e| AwsError::serialization(e.to_string()))
}

/// Answers from the record of an earlier call with the same ClientRequestToken, or runs `f`
/// and records its success; the same token with a different request is refused.
///
/// The check and the action are one step: the token's record stays locked from the look-up
/// until this call's answer is in it, so of identical calls arriving together exactly one runs
/// `f` and the others wait for it, then replay its answer (SageMaker's behaviour, and what a
/// client retrying after a timeout relies on). Only calls with the same operation and token
/// wait for each other. Lock order: a token's record, then what `f` locks (an execution, the
/// callback-token map, a pipeline's runs, a map shard); nothing takes a record while holding
/// one of those. A failure records nothing, so the next call with the token tries afresh.
fn idempotent(
    res: &Resources,
    op: Operation,
    token: Option<&str>,
    input: &Value,
    f: impl FnOnce() -> OpResult,
) -> OpResult {
    let Some(token) = token else { return f() };
    // JSON objects compare regardless of member order.
    let mut request = input.clone();
    if let Value::Object(map) = &mut request {
        map.remove("ClientRequestToken");
    }
    let record = res.token_record(op, token);
    // `f` panicking leaves the record empty, which is still a consistent state.
    let mut record = record.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(previous) = &*record {
        return if previous.request == request {
            Ok(previous.response.clone())
        } else {
            Err(AwsError::validation(format!(
                "ClientRequestToken {token} was already used with a different request."
            )))
        };
    }
    let response = f()?;
    *record = Some(IdempotentAnswer {
        request,
        response: response.clone(),
    });
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Pipelines

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Tag {
    key: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ParallelismConfiguration {
    max_parallel_execution_steps: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreatePipelineInput {
    pipeline_name: Option<String>,
    pipeline_display_name: Option<String>,
    pipeline_definition: Option<String>,
    pipeline_definition_s3_location: Option<Value>,
    pipeline_description: Option<String>,
    client_request_token: Option<String>,
    role_arn: Option<String>,
    tags: Option<Vec<Tag>>,
    parallelism_configuration: Option<ParallelismConfiguration>,
}

fn check_parallelism(v: &mut Validator, path: &str, p: Option<&ParallelismConfiguration>) {
    if let Some(p) = p {
        let member = format!("{path}.MaxParallelExecutionSteps");
        if v.required(&member, p.max_parallel_execution_steps.as_ref()) {
            v.range(&member, p.max_parallel_execution_steps, 1, None);
        }
    }
}

fn parallelism(p: Option<&ParallelismConfiguration>) -> Option<u32> {
    p.and_then(|p| p.max_parallel_execution_steps)
        .and_then(|n| u32::try_from(n).ok())
}

fn create_pipeline(emulator: &Emulator, res: &Resources, input: CreatePipelineInput) -> OpResult {
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        256,
        Some(&patterns::PIPELINE_NAME),
    );
    v.string(
        "PipelineDisplayName",
        input.pipeline_display_name.as_deref(),
        1,
        256,
        Some(&patterns::PIPELINE_NAME),
    );
    v.string(
        "PipelineDefinition",
        input.pipeline_definition.as_deref(),
        1,
        1_048_576,
        None,
    );
    v.string(
        "PipelineDescription",
        input.pipeline_description.as_deref(),
        0,
        3072,
        None,
    );
    v.required_string(
        "ClientRequestToken",
        input.client_request_token.as_deref(),
        32,
        128,
        None,
    );
    v.required_string(
        "RoleArn",
        input.role_arn.as_deref(),
        20,
        2048,
        Some(&patterns::ROLE_ARN),
    );
    v.list_len("Tags", input.tags.as_ref().map(Vec::len), 0, 50);
    for (i, tag) in input.tags.iter().flatten().enumerate() {
        let key = format!("Tags.{}.member.Key", i + 1);
        v.required_string(&key, tag.key.as_deref(), 1, 128, Some(&patterns::TAG));
        let value = format!("Tags.{}.member.Value", i + 1);
        v.required_string(&value, tag.value.as_deref(), 0, 256, Some(&patterns::TAG));
    }
    check_parallelism(
        &mut v,
        "ParallelismConfiguration",
        input.parallelism_configuration.as_ref(),
    );
    v.finish()?;

    let name = input.pipeline_name.unwrap_or_default();
    let definition = match (
        input.pipeline_definition,
        input.pipeline_definition_s3_location,
    ) {
        (Some(text), _) => text,
        (None, Some(_)) => {
            return Err(AwsError::validation(
                "PipelineDefinitionS3Location is not supported by this emulator; send PipelineDefinition.",
            ));
        }
        (None, None) => {
            return Err(AwsError::validation(
                "Either PipelineDefinition or PipelineDefinitionS3Location must be provided.",
            ));
        }
    };
    let spec = definition::parse(&definition).map_err(AwsError::validation)?;
    let token = input.client_request_token.clone();
    let request = json!({
        "PipelineName": name, "PipelineDefinition": definition,
        "RoleArn": input.role_arn, "PipelineDisplayName": input.pipeline_display_name,
        "PipelineDescription": input.pipeline_description,
    });
    idempotent(
        res,
        Operation::CreatePipeline,
        token.as_deref(),
        &request,
        || {
            let arn = format!(
                "arn:aws:sagemaker:{}:{}:pipeline/{}",
                res.scope.region,
                res.scope.account,
                name.to_lowercase()
            );
            let pipeline = Arc::new(Pipeline {
                display_name: input
                    .pipeline_display_name
                    .clone()
                    .unwrap_or_else(|| name.clone()),
                name: name.clone(),
                arn: arn.clone(),
                description: input.pipeline_description.clone(),
                definition: definition.clone(),
                spec: Arc::new(spec),
                role_arn: input.role_arn.clone().unwrap_or_default(),
                parallelism: parallelism(input.parallelism_configuration.as_ref()),
                creation_time: emulator.clock.now(),
                runs: Default::default(),
            });
            match res.pipelines.entry(name.to_lowercase()) {
                dashmap::Entry::Occupied(_) => Err(AwsError::validation(format!(
                    "Pipeline names must be unique within an AWS account and region. Pipeline with name ({name}) already exists."
                ))),
                dashmap::Entry::Vacant(slot) => {
                    slot.insert(pipeline);
                    Ok(json!({ "PipelineArn": arn }))
                }
            }
        },
    )
}

/// The pipeline a PipelineName member names (a name or an ARN).
fn find_pipeline(res: &Resources, name_or_arn: &str) -> Result<Arc<Pipeline>, AwsError> {
    let name = match name_or_arn.split_once(":pipeline/") {
        Some((_, name)) if name_or_arn.starts_with("arn:") => name,
        _ => name_or_arn,
    };
    res.pipelines
        .get(&name.to_lowercase())
        .map(|p| p.clone())
        .filter(|p| {
            !name_or_arn.starts_with("arn:")
                || p.arn == name_or_arn.to_lowercase()
                || p.arn == name_or_arn
        })
        .ok_or_else(|| AwsError::not_found(format!("Pipeline '{name_or_arn}' does not exist.")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DescribePipelineInput {
    pipeline_name: Option<String>,
    pipeline_version_id: Option<i64>,
}

fn describe_pipeline(res: &Resources, input: DescribePipelineInput) -> OpResult {
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        2048,
        Some(&patterns::PIPELINE_NAME_OR_ARN),
    );
    v.range("PipelineVersionId", input.pipeline_version_id, 1, None);
    v.finish()?;
    let pipeline = find_pipeline(res, input.pipeline_name.as_deref().unwrap_or_default())?;
    let last_run = pipeline
        .runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last_run_time;
    let mut out = json!({
        "PipelineArn": pipeline.arn,
        "PipelineName": pipeline.name,
        "PipelineDisplayName": pipeline.display_name,
        "PipelineDefinition": pipeline.definition,
        "RoleArn": pipeline.role_arn,
        "PipelineStatus": "Active",
        "CreationTime": pipeline.creation_time,
        "LastModifiedTime": pipeline.creation_time,
        "CreatedBy": {},
        "LastModifiedBy": {},
    });
    if let Some(description) = &pipeline.description {
        out["PipelineDescription"] = json!(description);
    }
    if let Some(t) = last_run {
        out["LastRunTime"] = json!(t);
    }
    if let Some(n) = pipeline.parallelism {
        out["ParallelismConfiguration"] = json!({ "MaxParallelExecutionSteps": n });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Executions

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Parameter {
    name: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartExecutionInput {
    pipeline_name: Option<String>,
    pipeline_execution_display_name: Option<String>,
    pipeline_parameters: Option<Vec<Parameter>>,
    pipeline_execution_description: Option<String>,
    client_request_token: Option<String>,
    parallelism_configuration: Option<ParallelismConfiguration>,
    selective_execution_config: Option<SelectiveExecutionConfig>,
    pipeline_version_id: Option<i64>,
    mlflow_experiment_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SelectiveExecutionConfig {
    source_pipeline_execution_arn: Option<String>,
    selected_steps: Option<Vec<SelectedStep>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SelectedStep {
    step_name: Option<String>,
}

fn start_execution(emulator: &Emulator, res: &Resources, raw: Value) -> OpResult {
    let input: StartExecutionInput = parse(raw.clone())?;
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        2048,
        Some(&patterns::PIPELINE_NAME_OR_ARN),
    );
    v.string(
        "PipelineExecutionDisplayName",
        input.pipeline_execution_display_name.as_deref(),
        1,
        82,
        Some(&patterns::PIPELINE_EXECUTION_NAME),
    );
    v.string(
        "PipelineExecutionDescription",
        input.pipeline_execution_description.as_deref(),
        0,
        3072,
        None,
    );
    v.required_string(
        "ClientRequestToken",
        input.client_request_token.as_deref(),
        32,
        128,
        None,
    );
    v.list_len(
        "PipelineParameters",
        input.pipeline_parameters.as_ref().map(Vec::len),
        0,
        200,
    );
    for (i, p) in input.pipeline_parameters.iter().flatten().enumerate() {
        let name = format!("PipelineParameters.{}.member.Name", i + 1);
        v.required_string(
            &name,
            p.name.as_deref(),
            1,
            256,
            Some(&patterns::PIPELINE_PARAMETER_NAME),
        );
        let value = format!("PipelineParameters.{}.member.Value", i + 1);
        v.required_string(&value, p.value.as_deref(), 0, 1024, None);
    }
    check_parallelism(
        &mut v,
        "ParallelismConfiguration",
        input.parallelism_configuration.as_ref(),
    );
    if let Some(selective) = &input.selective_execution_config {
        v.string(
            "SelectiveExecutionConfig.SourcePipelineExecutionArn",
            selective.source_pipeline_execution_arn.as_deref(),
            0,
            2048,
            Some(&patterns::PIPELINE_EXECUTION_ARN),
        );
        let steps = "SelectiveExecutionConfig.SelectedSteps";
        if v.required(steps, selective.selected_steps.as_ref()) {
            v.list_len(
                steps,
                selective.selected_steps.as_ref().map(Vec::len),
                1,
                50,
            );
            for (i, step) in selective.selected_steps.iter().flatten().enumerate() {
                let name = format!("{steps}.{}.member.StepName", i + 1);
                v.required_string(&name, step.step_name.as_deref(), 0, 256, None);
            }
        }
    }
    v.range("PipelineVersionId", input.pipeline_version_id, 1, None);
    v.string(
        "MlflowExperimentName",
        input.mlflow_experiment_name.as_deref(),
        1,
        256,
        None,
    );
    v.finish()?;

    if input.selective_execution_config.is_some() {
        return Err(AwsError::validation(
            "SelectiveExecutionConfig is not supported by this emulator; start a full execution.",
        ));
    }
    let pipeline = find_pipeline(res, input.pipeline_name.as_deref().unwrap_or_default())?;
    for p in input.pipeline_parameters.iter().flatten() {
        let name = p.name.as_deref().unwrap_or_default();
        if !pipeline
            .spec
            .parameters
            .iter()
            .any(|(declared, _)| declared == name)
        {
            return Err(AwsError::validation(format!(
                "Parameter '{name}' is not defined in the pipeline definition of {}.",
                pipeline.name
            )));
        }
    }
    idempotent(
        res,
        Operation::StartPipelineExecution,
        input.client_request_token.as_deref(),
        &raw,
        || {
            let execution_id = emulator.ids.execution_id();
            let arn = format!("{}/execution/{execution_id}", pipeline.arn);
            let now = emulator.clock.now();
            let max_parallel =
                parallelism(input.parallelism_configuration.as_ref()).or(pipeline.parallelism);
            let mut parameters: Vec<(String, String)> = pipeline
                .spec
                .parameters
                .iter()
                .filter_map(|(name, default)| default.clone().map(|d| (name.clone(), d)))
                .collect();
            for p in input.pipeline_parameters.iter().flatten() {
                let (name, value) = (
                    p.name.clone().unwrap_or_default(),
                    p.value.clone().unwrap_or_default(),
                );
                parameters.retain(|(n, _)| *n != name);
                parameters.push((name, value));
            }
            let state = ExecutionState::start(
                arn.clone(),
                execution_id.clone(),
                &pipeline.spec,
                parameters,
                max_parallel,
                now,
                &emulator.ids,
            );
            let execution = Execution {
                pipeline_arn: pipeline.arn.clone(),
                pipeline_name: pipeline.name.clone(),
                display_name: input
                    .pipeline_execution_display_name
                    .clone()
                    .unwrap_or_else(|| format!("execution-{}", (now * 1000.0) as u64)),
                execution_id,
                description: input.pipeline_execution_description.clone(),
                parallelism: max_parallel,
                spec: pipeline.spec.clone(),
                state,
                registered_messages: 0,
                stop_requests: Vec::new(),
            };
            let cell = Arc::new(ExecutionCell::new(arn.clone(), now, execution));
            drop(emulator.lock(res, &cell)); // registers the callback tokens of its first steps
            res.executions.insert(arn.clone(), cell.clone());
            let mut runs = pipeline.runs.lock().unwrap_or_else(|e| e.into_inner());
            runs.executions.push(cell);
            runs.last_run_time = Some(now);
            Ok(json!({ "PipelineExecutionArn": arn }))
        },
    )
}

fn check_execution_arn(v: &mut Validator, arn: Option<&String>) {
    if v.required("PipelineExecutionArn", arn) {
        v.string(
            "PipelineExecutionArn",
            arn.map(String::as_str),
            0,
            2048,
            Some(&patterns::PIPELINE_EXECUTION_ARN),
        );
    }
}

fn find_execution(res: &Resources, arn: &str) -> Result<Arc<ExecutionCell>, AwsError> {
    res.executions
        .get(arn)
        .map(|e| e.clone())
        .ok_or_else(|| AwsError::not_found(format!("Pipeline execution '{arn}' does not exist.")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExecutionArnInput {
    pipeline_execution_arn: Option<String>,
}

fn describe_execution(emulator: &Emulator, res: &Resources, input: ExecutionArnInput) -> OpResult {
    let mut v = Validator::default();
    check_execution_arn(&mut v, input.pipeline_execution_arn.as_ref());
    v.finish()?;
    let cell = find_execution(
        res,
        input.pipeline_execution_arn.as_deref().unwrap_or_default(),
    )?;
    let execution = emulator.lock(res, &cell);
    let state = &execution.state;
    let mut out = json!({
        "PipelineArn": execution.pipeline_arn,
        "PipelineExecutionArn": cell.arn,
        "PipelineExecutionDisplayName": execution.display_name,
        "PipelineExecutionStatus": state.status.as_str(),
        "PipelineExperimentConfig": {
            "ExperimentName": execution.pipeline_name.to_lowercase(),
            "TrialName": execution.execution_id,
        },
        "CreationTime": state.creation_time,
        "LastModifiedTime": state.last_modified_time,
        "CreatedBy": {},
        "LastModifiedBy": {},
    });
    if let Some(description) = &execution.description {
        out["PipelineExecutionDescription"] = json!(description);
    }
    if let Some(reason) = &state.failure_reason {
        out["FailureReason"] = json!(reason);
    }
    if let Some(n) = execution.parallelism {
        out["ParallelismConfiguration"] = json!({ "MaxParallelExecutionSteps": n });
    }
    Ok(out)
}

/// Pagination tokens are opaque to clients; here they carry the offset of the next page.
fn page_start(token: Option<&str>) -> Result<usize, AwsError> {
    match token {
        None | Some("") => Ok(0),
        Some(token) => token
            .strip_prefix("emulator-page-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| AwsError::validation("The NextToken is not valid.")),
    }
}

fn next_token(start: usize, taken: usize, total: usize) -> Option<String> {
    (start + taken < total).then(|| format!("emulator-page-{}", start + taken))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListExecutionsInput {
    pipeline_name: Option<String>,
    created_after: Option<f64>,
    created_before: Option<f64>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// The page size when a list call gives no MaxResults.
const DEFAULT_PAGE: usize = 10;

fn list_executions(emulator: &Emulator, res: &Resources, input: ListExecutionsInput) -> OpResult {
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        2048,
        Some(&patterns::PIPELINE_NAME_OR_ARN),
    );
    v.one_of(
        "SortBy",
        input.sort_by.as_deref(),
        &["CreationTime", "PipelineExecutionArn"],
    );
    v.one_of(
        "SortOrder",
        input.sort_order.as_deref(),
        &["Ascending", "Descending"],
    );
    v.string("NextToken", input.next_token.as_deref(), 0, 8192, None);
    v.range("MaxResults", input.max_results, 1, Some(100));
    v.finish()?;
    let pipeline = find_pipeline(res, input.pipeline_name.as_deref().unwrap_or_default())?;
    let mut cells: Vec<Arc<ExecutionCell>> = pipeline
        .runs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .executions
        .iter()
        .filter(|c| input.created_after.is_none_or(|t| c.creation_time > t))
        .filter(|c| input.created_before.is_none_or(|t| c.creation_time < t))
        .cloned()
        .collect();
    if input.sort_by.as_deref() == Some("PipelineExecutionArn") {
        cells.sort_by(|a, b| a.arn.cmp(&b.arn));
    } // else already in creation order
    if input.sort_order.as_deref() != Some("Ascending") {
        cells.reverse();
    }
    let start = page_start(input.next_token.as_deref())?;
    let size = input.max_results.map_or(DEFAULT_PAGE, |n| n as usize);
    let summaries: Vec<Value> = cells
        .iter()
        .skip(start)
        .take(size)
        .map(|cell| {
            let execution = emulator.lock(res, cell);
            let mut summary = json!({
                "PipelineExecutionArn": cell.arn,
                "StartTime": execution.state.creation_time,
                "PipelineExecutionStatus": execution.state.status.as_str(),
                "PipelineExecutionDisplayName": execution.display_name,
            });
            if let Some(d) = &execution.description {
                summary["PipelineExecutionDescription"] = json!(d);
            }
            if let Some(r) = &execution.state.failure_reason {
                summary["PipelineExecutionFailureReason"] = json!(r);
            }
            summary
        })
        .collect();
    let mut out = json!({ "PipelineExecutionSummaries": summaries });
    if let Some(token) = next_token(start, summaries_len(&out), cells.len()) {
        out["NextToken"] = json!(token);
    }
    Ok(out)
}

fn summaries_len(out: &Value) -> usize {
    out["PipelineExecutionSummaries"]
        .as_array()
        .map_or(0, Vec::len)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListStepsInput {
    pipeline_execution_arn: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    sort_order: Option<String>,
}

fn list_steps(emulator: &Emulator, res: &Resources, input: ListStepsInput) -> OpResult {
    let mut v = Validator::default();
    check_execution_arn(&mut v, input.pipeline_execution_arn.as_ref());
    v.string("NextToken", input.next_token.as_deref(), 0, 8192, None);
    v.range("MaxResults", input.max_results, 1, Some(100));
    v.one_of(
        "SortOrder",
        input.sort_order.as_deref(),
        &["Ascending", "Descending"],
    );
    v.finish()?;
    let cell = find_execution(
        res,
        input.pipeline_execution_arn.as_deref().unwrap_or_default(),
    )?;
    let start = page_start(input.next_token.as_deref())?;
    let size = input.max_results.map_or(DEFAULT_PAGE, |n| n as usize);
    let execution = emulator.lock(res, &cell);
    // Steps that have started, by start time (then definition order).
    let mut started: Vec<(usize, &StepRun)> = execution
        .state
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| s.status.is_some())
        .collect();
    started.sort_by(|a, b| {
        let (ta, tb) = (
            a.1.start_time.unwrap_or_default(),
            b.1.start_time.unwrap_or_default(),
        );
        ta.total_cmp(&tb).then(a.0.cmp(&b.0))
    });
    if input.sort_order.as_deref() != Some("Ascending") {
        started.reverse();
    }
    let total = started.len();
    let steps: Vec<Value> = started
        .into_iter()
        .skip(start)
        .take(size)
        .map(|(i, run)| step_json(&res.scope, &execution, i, run))
        .collect();
    let taken = steps.len();
    let mut out = json!({ "PipelineExecutionSteps": steps });
    if let Some(token) = next_token(start, taken, total) {
        out["NextToken"] = json!(token);
    }
    Ok(out)
}

fn outputs_json(outputs: &[(String, String)]) -> Value {
    Value::Array(
        outputs
            .iter()
            .map(|(name, value)| json!({ "Name": name, "Value": value }))
            .collect(),
    )
}

fn step_json(scope: &Scope, execution: &Execution, i: usize, run: &StepRun) -> Value {
    let def = &execution.spec.steps[i];
    let status = run.status.map(|s| s.as_str()).unwrap_or("Starting");
    let resource = |kind: &str| {
        format!(
            "arn:aws:sagemaker:{}:{}:{kind}/{}",
            scope.region,
            scope.account,
            run.job_name.clone().unwrap_or_default()
        )
    };
    let metadata = match (&def.kind, def.step_type.as_str()) {
        (StepKind::Callback { sqs_queue_url }, _) => json!({ "Callback": {
            "CallbackToken": run.callback_token,
            "SqsQueueUrl": sqs_queue_url,
            "OutputParameters": outputs_json(&run.outputs),
        }}),
        (StepKind::Lambda { function_arn, .. }, _) => json!({ "Lambda": {
            "Arn": function_arn,
            "OutputParameters": outputs_json(&run.outputs),
        }}),
        (StepKind::Condition { .. }, _) => match run.condition_outcome {
            Some(outcome) => {
                json!({ "Condition": { "Outcome": if outcome { "True" } else { "False" } } })
            }
            None => json!({ "Condition": {} }),
        },
        (StepKind::Fail { error_message }, _) => {
            json!({ "Fail": { "ErrorMessage": error_message } })
        }
        (StepKind::Job, "Training") => {
            json!({ "TrainingJob": { "Arn": resource("training-job") } })
        }
        (StepKind::Job, "Processing") => {
            json!({ "ProcessingJob": { "Arn": resource("processing-job") } })
        }
        (StepKind::Job, "Transform") => {
            json!({ "TransformJob": { "Arn": resource("transform-job") } })
        }
        (StepKind::Job, "Tuning") => {
            json!({ "TuningJob": { "Arn": resource("hyper-parameter-tuning-job") } })
        }
        (StepKind::Job, "AutoML") => json!({ "AutoMLJob": { "Arn": resource("automl-job") } }),
        (StepKind::Job, "Model") => json!({ "Model": { "Arn": resource("model") } }),
        (StepKind::Job, "RegisterModel") => {
            json!({ "RegisterModel": { "Arn": resource("model-package") } })
        }
        (StepKind::Job, "EMR") => {
            json!({ "EMR": { "ClusterId": "j-EMULATOR", "StepId": run.job_name, "StepName": def.name } })
        }
        (StepKind::Job, "QualityCheck") => {
            json!({ "QualityCheck": { "CheckType": "DATA_QUALITY", "CheckJobArn": resource("processing-job") } })
        }
        (StepKind::Job, "ClarifyCheck") => {
            json!({ "ClarifyCheck": { "CheckType": "DATA_BIAS", "CheckJobArn": resource("processing-job") } })
        }
        _ => json!({}),
    };
    let mut out = json!({
        "StepName": def.name,
        "StepStatus": status,
        "AttemptCount": run.attempt_count,
        "Metadata": metadata,
    });
    if let Some(name) = &def.display_name {
        out["StepDisplayName"] = json!(name);
    }
    if let Some(d) = &def.description {
        out["StepDescription"] = json!(d);
    }
    if let Some(t) = run.start_time {
        out["StartTime"] = json!(t);
    }
    if let Some(t) = run.end_time {
        out["EndTime"] = json!(t);
    }
    if let Some(r) = &run.failure_reason {
        out["FailureReason"] = json!(r);
    }
    out
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ExecutionActionInput {
    pipeline_execution_arn: Option<String>,
    client_request_token: Option<String>,
    parallelism_configuration: Option<ParallelismConfiguration>,
}

fn check_action(input: &ExecutionActionInput) -> Result<(), AwsError> {
    let mut v = Validator::default();
    check_execution_arn(&mut v, input.pipeline_execution_arn.as_ref());
    v.required_string(
        "ClientRequestToken",
        input.client_request_token.as_deref(),
        32,
        128,
        None,
    );
    check_parallelism(
        &mut v,
        "ParallelismConfiguration",
        input.parallelism_configuration.as_ref(),
    );
    v.finish()
}

fn refusal(r: Refusal) -> AwsError {
    match r {
        Refusal::WrongStatus(m) | Refusal::NotWaiting(m) => AwsError::validation(m),
    }
}

fn stop_execution(emulator: &Emulator, res: &Resources, raw: Value) -> OpResult {
    let input: ExecutionActionInput = parse(raw.clone())?;
    check_action(&input)?;
    let arn = input.pipeline_execution_arn.clone().unwrap_or_default();
    let cell = find_execution(res, &arn)?;
    {
        // What this execution was sent, replays included (the admin surface shows it).
        let mut execution = emulator.lock(res, &cell);
        let at = execution.now;
        let token = input.client_request_token.clone().unwrap_or_default();
        execution.stop_requests.push((token, at));
    }
    idempotent(
        res,
        Operation::StopPipelineExecution,
        input.client_request_token.as_deref(),
        &raw,
        || {
            let mut execution = emulator.lock(res, &cell);
            let now = execution.now;
            let spec = execution.spec.clone();
            execution
                .state
                .stop(&spec, now, &emulator.ids)
                .map_err(refusal)?;
            Ok(json!({ "PipelineExecutionArn": arn }))
        },
    )
}

fn retry_execution(emulator: &Emulator, res: &Resources, raw: Value) -> OpResult {
    let input: ExecutionActionInput = parse(raw.clone())?;
    check_action(&input)?;
    let arn = input.pipeline_execution_arn.clone().unwrap_or_default();
    let cell = find_execution(res, &arn)?;
    idempotent(
        res,
        Operation::RetryPipelineExecution,
        input.client_request_token.as_deref(),
        &raw,
        || {
            let mut execution = emulator.lock(res, &cell);
            let (now, spec) = (execution.now, execution.spec.clone());
            if let Some(n) = parallelism(input.parallelism_configuration.as_ref()) {
                execution.parallelism = Some(n);
                execution.state.max_parallel = Some(n);
            }
            execution
                .state
                .retry(&spec, now, &emulator.ids)
                .map_err(refusal)?;
            Ok(json!({ "PipelineExecutionArn": arn }))
        },
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendInput {
    callback_token: Option<String>,
    output_parameters: Option<Vec<Parameter>>,
    failure_reason: Option<String>,
    client_request_token: Option<String>,
}

fn send(emulator: &Emulator, res: &Resources, raw: Value, success: bool) -> OpResult {
    let input: SendInput = parse(raw.clone())?;
    let mut v = Validator::default();
    v.required_string(
        "CallbackToken",
        input.callback_token.as_deref(),
        10,
        10,
        Some(&patterns::CALLBACK_TOKEN),
    );
    v.list_len(
        "OutputParameters",
        input.output_parameters.as_ref().map(Vec::len),
        0,
        50,
    );
    for (i, p) in input.output_parameters.iter().flatten().enumerate() {
        let name = format!("OutputParameters.{}.member.Name", i + 1);
        v.required_string(&name, p.name.as_deref(), 0, 256, None);
        let value = format!("OutputParameters.{}.member.Value", i + 1);
        v.required_string(&value, p.value.as_deref(), 0, 1024, None);
    }
    v.string(
        "FailureReason",
        input.failure_reason.as_deref(),
        0,
        256,
        None,
    );
    v.string(
        "ClientRequestToken",
        input.client_request_token.as_deref(),
        32,
        128,
        None,
    );
    v.finish()?;

    let token = input.callback_token.clone().unwrap_or_default();
    // A token is registered as soon as anyone can have seen it (see `state::Locked`).
    let cell = res
        .callback_tokens
        .get(&token)
        .map(|c| c.clone())
        .ok_or_else(|| AwsError::not_found(format!("Callback token '{token}' does not exist.")))?;
    let op = if success {
        Operation::SendPipelineExecutionStepSuccess
    } else {
        Operation::SendPipelineExecutionStepFailure
    };
    idempotent(res, op, input.client_request_token.as_deref(), &raw, || {
        let mut execution = emulator.lock(res, &cell);
        let now = execution.now;
        let spec = execution.spec.clone();
        let answer = if success {
            Ok(input
                .output_parameters
                .iter()
                .flatten()
                .map(|p| {
                    (
                        p.name.clone().unwrap_or_default(),
                        p.value.clone().unwrap_or_default(),
                    )
                })
                .collect())
        } else {
            Err(input.failure_reason.clone().unwrap_or_default())
        };
        execution
            .state
            .answer_callback(&spec, &token, answer, now, &emulator.ids)
            .map_err(refusal)?;
        Ok(json!({ "PipelineExecutionArn": cell.arn }))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_matches_its_request_whatever_the_member_order() {
        let res = Resources::new(Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        });
        let op = Operation::StopPipelineExecution;
        let first = json!({"A": 1, "B": {"X": 1, "Y": [1, 2]}, "ClientRequestToken": "t"});
        let reordered: Value = serde_json::from_str(
            r#"{"ClientRequestToken": "t", "B": {"Y": [1, 2], "X": 1}, "A": 1}"#,
        )
        .unwrap();
        let answer = json!({"PipelineExecutionArn": "arn"});
        let once = || Ok(answer.clone());
        assert_eq!(
            idempotent(&res, op, Some("t"), &first, once),
            Ok(answer.clone())
        );

        let again = || panic!("a replay ran the operation again");
        assert_eq!(
            idempotent(&res, op, Some("t"), &reordered, again),
            Ok(answer)
        );
        let other = idempotent(&res, op, Some("t"), &json!({"A": 2}), again);
        assert_eq!(other.unwrap_err().code, "ValidationException");
    }

    #[test]
    fn a_failure_is_not_recorded() {
        let res = Resources::new(Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        });
        let op = Operation::RetryPipelineExecution;
        let input = json!({"PipelineExecutionArn": "arn"});
        let refused = || Err(AwsError::validation("not now"));
        assert!(idempotent(&res, op, Some("t"), &input, refused).is_err());
        let ok = || Ok(json!({"PipelineExecutionArn": "arn"}));
        assert!(idempotent(&res, op, Some("t"), &input, ok).is_ok());
    }
}
