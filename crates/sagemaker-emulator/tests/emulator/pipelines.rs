//! Pipelines: ListPipelines' filters, sorting and pages, updates that make versions (executions
//! keep the one they started with), DeletePipeline, and the definition checks of CreatePipeline
//! and UpdatePipeline.

use std::time::Duration;

use crate::{
    callback_pipeline, step,
    support::{
        self, all_steps, execution_status, sagemaker_client, spawn_emulator, start_execution, token,
    },
};
use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use serde_json::json;

/// A definition document with these parameters and steps.
fn definition(parameters: serde_json::Value, steps: serde_json::Value) -> String {
    json!({"Version": "2020-12-01", "Parameters": parameters, "Steps": steps}).to_string()
}

const ROLE: &str = "arn:aws:iam::123456789012:role/SageMakerRole";

pub(crate) async fn create_named(
    client: &aws_sdk_sagemaker::Client,
    name: &str,
    definition: &str,
) -> String {
    client
        .create_pipeline()
        .pipeline_name(name)
        .pipeline_definition(definition)
        .role_arn(ROLE)
        .client_request_token(token())
        .send()
        .await
        .expect("create the pipeline")
        .pipeline_arn()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn list_pipelines_filters_sorts_and_paginates() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let doc = definition(json!([]), json!([{"Name": "A", "Type": "Training"}]));
    for name in ["beta-1", "Alpha-2", "alpha-1"] {
        create_named(&client, name, &doc).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let names = |page: &aws_sdk_sagemaker::operation::list_pipelines::ListPipelinesOutput| {
        page.pipeline_summaries()
            .iter()
            .map(|s| s.pipeline_name().unwrap().to_string())
            .collect::<Vec<_>>()
    };

    let newest_first = client.list_pipelines().send().await.unwrap();
    assert_eq!(names(&newest_first), ["alpha-1", "Alpha-2", "beta-1"]);
    let summary = &newest_first.pipeline_summaries()[2];
    assert_eq!(
        summary.pipeline_arn(),
        Some("arn:aws:sagemaker:us-east-1:123456789012:pipeline/beta-1")
    );
    assert_eq!(summary.role_arn(), Some(ROLE));
    assert!(summary.creation_time().is_some());
    assert!(summary.last_execution_time().is_none());

    let by_name = client
        .list_pipelines()
        .sort_by(aws_sdk_sagemaker::types::SortPipelinesBy::Name)
        .sort_order(aws_sdk_sagemaker::types::SortOrder::Ascending)
        .send()
        .await
        .unwrap();
    assert_eq!(names(&by_name), ["alpha-1", "Alpha-2", "beta-1"]);
    let prefixed = client
        .list_pipelines()
        .pipeline_name_prefix("alpha")
        .sort_order(aws_sdk_sagemaker::types::SortOrder::Ascending)
        .send()
        .await
        .unwrap();
    assert_eq!(
        names(&prefixed),
        ["Alpha-2", "alpha-1"],
        "prefixes ignore case"
    );
    // Just after the first one was created (times are milliseconds apart).
    let first_created = newest_first.pipeline_summaries()[2]
        .creation_time()
        .unwrap();
    let just_after =
        aws_sdk_sagemaker::primitives::DateTime::from_secs_f64(first_created.as_secs_f64() + 0.001);
    let later = client
        .list_pipelines()
        .created_after(just_after)
        .send()
        .await
        .unwrap();
    assert_eq!(names(&later), ["alpha-1", "Alpha-2"]);

    let one_a_page = client.list_pipelines().max_results(1).send().await.unwrap();
    assert_eq!(one_a_page.pipeline_summaries().len(), 1);
    assert!(one_a_page.next_token().is_some());
    let all: Vec<_> = client
        .list_pipelines()
        .max_results(1)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(all.len(), 3);

    let e = client
        .list_pipelines()
        .pipeline_name_prefix("-bad")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message().unwrap().contains("at 'pipelineNamePrefix'"),
        "{e:?}"
    );
    let e = client
        .list_pipelines()
        .sort_by(aws_sdk_sagemaker::types::SortPipelinesBy::from("Size"))
        .max_results(101)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .starts_with("2 validation errors detected"),
        "{e:?}"
    );
}

