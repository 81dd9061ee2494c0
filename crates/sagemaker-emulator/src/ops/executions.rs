//! The execution operations: StartPipelineExecution, DescribePipelineExecution,
//! UpdatePipelineExecution, ListPipelineExecutions, ListPipelineExecutionSteps,
//! ListPipelineParametersForExecution, DescribePipelineDefinitionForExecution,
//! StopPipelineExecution, RetryPipelineExecution and SendPipelineExecutionStepSuccess/Failure.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{
    DEFAULT_PAGE, OpResult, ParallelismConfiguration, check_parallelism, idempotent, next_token,
    page, page_start, paged, parallelism, parse, with_pipeline,
};
use crate::{
    engine::{ExecutionState, Refusal, StepRun},
    error::AwsError,
    identity::Scope,
    state::{Emulator, Execution, ExecutionCell, Operation, Resources},
    validate::{Validator, patterns},
};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Parameter {
    name: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct StartExecutionInput {
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
pub(super) struct SelectiveExecutionConfig {
    source_pipeline_execution_arn: Option<String>,
    selected_steps: Option<Vec<SelectedStep>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct SelectedStep {
    step_name: Option<String>,
}

pub(super) fn start_execution(emulator: &Emulator, res: &Resources, raw: Value) -> OpResult {
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
    let name = input.pipeline_name.as_deref().unwrap_or_default();
    idempotent(
        res,
        Operation::StartPipelineExecution,
        input.client_request_token.as_deref(),
        &raw,
        || {
            // Lock order: the pipeline, then the new execution (see `state::Pipeline`).
            with_pipeline(res, name, |pipeline, pipeline_state| {
                let version = pipeline_state
                    .version(input.pipeline_version_id)
                    .ok_or_else(|| {
                        AwsError::not_found(format!(
                            "Pipeline version {} of pipeline '{}' does not exist.",
                            input.pipeline_version_id.unwrap_or_default(),
                            pipeline.arn
                        ))
                    })?;
                let (version_id, definition, spec) =
                    (version.id, version.definition.clone(), version.spec.clone());
                let definition_time = version.creation_time;
                let given = input.pipeline_parameters.as_deref().unwrap_or_default();
                if let Some(p) = given.iter().find(|p| {
                    let name = p.name.as_deref().unwrap_or_default();
                    !spec.parameters.iter().any(|(declared, _)| declared == name)
                }) {
                    return Err(AwsError::validation(format!(
                        "Parameter '{}' is not defined in the pipeline definition of {}.",
                        p.name.as_deref().unwrap_or_default(),
                        pipeline.name
                    )));
                }
                // In the definition's order: the value given, else the default.
                let parameters: Vec<(String, String)> = spec
                    .parameters
                    .iter()
                    .filter_map(|(name, default)| {
                        let value = given
                            .iter()
                            .rev()
                            .find(|p| p.name.as_deref() == Some(name.as_str()))
                            .map(|p| p.value.clone().unwrap_or_default())
                            .or_else(|| default.clone())?;
                        Some((name.clone(), value))
                    })
                    .collect();
                let execution_id = emulator.ids.execution_id();
                let arn = format!("{}/execution/{execution_id}", pipeline.arn);
                let now = emulator.clock.now();
                let max_parallel = parallelism(input.parallelism_configuration.as_ref())
                    .or(pipeline_state.parallelism);
                let state = ExecutionState::start(
                    arn.clone(),
                    execution_id.clone(),
                    &spec,
                    parameters.clone(),
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
                    pipeline_version_id: version_id,
                    definition,
                    definition_time,
                    parameters,
                    spec,
                    state,
                    registered_messages: 0,
                    stop_requests: Vec::new(),
                    events: Vec::new(),
                    event_due: None,
                };
                let cell = Arc::new(ExecutionCell::new(arn.clone(), now, execution));
                // Findable before anything is due (the event pump finds it by its ARN); no
                // caller knows the ARN yet.
                res.executions.insert(arn.clone(), cell.clone());
                // Registers the callback tokens of its first steps and sends its first events.
                drop(emulator.lock(res, &cell));
                pipeline_state.executions.push(cell);
                pipeline_state.last_run_time = Some(now);
                if let Some(version) = usize::try_from(version_id - 1)
                    .ok()
                    .and_then(|i| pipeline_state.versions.get_mut(i))
                {
                    version.last_execution_arn = Some(arn.clone());
                }
                Ok(json!({ "PipelineExecutionArn": arn }))
            })
        },
    )
}

pub(super) fn check_execution_arn(v: &mut Validator, arn: Option<&String>) {
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

pub(super) fn find_execution(res: &Resources, arn: &str) -> Result<Arc<ExecutionCell>, AwsError> {
    res.executions
        .get(arn)
        .map(|e| e.clone())
        .ok_or_else(|| AwsError::not_found(format!("Pipeline execution '{arn}' does not exist.")))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ExecutionArnInput {
    pipeline_execution_arn: Option<String>,
}

pub(super) fn describe_execution(
    emulator: &Emulator,
    res: &Resources,
    input: ExecutionArnInput,
) -> OpResult {
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
        "PipelineVersionId": execution.pipeline_version_id,
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

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdateExecutionInput {
    pipeline_execution_arn: Option<String>,
    pipeline_execution_description: Option<String>,
    pipeline_execution_display_name: Option<String>,
    parallelism_configuration: Option<ParallelismConfiguration>,
}

/// UpdatePipelineExecution: its display name, description and parallelism, in any status. A
/// larger MaxParallelExecutionSteps lets waiting steps start at once; a smaller one stops
/// nothing that runs.
pub(super) fn update_execution(
    emulator: &Emulator,
    res: &Resources,
    input: UpdateExecutionInput,
) -> OpResult {
    let mut v = Validator::default();
    check_execution_arn(&mut v, input.pipeline_execution_arn.as_ref());
    v.string(
        "PipelineExecutionDescription",
        input.pipeline_execution_description.as_deref(),
        0,
        3072,
        None,
    );
    v.string(
        "PipelineExecutionDisplayName",
        input.pipeline_execution_display_name.as_deref(),
        1,
        82,
        Some(&patterns::PIPELINE_EXECUTION_NAME),
    );
    check_parallelism(
        &mut v,
        "ParallelismConfiguration",
        input.parallelism_configuration.as_ref(),
    );
    v.finish()?;
    let cell = find_execution(
        res,
        input.pipeline_execution_arn.as_deref().unwrap_or_default(),
    )?;
    let mut execution = emulator.lock(res, &cell);
    if let Some(name) = &input.pipeline_execution_display_name {
        execution.display_name = name.clone();
    }
    if let Some(description) = &input.pipeline_execution_description {
        execution.description = Some(description.clone());
    }
    if let Some(n) = parallelism(input.parallelism_configuration.as_ref()) {
        let (now, spec) = (execution.now, execution.spec.clone());
        execution.parallelism = Some(n);
        execution
            .state
            .set_max_parallel(&spec, Some(n), now, &emulator.ids);
    }
    Ok(json!({ "PipelineExecutionArn": cell.arn }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListParametersInput {
    pipeline_execution_arn: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// ListPipelineParametersForExecution: the parameters the execution started with, the
/// definition's defaults filled in, in the definition's order.
pub(super) fn list_parameters(
    emulator: &Emulator,
    res: &Resources,
    input: ListParametersInput,
) -> OpResult {
    let mut v = Validator::default();
    check_execution_arn(&mut v, input.pipeline_execution_arn.as_ref());
    v.paging(input.next_token.as_deref(), input.max_results);
    v.finish()?;
    let cell = find_execution(
        res,
        input.pipeline_execution_arn.as_deref().unwrap_or_default(),
    )?;
    let parameters = emulator.lock(res, &cell).parameters.clone();
    let items: Vec<Value> = parameters
        .into_iter()
        .map(|(name, value)| json!({ "Name": name, "Value": value }))
        .collect();
    let (items, next) = page(items, input.next_token.as_deref(), input.max_results)?;
    Ok(paged("PipelineParameters", items, next))
}

/// DescribePipelineDefinitionForExecution: the definition of the version the execution runs
/// (later UpdatePipeline calls change nothing here), and when that version was made.
pub(super) fn describe_definition(
    emulator: &Emulator,
    res: &Resources,
    input: ExecutionArnInput,
) -> OpResult {
    let mut v = Validator::default();
    check_execution_arn(&mut v, input.pipeline_execution_arn.as_ref());
    v.finish()?;
    let cell = find_execution(
        res,
        input.pipeline_execution_arn.as_deref().unwrap_or_default(),
    )?;
    let execution = emulator.lock(res, &cell);
    Ok(json!({
        "PipelineDefinition": &*execution.definition,
        "CreationTime": execution.definition_time,
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListExecutionsInput {
    pipeline_name: Option<String>,
    created_after: Option<f64>,
    created_before: Option<f64>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(super) fn list_executions(
    emulator: &Emulator,
    res: &Resources,
    input: ListExecutionsInput,
) -> OpResult {
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
    v.sort_order(input.sort_order.as_deref());
    v.paging(input.next_token.as_deref(), input.max_results);
    v.finish()?;
    let name = input.pipeline_name.as_deref().unwrap_or_default();
    // The pipeline's lock is released before its executions are locked one by one.
    let mut cells: Vec<Arc<ExecutionCell>> = with_pipeline(res, name, |_, state| {
        Ok(state
            .executions
            .iter()
            .filter(|c| input.created_after.is_none_or(|t| c.creation_time > t))
            .filter(|c| input.created_before.is_none_or(|t| c.creation_time < t))
            .cloned()
            .collect())
    })?;
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
    let next = next_token(start, summaries.len(), cells.len());
    Ok(paged("PipelineExecutionSummaries", summaries, next))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListStepsInput {
    pipeline_execution_arn: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
    sort_order: Option<String>,
}

pub(super) fn list_steps(emulator: &Emulator, res: &Resources, input: ListStepsInput) -> OpResult {
    let mut v = Validator::default();
    check_execution_arn(&mut v, input.pipeline_execution_arn.as_ref());
    v.paging(input.next_token.as_deref(), input.max_results);
    v.sort_order(input.sort_order.as_deref());
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
    let next = next_token(start, steps.len(), total);
    Ok(paged("PipelineExecutionSteps", steps, next))
}

pub(super) fn step_json(scope: &Scope, execution: &Execution, i: usize, run: &StepRun) -> Value {
    let def = &execution.spec.steps[i];
    let status = run.status.map(|s| s.as_str()).unwrap_or("Starting");
    let metadata = run.metadata(def, &scope.region, &scope.account);
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
pub(super) struct ExecutionActionInput {
    pipeline_execution_arn: Option<String>,
    client_request_token: Option<String>,
    parallelism_configuration: Option<ParallelismConfiguration>,
}

pub(super) fn check_action(input: &ExecutionActionInput) -> Result<(), AwsError> {
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

pub(super) fn refusal(r: Refusal) -> AwsError {
    match r {
        Refusal::WrongStatus(m) | Refusal::NotWaiting(m) => AwsError::validation(m),
    }
}

pub(super) fn stop_execution(emulator: &Emulator, res: &Resources, raw: Value) -> OpResult {
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

pub(super) fn retry_execution(emulator: &Emulator, res: &Resources, raw: Value) -> OpResult {
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
pub(super) struct SendInput {
    callback_token: Option<String>,
    output_parameters: Option<Vec<Parameter>>,
    failure_reason: Option<String>,
    client_request_token: Option<String>,
}

pub(super) fn send(emulator: &Emulator, res: &Resources, raw: Value, success: bool) -> OpResult {
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
