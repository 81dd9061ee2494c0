//! The pipeline operations: CreatePipeline, DescribePipeline, ListPipelines, UpdatePipeline,
//! DeletePipeline, ListPipelineVersions and UpdatePipelineVersion.
//!
//! A pipeline keeps every version of its definition: CreatePipeline makes version 1, each
//! UpdatePipeline the next one (a copy of the newest definition when the call sends none), and
//! an execution runs the version that was newest when it started (or the one
//! StartPipelineExecution names), whatever updates come later.
//!
//! DeletePipeline does what the API model documents: "Deletes a pipeline if there are no
//! running instances of the pipeline. To delete a pipeline, you must stop all running
//! instances of the pipeline using the StopPipelineExecution API. When you delete a pipeline,
//! all instances of the pipeline are deleted." So an execution still Executing or Stopping
//! makes it answer ConflictException and change nothing; otherwise the pipeline and all its
//! executions are gone (ResourceNotFound from then on), and the name is free again.

use std::{collections::HashSet, sync::Arc};

use serde::Deserialize;
use serde_json::{Value, json};

use super::common::{
    OpResult, ParallelismConfiguration, check_parallelism, idempotent, page, paged, parallelism,
    parse, with_pipeline,
};
use crate::{
    definition::{self, PipelineSpec},
    engine::ExecutionStatus,
    error::AwsError,
    state::{Emulator, Operation, Pipeline, PipelineState, PipelineVersion, Resources},
    validate::{Validator, patterns},
};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct Tag {
    key: Option<String>,
    value: Option<String>,
}

/// The definition a CreatePipeline or UpdatePipeline call sends, parsed (`None`: it sends
/// none).
fn sent_definition(
    text: Option<String>,
    s3_location: Option<&Value>,
) -> Result<Option<(String, PipelineSpec)>, AwsError> {
    match (text, s3_location) {
        (Some(text), _) => {
            let spec = definition::parse(&text).map_err(AwsError::validation)?;
            Ok(Some((text, spec)))
        }
        (None, Some(_)) => Err(AwsError::validation(
            "PipelineDefinitionS3Location is not supported by this emulator; send PipelineDefinition.",
        )),
        (None, None) => Ok(None),
    }
}