#[tokio::test]
async fn an_update_makes_a_version_and_executions_keep_the_one_they_started_with() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let first = definition(
        json!([{"Name": "InputUri", "Type": "String", "DefaultValue": "s3://b/in"},
               {"Name": "Epochs", "Type": "Integer", "DefaultValue": 3}]),
        json!([{"Name": "Train", "Type": "Training"}]),
    );
    let second = definition(
        json!([{"Name": "InputUri", "Type": "String", "DefaultValue": "s3://b/v2"}]),
        json!([{"Name": "Prepare", "Type": "Processing"}]),
    );
    let arn = create_named(&client, "versioned", &first).await;
    let old_run = client
        .start_pipeline_execution()
        .pipeline_name("versioned")
        .client_request_token(token())
        .pipeline_parameters(
            aws_sdk_sagemaker::types::Parameter::builder()
                .name("InputUri")
                .value("s3://b/chosen")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();

    let updated = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_definition(&second)
        .pipeline_display_name("versioned-v2")
        .pipeline_description("second version")
        .send()
        .await
        .unwrap();
    assert_eq!(updated.pipeline_arn(), Some(arn.as_str()));
    assert_eq!(updated.pipeline_version_id(), Some(2));
    let new_run = start_execution(&client, "versioned").await;

    let definition_of = |execution: String| {
        let client = client.clone();
        async move {
            client
                .describe_pipeline_definition_for_execution()
                .pipeline_execution_arn(execution)
                .send()
                .await
                .unwrap()
        }
    };
    let old_definition = definition_of(old_run.clone()).await;
    assert_eq!(old_definition.pipeline_definition(), Some(first.as_str()));
    assert!(old_definition.creation_time().is_some());
    assert_eq!(
        definition_of(new_run.clone()).await.pipeline_definition(),
        Some(second.as_str())
    );
    let steps = all_steps(&client, &old_run).await;
    assert_eq!(steps[0].step_name(), Some("Train"), "the old run runs v1");
    let old = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&old_run)
        .send()
        .await
        .unwrap();
    assert_eq!(old.pipeline_version_id(), Some(1));

    let described = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .send()
        .await
        .unwrap();
    assert_eq!(described.pipeline_definition(), Some(second.as_str()));
    assert_eq!(described.pipeline_display_name(), Some("versioned-v2"));
    assert_eq!(described.pipeline_description(), Some("second version"));
    assert!(described.last_modified_time() > described.creation_time());

    // Parameters: what the run started with, the defaults of its own version filled in.
    let parameters: Vec<(String, String)> = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(&old_run)
        .max_results(1)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.name.unwrap(), p.value.unwrap()))
        .collect();
    assert_eq!(
        parameters,
        [
            ("InputUri".to_string(), "s3://b/chosen".to_string()),
            ("Epochs".to_string(), "3".to_string())
        ]
    );
    let new_parameters = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(&new_run)
        .send()
        .await
        .unwrap();
    assert_eq!(new_parameters.pipeline_parameters().len(), 1);
    assert_eq!(
        new_parameters.pipeline_parameters()[0].value(),
        Some("s3://b/v2")
    );

    // Versions, newest first, each with its last execution; version 1 renamed.
    client
        .update_pipeline_version()
        .pipeline_arn(&arn)
        .pipeline_version_id(1)
        .pipeline_version_display_name("first-cut")
        .pipeline_version_description("the original")
        .send()
        .await
        .unwrap();
    let versions = client
        .list_pipeline_versions()
        .pipeline_name(&arn)
        .send()
        .await
        .unwrap();
    let summaries = versions.pipeline_version_summaries();
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].pipeline_version_id(), Some(2));
    assert_eq!(
        summaries[0].last_execution_pipeline_execution_arn(),
        Some(new_run.as_str())
    );
    assert_eq!(summaries[1].pipeline_version_id(), Some(1));
    assert_eq!(
        summaries[1].pipeline_version_display_name(),
        Some("first-cut")
    );
    assert_eq!(
        summaries[1].last_execution_pipeline_execution_arn(),
        Some(old_run.as_str())
    );
    let v1 = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .pipeline_version_id(1)
        .send()
        .await
        .unwrap();
    assert_eq!(v1.pipeline_definition(), Some(first.as_str()));
    assert_eq!(v1.pipeline_version_display_name(), Some("first-cut"));
    assert_eq!(v1.pipeline_version_description(), Some("the original"));

    // An update without a definition copies the newest one into the next version.
    let third = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_description("third")
        .send()
        .await
        .unwrap();
    assert_eq!(third.pipeline_version_id(), Some(3));
    let v3 = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .pipeline_version_id(3)
        .send()
        .await
        .unwrap();
    assert_eq!(v3.pipeline_definition(), Some(second.as_str()));
    let run_of_v1 = client
        .start_pipeline_execution()
        .pipeline_name("versioned")
        .pipeline_version_id(1)
        .client_request_token(token())
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();
    assert_eq!(
        definition_of(run_of_v1).await.pipeline_definition(),
        Some(first.as_str())
    );

    // Errors.
    let missing = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/nope/execution/abcdefghijkl";
    let e = client
        .update_pipeline()
        .pipeline_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_display_name("not_valid")
        .role_arn("not-a-role-but-long-enough")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message()
            .unwrap()
            .starts_with("2 validation errors detected"),
        "{e:?}"
    );
    let e = client
        .update_pipeline()
        .pipeline_name("versioned")
        .pipeline_definition("{\"Version\": \"2020-12-01\", \"Steps\": []}")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = client
        .update_pipeline_version()
        .pipeline_arn(&arn)
        .pipeline_version_id(9)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .update_pipeline_version()
        .pipeline_arn("versioned")
        .pipeline_version_id(0)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .starts_with("2 validation errors detected: Value 'versioned' at 'pipelineArn'"),
        "{e:?}"
    );
    let e = client
        .describe_pipeline()
        .pipeline_name("versioned")
        .pipeline_version_id(4)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .list_pipeline_versions()
        .pipeline_name("nope")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .list_pipeline_versions()
        .pipeline_name("versioned")
        .max_results(0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = client
        .describe_pipeline_definition_for_execution()
        .pipeline_execution_arn(missing)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .describe_pipeline_definition_for_execution()
        .pipeline_execution_arn("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    let e = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(missing)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .list_pipeline_parameters_for_execution()
        .pipeline_execution_arn(&old_run)
        .max_results(101)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("at 'maxResults' failed to satisfy constraint"),
        "{e:?}"
    );
}

