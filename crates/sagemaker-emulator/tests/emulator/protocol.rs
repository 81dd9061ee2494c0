//! SageMaker's wire protocol: errors with SageMaker's shapes and messages, pagination with
//! NextToken and MaxResults, and the answers to what an SDK cannot send.

use std::collections::HashSet;

use crate::support::{create_pipeline, sagemaker_client, spawn_emulator, start_execution, token};
use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use serde_json::json;

#[tokio::test]
async fn errors_have_sagemakers_shapes_and_messages() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let missing = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/nope/execution/abcdefghijkl";

    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(missing)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(missing)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);

    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert_eq!(
        e.message(),
        Some(
            r"1 validation error detected: Value 'nope' at 'pipelineExecutionArn' failed to satisfy constraint: Member must satisfy regular expression pattern: arn:aws[a-z\-]*:sagemaker:[a-z0-9\-]*:[0-9]{12}:pipeline\/.*\/execution\/.*"
        )
    );

    let e = client
        .stop_pipeline_execution()
        .pipeline_execution_arn(missing)
        .client_request_token("short")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.message(),
        Some(
            "1 validation error detected: Value 'short' at 'clientRequestToken' failed to satisfy constraint: Member must have length greater than or equal to 32"
        )
    );
    let long_arn = format!("{missing}{}", "x".repeat(2048));
    let e = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&long_arn)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("Member must have length less than or equal to 2048"),
        "{e:?}"
    );

    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("abc")
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("at 'callbackToken' failed to satisfy constraint: Member must have length greater than or equal to 10"), "{e:?}");
    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("abc-def-gh")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("Member must satisfy regular expression pattern: [a-zA-Z0-9]+"),
        "{e:?}"
    );
    let e = client
        .send_pipeline_execution_step_failure()
        .callback_token("AAAAAAAAAA")
        .failure_reason("x".repeat(257))
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("at 'failureReason' failed to satisfy constraint: Member must have length less than or equal to 256"), "{e:?}");
    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("AAAAAAAAAA")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );

    // CreatePipeline: names, roles, definitions, duplicates, several violations at once.
    let e = client
        .create_pipeline()
        .pipeline_name("-bad_name")
        .role_arn("not-a-role-but-long-enough")
        .pipeline_definition("{}")
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    let message = e.message().unwrap();
    assert!(
        message.starts_with("2 validation errors detected: "),
        "{message}"
    );
    assert!(
        message.contains("at 'pipelineName'") && message.contains("at 'roleArn'"),
        "{message}"
    );
    let e = client
        .create_pipeline()
        .pipeline_name("good")
        .role_arn("arn:aws:iam::123456789012:role/R")
        .pipeline_definition(
            r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Teleport"}]}"#,
        )
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
    assert!(
        e.message().unwrap().contains("unknown Type 'Teleport'"),
        "{e:?}"
    );
    let name = create_pipeline(&client, json!([{"Name": "A", "Type": "Training"}])).await;
    let e = client
        .create_pipeline()
        .pipeline_name(&name)
        .role_arn("arn:aws:iam::123456789012:role/R")
        .pipeline_definition(
            r#"{"Version": "2020-12-01", "Steps": [{"Name": "A", "Type": "Training"}]}"#,
        )
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(e.message().unwrap().contains("already exists"), "{e:?}");
    let e = client
        .describe_pipeline()
        .pipeline_name("missing-pipeline")
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .start_pipeline_execution()
        .pipeline_name("missing-pipeline")
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_resource_not_found(),
        "{e:?}"
    );
    let e = client
        .start_pipeline_execution()
        .pipeline_name(&name)
        .client_request_token(token())
        .pipeline_parameters(
            aws_sdk_sagemaker::types::Parameter::builder()
                .name("Undeclared")
                .value("v")
                .build(),
        )
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message()
            .unwrap()
            .contains("Parameter 'Undeclared' is not defined"),
        "{e:?}"
    );
    let selective = aws_sdk_sagemaker::types::SelectiveExecutionConfig::builder()
        .set_selected_steps(Some(vec![]))
        .build();
    let e = client
        .start_pipeline_execution()
        .pipeline_name(&name)
        .client_request_token(token())
        .selective_execution_config(selective)
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message().unwrap().contains("at 'selectiveExecutionConfig.selectedSteps' failed to satisfy constraint: Member must have length greater than or equal to 1"),
        "{e:?}"
    );
    let outputs: Vec<_> = (0..51)
        .map(|i| {
            aws_sdk_sagemaker::types::OutputParameter::builder()
                .name(format!("o{i}"))
                .value("v")
                .build()
        })
        .collect();
    let e = client
        .send_pipeline_execution_step_success()
        .callback_token("AAAAAAAAAA")
        .set_output_parameters(Some(outputs))
        .send()
        .await
        .unwrap_err();
    assert!(
        e.message().unwrap().contains("at 'outputParameters' failed to satisfy constraint: Member must have length less than or equal to 50"),
        "{e:?}"
    );
    for bad in [0, 101] {
        let e = client
            .list_pipeline_executions()
            .pipeline_name(&name)
            .max_results(bad)
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
    let e = client
        .list_pipeline_executions()
        .pipeline_name(&name)
        .next_token("garbage")
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ValidationException"));
}