/// The members CreatePipeline and UpdatePipeline share, checked alike.
fn check_pipeline_members(
    v: &mut Validator,
    display_name: Option<&str>,
    definition: Option<&str>,
    description: Option<&str>,
) {
    v.string(
        "PipelineDisplayName",
        display_name,
        1,
        256,
        Some(&patterns::PIPELINE_NAME),
    );
    v.string("PipelineDefinition", definition, 1, 1_048_576, None);
    v.string("PipelineDescription", description, 0, 3072, None);
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct CreatePipelineInput {
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

pub(super) fn create_pipeline(
    emulator: &Emulator,
    res: &Resources,
    input: CreatePipelineInput,
) -> OpResult {
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        256,
        Some(&patterns::PIPELINE_NAME),
    );
    check_pipeline_members(
        &mut v,
        input.pipeline_display_name.as_deref(),
        input.pipeline_definition.as_deref(),
        input.pipeline_description.as_deref(),
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
    let Some((definition, spec)) = sent_definition(
        input.pipeline_definition,
        input.pipeline_definition_s3_location.as_ref(),
    )?
    else {
        return Err(AwsError::validation(
            "Either PipelineDefinition or PipelineDefinitionS3Location must be provided.",
        ));
    };
    let token = input.client_request_token.clone();
    let request = json!({
        "PipelineName": name, "PipelineDefinition": definition,
        "RoleArn": input.role_arn, "PipelineDisplayName": input.pipeline_display_name,
        "PipelineDescription": input.pipeline_description,
    });
    let definition: Arc<str> = definition.into();
    let spec = Arc::new(spec);
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
            let now = emulator.clock.now();
            let state = PipelineState {
                display_name: input
                    .pipeline_display_name
                    .clone()
                    .unwrap_or_else(|| name.clone()),
                description: input.pipeline_description.clone(),
                role_arn: input.role_arn.clone().unwrap_or_default(),
                parallelism: parallelism(input.parallelism_configuration.as_ref()),
                last_modified_time: now,
                versions: vec![PipelineVersion {
                    id: 1,
                    definition: definition.clone(),
                    spec: spec.clone(),
                    creation_time: now,
                    display_name: None,
                    description: None,
                    last_execution_arn: None,
                }],
                executions: Vec::new(),
                last_run_time: None,
                deleted: false,
            };
            let pipeline = Arc::new(Pipeline::new(name.clone(), arn.clone(), now, state));
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

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DescribePipelineInput {
    pipeline_name: Option<String>,
    pipeline_version_id: Option<i64>,
}

/// DescribePipeline: the pipeline with its newest definition, or with the definition of the
/// version PipelineVersionId names.
pub(super) fn describe_pipeline(res: &Resources, input: DescribePipelineInput) -> OpResult {
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
    let name = input.pipeline_name.as_deref().unwrap_or_default();
    with_pipeline(res, name, |pipeline, state| {
        let version = state.version(input.pipeline_version_id).ok_or_else(|| {
            version_not_found(&pipeline.arn, input.pipeline_version_id.unwrap_or_default())
        })?;
        let mut out = json!({
            "PipelineArn": pipeline.arn,
            "PipelineName": pipeline.name,
            "PipelineDisplayName": state.display_name,
            "PipelineDefinition": &*version.definition,
            "RoleArn": state.role_arn,
            "PipelineStatus": "Active",
            "CreationTime": pipeline.creation_time,
            "LastModifiedTime": state.last_modified_time,
            "CreatedBy": {},
            "LastModifiedBy": {},
        });
        if let Some(description) = &state.description {
            out["PipelineDescription"] = json!(description);
        }
        if let Some(t) = state.last_run_time {
            out["LastRunTime"] = json!(t);
        }
        if let Some(n) = state.parallelism {
            out["ParallelismConfiguration"] = json!({ "MaxParallelExecutionSteps": n });
        }
        if let Some(name) = &version.display_name {
            out["PipelineVersionDisplayName"] = json!(name);
        }
        if let Some(description) = &version.description {
            out["PipelineVersionDescription"] = json!(description);
        }
        Ok(out)
    })
}

fn version_not_found(pipeline_arn: &str, id: i64) -> AwsError {
    AwsError::not_found(format!(
        "Pipeline version {id} of pipeline '{pipeline_arn}' does not exist."
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListPipelinesInput {
    pipeline_name_prefix: Option<String>,
    created_after: Option<f64>,
    created_before: Option<f64>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// ListPipelines: newest first unless SortOrder says otherwise; PipelineNamePrefix matches
/// regardless of case, as pipeline names are unique regardless of case.
pub(super) fn list_pipelines(res: &Resources, input: ListPipelinesInput) -> OpResult {
    let mut v = Validator::default();
    v.string(
        "PipelineNamePrefix",
        input.pipeline_name_prefix.as_deref(),
        1,
        256,
        Some(&patterns::PIPELINE_NAME),
    );
    v.one_of(
        "SortBy",
        input.sort_by.as_deref(),
        &["Name", "CreationTime"],
    );
    v.sort_order(input.sort_order.as_deref());
    v.paging(input.next_token.as_deref(), input.max_results);
    v.finish()?;
    let prefix = input
        .pipeline_name_prefix
        .as_deref()
        .map(str::to_lowercase)
        .unwrap_or_default();
    let pipelines: Vec<Arc<Pipeline>> = res.pipelines.iter().map(|p| p.clone()).collect();
    let mut summaries: Vec<(String, f64, Value)> = Vec::new();
    for pipeline in pipelines {
        if !pipeline.name.to_lowercase().starts_with(&prefix)
            || input
                .created_after
                .is_some_and(|t| pipeline.creation_time <= t)
            || input
                .created_before
                .is_some_and(|t| pipeline.creation_time >= t)
        {
            continue;
        }
        let state = pipeline.lock();
        if state.deleted {
            continue;
        }
        let mut summary = json!({
            "PipelineArn": pipeline.arn,
            "PipelineName": pipeline.name,
            "PipelineDisplayName": state.display_name,
            "RoleArn": state.role_arn,
            "CreationTime": pipeline.creation_time,
            "LastModifiedTime": state.last_modified_time,
        });
        if let Some(description) = &state.description {
            summary["PipelineDescription"] = json!(description);
        }
        if let Some(t) = state.last_run_time {
            summary["LastExecutionTime"] = json!(t);
        }
        summaries.push((
            pipeline.name.to_lowercase(),
            pipeline.creation_time,
            summary,
        ));
    }
    if input.sort_by.as_deref() == Some("Name") {
        summaries.sort_by(|a, b| a.0.cmp(&b.0));
    } else {
        summaries.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    }
    if input.sort_order.as_deref() != Some("Ascending") {
        summaries.reverse();
    }
    let items = summaries.into_iter().map(|(_, _, s)| s).collect();
    let (items, next) = page(items, input.next_token.as_deref(), input.max_results)?;
    Ok(paged("PipelineSummaries", items, next))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdatePipelineInput {
    pipeline_name: Option<String>,
    pipeline_display_name: Option<String>,
    pipeline_definition: Option<String>,
    pipeline_definition_s3_location: Option<Value>,
    pipeline_description: Option<String>,
    role_arn: Option<String>,
    parallelism_configuration: Option<ParallelismConfiguration>,
}

/// UpdatePipeline: changes what the call sends and makes the next version, whose definition
/// is the one sent or else a copy of the newest.
pub(super) fn update_pipeline(
    emulator: &Emulator,
    res: &Resources,
    input: UpdatePipelineInput,
) -> OpResult {
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        256,
        Some(&patterns::PIPELINE_NAME),
    );
    check_pipeline_members(
        &mut v,
        input.pipeline_display_name.as_deref(),
        input.pipeline_definition.as_deref(),
        input.pipeline_description.as_deref(),
    );
    v.string(
        "RoleArn",
        input.role_arn.as_deref(),
        20,
        2048,
        Some(&patterns::ROLE_ARN),
    );
    check_parallelism(
        &mut v,
        "ParallelismConfiguration",
        input.parallelism_configuration.as_ref(),
    );
    v.finish()?;
    let sent = sent_definition(
        input.pipeline_definition,
        input.pipeline_definition_s3_location.as_ref(),
    )?;
    let name = input.pipeline_name.as_deref().unwrap_or_default();
    with_pipeline(res, name, |pipeline, state| {
        let now = emulator.clock.now();
        let (definition, spec): (Arc<str>, Arc<PipelineSpec>) = match sent {
            Some((text, spec)) => (text.into(), Arc::new(spec)),
            None => (
                state.latest().definition.clone(),
                state.latest().spec.clone(),
            ),
        };
        let id = state.versions.len() as u64 + 1;
        state.versions.push(PipelineVersion {
            id,
            definition,
            spec,
            creation_time: now,
            display_name: None,
            description: None,
            last_execution_arn: None,
        });
        if let Some(name) = &input.pipeline_display_name {
            state.display_name = name.clone();
        }
        if let Some(description) = &input.pipeline_description {
            state.description = Some(description.clone());
        }
        if let Some(role) = &input.role_arn {
            state.role_arn = role.clone();
        }
        if let Some(n) = parallelism(input.parallelism_configuration.as_ref()) {
            state.parallelism = Some(n);
        }
        state.last_modified_time = now;
        Ok(json!({ "PipelineArn": pipeline.arn, "PipelineVersionId": id }))
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct DeletePipelineInput {
    pipeline_name: Option<String>,
    client_request_token: Option<String>,
}

/// DeletePipeline (see the module doc): refused while an execution runs; else the pipeline
/// and its executions go, and so do their callback tokens.
pub(super) fn delete_pipeline(emulator: &Emulator, res: &Resources, raw: Value) -> OpResult {
    let input: DeletePipelineInput = parse(raw.clone())?;
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        256,
        Some(&patterns::PIPELINE_NAME),
    );
    v.required_string(
        "ClientRequestToken",
        input.client_request_token.as_deref(),
        32,
        128,
        None,
    );
    v.finish()?;
    let name = input.pipeline_name.as_deref().unwrap_or_default();
    idempotent(
        res,
        Operation::DeletePipeline,
        input.client_request_token.as_deref(),
        &raw,
        || {
            with_pipeline(res, name, |pipeline, state| {
                // Lock order: the pipeline (held), then each execution in turn.
                let running = state.executions.iter().find(|cell| {
                    let status = emulator.lock(res, cell).state.status;
                    matches!(
                        status,
                        ExecutionStatus::Executing | ExecutionStatus::Stopping
                    )
                });
                if let Some(cell) = running {
                    return Err(AwsError::conflict(format!(
                        "Pipeline '{}' has running executions and cannot be deleted: stop them with StopPipelineExecution first (for example {}).",
                        pipeline.arn, cell.arn
                    )));
                }
                state.deleted = true;
                res.pipelines
                    .remove_if(&pipeline.name.to_lowercase(), |_, p| {
                        std::ptr::eq(Arc::as_ptr(p), pipeline)
                    });
                let arns: HashSet<&str> = state.executions.iter().map(|c| c.arn.as_str()).collect();
                for arn in &arns {
                    res.executions.remove(*arn);
                }
                res.callback_tokens
                    .retain(|_, cell| !arns.contains(cell.arn.as_str()));
                Ok(json!({ "PipelineArn": pipeline.arn }))
            })
        },
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ListVersionsInput {
    pipeline_name: Option<String>,
    created_after: Option<f64>,
    created_before: Option<f64>,
    sort_order: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

/// ListPipelineVersions: newest first unless SortOrder is Ascending.
pub(super) fn list_versions(res: &Resources, input: ListVersionsInput) -> OpResult {
    let mut v = Validator::default();
    v.required_string(
        "PipelineName",
        input.pipeline_name.as_deref(),
        1,
        2048,
        Some(&patterns::PIPELINE_NAME_OR_ARN),
    );
    v.sort_order(input.sort_order.as_deref());
    v.paging(input.next_token.as_deref(), input.max_results);
    v.finish()?;
    let name = input.pipeline_name.as_deref().unwrap_or_default();
    let mut summaries: Vec<Value> = with_pipeline(res, name, |pipeline, state| {
        Ok(state
            .versions
            .iter()
            .filter(|v| input.created_after.is_none_or(|t| v.creation_time > t))
            .filter(|v| input.created_before.is_none_or(|t| v.creation_time < t))
            .map(|version| {
                let mut summary = json!({
                    "PipelineArn": pipeline.arn,
                    "PipelineVersionId": version.id,
                    "CreationTime": version.creation_time,
                });
                if let Some(name) = &version.display_name {
                    summary["PipelineVersionDisplayName"] = json!(name);
                }
                if let Some(description) = &version.description {
                    summary["PipelineVersionDescription"] = json!(description);
                }
                if let Some(arn) = &version.last_execution_arn {
                    summary["LastExecutionPipelineExecutionArn"] = json!(arn);
                }
                summary
            })
            .collect())
    })?;
    if input.sort_order.as_deref() != Some("Ascending") {
        summaries.reverse();
    }
    let (items, next) = page(summaries, input.next_token.as_deref(), input.max_results)?;
    Ok(paged("PipelineVersionSummaries", items, next))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct UpdateVersionInput {
    pipeline_arn: Option<String>,
    pipeline_version_id: Option<i64>,
    pipeline_version_display_name: Option<String>,
    pipeline_version_description: Option<String>,
}

/// UpdatePipelineVersion: a version's display name and description.
pub(super) fn update_version(res: &Resources, input: UpdateVersionInput) -> OpResult {
    let mut v = Validator::default();
    v.required_string(
        "PipelineArn",
        input.pipeline_arn.as_deref(),
        0,
        2048,
        Some(&patterns::PIPELINE_ARN),
    );
    if v.required("PipelineVersionId", input.pipeline_version_id.as_ref()) {
        v.range("PipelineVersionId", input.pipeline_version_id, 1, None);
    }
    v.string(
        "PipelineVersionDisplayName",
        input.pipeline_version_display_name.as_deref(),
        1,
        82,
        Some(&patterns::PIPELINE_EXECUTION_NAME),
    );
    v.string(
        "PipelineVersionDescription",
        input.pipeline_version_description.as_deref(),
        0,
        3072,
        None,
    );
    v.finish()?;
    let arn = input.pipeline_arn.as_deref().unwrap_or_default();
    let id = input.pipeline_version_id.unwrap_or_default();
    with_pipeline(res, arn, |pipeline, state| {
        let i = usize::try_from(id - 1).map_err(|_| version_not_found(&pipeline.arn, id))?;
        let version = state
            .versions
            .get_mut(i)
            .ok_or_else(|| version_not_found(&pipeline.arn, id))?;
        if let Some(name) = &input.pipeline_version_display_name {
            version.display_name = Some(name.clone());
        }
        if let Some(description) = &input.pipeline_version_description {
            version.description = Some(description.clone());
        }
        Ok(json!({ "PipelineArn": pipeline.arn, "PipelineVersionId": version.id }))
    })
}