#[tokio::test]
async fn delete_pipeline_refuses_while_an_execution_runs_then_deletes_it_and_its_executions() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = "doomed";
    let (pipeline_arn, arn) = callback_pipeline(&client, pipeline).await;
    let callback = support::callback_token(step(&all_steps(&client, &arn).await, "Approve"));

    let refused = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        refused.as_service_error().unwrap().is_conflict_exception(),
        "{refused:?}"
    );
    assert!(refused.message().unwrap().contains(&arn), "{refused:?}");
    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    let still_stopping = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        still_stopping
            .as_service_error()
            .unwrap()
            .is_conflict_exception()
    );
    client
        .send_pipeline_execution_step_success()
        .callback_token(&callback)
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Stopped");

    let delete_token = token();
    let deleted = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(&delete_token)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.pipeline_arn(), Some(pipeline_arn.as_str()));
    let replayed = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(&delete_token)
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.pipeline_arn(), Some(pipeline_arn.as_str()));

    let e = client
        .describe_pipeline()
        .pipeline_name(pipeline)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    let e = client
        .send_pipeline_execution_step_failure()
        .callback_token(&callback)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    let e = client
        .delete_pipeline()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    assert!(
        client
            .list_pipelines()
            .send()
            .await
            .unwrap()
            .pipeline_summaries()
            .is_empty()
    );

    // The name is free again, with nothing of the old pipeline's executions.
    let doc = definition(json!([]), json!([{"Name": "A", "Type": "Training"}]));
    create_named(&client, pipeline, &doc).await;
    let runs = client
        .list_pipeline_executions()
        .pipeline_name(pipeline)
        .send()
        .await
        .unwrap();
    assert!(runs.pipeline_execution_summaries().is_empty());

    let e = client
        .delete_pipeline()
        .pipeline_name(&pipeline_arn)
        .client_request_token("short")
        .send()
        .await
        .unwrap_err();
    let message = e.message().unwrap();
    assert!(
        message.starts_with("2 validation errors detected"),
        "{message}"
    );
    assert!(message.contains("at 'pipelineName'"), "{message}");
    assert!(message.contains("at 'clientRequestToken'"), "{message}");
}

#[tokio::test]
async fn a_lambda_timeout_above_ten_minutes_is_refused() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let lambda = |timeout: u32| {
        definition(
            json!([]),
            json!([{"Name": "Evaluate", "Type": "Lambda",
                    "FunctionArn": "arn:aws:lambda:us-east-1:123456789012:function:evaluate",
                    "Arguments": {"Emulator": {"TimeoutSeconds": timeout}}}]),
        )
    };
    create_named(&client, "at-the-limit", &lambda(600)).await;
    let e = client
        .create_pipeline()
        .pipeline_name("too-long")
        .pipeline_definition(lambda(601))
        .role_arn(ROLE)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(e.message().unwrap().contains("between 1 and 600"), "{e:?}");
    let e = client
        .update_pipeline()
        .pipeline_name("at-the-limit")
        .pipeline_definition(lambda(900))
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}