#[tokio::test]
async fn lists_paginate_with_next_token_and_max_results() {
    let emulator = spawn_emulator(1.0, None).await;
    let client = sagemaker_client(&emulator.endpoint_url, 1);
    let pipeline = create_pipeline(&client, json!([{"Name": "A", "Type": "Training"}])).await;
    let mut started = Vec::new();
    for _ in 0..25 {
        started.push(start_execution(&client, &pipeline).await);
    }
    let first = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .max_results(10)
        .send()
        .await
        .unwrap();
    assert_eq!(first.pipeline_execution_summaries().len(), 10);
    assert!(first.next_token().is_some());
    let default_page = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
    assert_eq!(default_page.pipeline_execution_summaries().len(), 10);

    let all: Vec<_> = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .max_results(10)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .unwrap();
    let listed: Vec<String> = all
        .iter()
        .map(|s| s.pipeline_execution_arn().unwrap().to_string())
        .collect();
    let newest_first: Vec<String> = started.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);
    let ascending = client
        .list_pipeline_executions()
        .pipeline_name(&pipeline)
        .sort_order(aws_sdk_sagemaker::types::SortOrder::Ascending)
        .max_results(1)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ascending.pipeline_execution_summaries()[0].pipeline_execution_arn(),
        Some(started[0].as_str())
    );

    // 120 parallel steps: two pages of steps at 100 a page.
    let steps: Vec<_> = (0..120)
        .map(|i| json!({"Name": format!("S{i:03}"), "Type": "Processing"}))
        .collect();
    let wide = create_pipeline(&client, json!(steps)).await;
    let arn = start_execution(&client, &wide).await;
    let page = client
        .list_pipeline_execution_steps()
        .pipeline_execution_arn(&arn)
        .max_results(100)
        .send()
        .await
        .unwrap();
    assert_eq!(page.pipeline_execution_steps().len(), 100);
    let rest = client
        .list_pipeline_execution_steps()
        .pipeline_execution_arn(&arn)
        .max_results(100)
        .next_token(page.next_token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(rest.pipeline_execution_steps().len(), 20);
    assert!(rest.next_token().is_none());
    let names: HashSet<String> = page
        .pipeline_execution_steps()
        .iter()
        .chain(rest.pipeline_execution_steps())
        .map(|s| s.step_name().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 120);
}

#[tokio::test]
async fn the_wire_protocol_answers_what_an_sdk_cannot_send() {
    let emulator = spawn_emulator(1.0, None).await;
    let http = reqwest::Client::new();
    let post = |target: &str, body: &str| {
        http.post(format!("{}/", emulator.endpoint_url))
            .header("Content-Type", "application/x-amz-json-1.1")
            .header("X-Amz-Target", target)
            .body(body.to_string())
            .send()
    };

    let response = post("SageMaker.CreateModel", "{}").await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.headers().get("x-amzn-requestid").is_some());
    assert_eq!(
        response.headers()["x-amzn-errortype"],
        "UnknownOperationException"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["__type"], "UnknownOperationException");

    let response = post("SageMaker.DescribePipelineExecution", "{not json")
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["__type"], "SerializationException");

    // A member of the wrong type is a serialization error too.
    let response = post(
        "SageMaker.ListPipelineExecutions",
        r#"{"PipelineName": "p", "MaxResults": "ten"}"#,
    )
    .await
    .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["__type"], "SerializationException");

    // An empty body is an empty input: here, a missing required member.
    let response = post("SageMaker.DescribePipelineExecution", "")
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/x-amz-json-1.1"
    );
    assert_eq!(
        response.headers()["x-amzn-errortype"],
        "ValidationException"
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(
        body["Message"],
        "1 validation error detected: Value null at 'pipelineExecutionArn' failed to satisfy constraint: Member must not be null"
    );

    let stats: serde_json::Value =
        reqwest::get(format!("{}/_emulator/stats", emulator.endpoint_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(stats["DescribePipelineExecution"], 2);
    assert_eq!(stats["ListPipelineExecutions"], 1);
    assert_eq!(stats["StopPipelineExecution"], 0);
}
