//! The admin surface's faults and counters: injected faults as the SDK sees them, the
//! AccessDenied fault for one account or all, and call stats per account, region and operation.

use std::time::Duration;

use crate::{
    accounts::ROLE_ACCOUNT,
    support::{
        Admin, assume, create_pipeline, default_keys, execution_status, sagemaker_client,
        sagemaker_client_in, spawn_emulator, start_execution, sts_client, token,
    },
};
use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use serde_json::json;

#[tokio::test]
async fn injected_faults_surface_as_the_sdk_sees_them() {
    let emulator = spawn_emulator(1.0, None).await;
    let admin = Admin::new(&emulator.endpoint_url);
    let no_retries = sagemaker_client(&emulator.endpoint_url, 1);
    let three_attempts = sagemaker_client(&emulator.endpoint_url, 3);
    let pipeline = create_pipeline(&no_retries, json!([{"Name": "A", "Type": "Training"}])).await;
    let arn = start_execution(&no_retries, &pipeline).await;
    let describe = |client: &aws_sdk_sagemaker::Client| {
        client
            .describe_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .send()
    };

    // Throttling for the next 2 calls: the SDK retries it and succeeds on the third attempt.
    admin.reset_stats().await;
    admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"throttle": {"count": 2}}),
        )
        .await;
    describe(&three_attempts).await.unwrap();
    assert_eq!(admin.calls("DescribePipelineExecution").await, 3);

    // More throttling than attempts: the SDK gives up with ThrottlingException.
    admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"throttle": {"count": 5}}),
        )
        .await;
    let e = describe(&three_attempts).await.unwrap_err();
    assert_eq!(e.code(), Some("ThrottlingException"));
    assert_eq!(e.message(), Some("Rate exceeded"));
    admin.clear_faults().await;

    // HTTP 500, every call: the SDK sees InternalFailure with status 500.
    admin
        .set_fault("*", json!({"internalError": {"fraction": 1.0}}))
        .await;
    let e = describe(&no_retries).await.unwrap_err();
    assert_eq!(e.code(), Some("InternalFailure"));
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 500);
    admin.clear_faults().await;

    // ConflictException on stop: modeled, and not retried by the SDK.
    admin.reset_stats().await;
    admin
        .set_fault("StopPipelineExecution", json!({"conflict": {"count": 1}}))
        .await;
    let e = three_attempts
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap_err();
    assert!(
        e.as_service_error().unwrap().is_conflict_exception(),
        "{e:?}"
    );
    assert_eq!(admin.calls("StopPipelineExecution").await, 1);
    assert_eq!(
        execution_status(&no_retries, &arn).await,
        "Executing",
        "a faulted call has no effect"
    );

    // Added latency delays the answer by at least that much.
    admin
        .set_fault("DescribePipelineExecution", json!({"latencyMs": 300}))
        .await;
    let started = std::time::Instant::now();
    describe(&no_retries).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    admin.clear_faults().await;

    // Replaced members: a status SageMaker may add one day reaches the SDK as an unknown
    // value, and the rest of the answer is the operation's own; failures are not touched.
    admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"replace": {"PipelineExecutionStatus": "Paused"}}),
        )
        .await;
    let described = describe(&no_retries).await.unwrap();
    let status = described.pipeline_execution_status().unwrap();
    assert!(
        !aws_sdk_sagemaker::types::PipelineExecutionStatus::values().contains(&status.as_str()),
        "{status:?} is a value the SDK does not know"
    );
    assert_eq!(status.as_str(), "Paused");
    assert_eq!(described.pipeline_execution_arn(), Some(arn.as_str()));
    let missing = no_retries
        .describe_pipeline_execution()
        .pipeline_execution_arn(arn.replace(&arn[arn.len() - 12..], "zzzzzzzzzzzz"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some("ResourceNotFound"));
    admin.clear_faults().await;
    assert_eq!(execution_status(&no_retries, &arn).await, "Executing");

    let faults: serde_json::Value =
        reqwest::get(format!("{}/_emulator/faults", emulator.endpoint_url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(faults, json!({}));
}

#[tokio::test]
async fn the_access_denied_fault_refuses_sagemaker_calls_of_one_account_or_all() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let mine = sagemaker_client_in(endpoint, "eu-west-1", default_keys(), 3);
    let role_keys = assume(endpoint, "arn:aws:iam::111111111111:role/team").await;
    let theirs = sagemaker_client_in(endpoint, "eu-west-1", role_keys, 3);
    let my_pipeline = create_pipeline(&mine, json!([{"Name": "A", "Type": "Training"}])).await;
    let their_pipeline = create_pipeline(&theirs, json!([{"Name": "A", "Type": "Training"}])).await;
    let describe = |client: &aws_sdk_sagemaker::Client, name: &str| {
        client.describe_pipeline().pipeline_name(name).send()
    };

    // Every account, once: not retried by the SDK.
    admin.reset_stats().await;
    admin
        .set_fault("DescribePipeline", json!({"accessDenied": {"count": 1}}))
        .await;
    let e = describe(&mine, &my_pipeline).await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"));
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);
    assert_eq!(
        e.message().unwrap(),
        format!(
            "User: arn:aws:iam::123456789012:user/emulator is not authorized to perform: sagemaker:DescribePipeline on resource: arn:aws:sagemaker:eu-west-1:123456789012:pipeline/{} because no identity-based policy allows the sagemaker:DescribePipeline action",
            my_pipeline.to_lowercase()
        )
    );
    assert_eq!(admin.calls("DescribePipeline").await, 1);
    describe(&mine, &my_pipeline).await.unwrap();
    admin.clear_faults().await;

    // One account only, every operation: the other account's calls go through.
    let response = reqwest::Client::new()
        .put(format!(
            "{endpoint}/_emulator/faults/*?account={ROLE_ACCOUNT}"
        ))
        .json(&json!({"accessDenied": {"fraction": 1.0}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let e = describe(&theirs, &their_pipeline).await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDeniedException"));
    assert!(
        e.message().unwrap().starts_with(
            "User: arn:aws:sts::111111111111:assumed-role/team/tests is not authorized to perform: sagemaker:DescribePipeline on resource: arn:aws:sagemaker:eu-west-1:111111111111:pipeline/"
        ),
        "{e:?}"
    );
    let e = theirs
        .list_pipeline_executions()
        .pipeline_name(&their_pipeline)
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some("AccessDeniedException"),
        "* covers every operation"
    );
    describe(&mine, &my_pipeline).await.unwrap();
    start_execution(&mine, &my_pipeline).await;

    assert_eq!(admin.faults(None).await, json!({}));
    assert_eq!(
        admin.faults(Some(ROLE_ACCOUNT)).await,
        json!({"*": {"accessDenied": {"fraction": 1.0}}})
    );
    let response = reqwest::Client::new()
        .put(format!("{endpoint}/_emulator/faults/*?account=nope"))
        .json(&json!({"accessDenied": {"count": 1}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    admin.clear_faults().await;
    assert_eq!(admin.faults(Some(ROLE_ACCOUNT)).await, json!({}));
    describe(&theirs, &their_pipeline).await.unwrap();
}

#[tokio::test]
async fn stats_count_calls_per_account_region_and_operation() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let role_keys = assume(endpoint, "arn:aws:iam::111111111111:role/team").await;
    let east = sagemaker_client_in(endpoint, "us-east-1", default_keys(), 1);
    let west = sagemaker_client_in(endpoint, "us-west-2", role_keys.clone(), 1);
    let pipeline = create_pipeline(&east, json!([{"Name": "A", "Type": "Training"}])).await;
    for _ in 0..2 {
        east.describe_pipeline()
            .pipeline_name(&pipeline)
            .send()
            .await
            .unwrap();
    }
    let e = west
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());
    sts_client(endpoint, "us-west-2", role_keys)
        .get_caller_identity()
        .send()
        .await
        .unwrap();

    assert_eq!(
        admin.stats_by_account().await,
        json!({
            "123456789012": {"us-east-1": {"AssumeRole": 1, "CreatePipeline": 1, "DescribePipeline": 2}},
            "111111111111": {"us-west-2": {"DescribePipeline": 1, "GetCallerIdentity": 1}},
        })
    );
    // The flat stats stay what they were: SageMaker operations, summed, zeros included.
    let flat = admin.stats().await;
    assert_eq!(flat.len(), 18, "{flat:?}");
    assert_eq!(flat["DescribePipeline"], 3);
    assert_eq!(flat["CreatePipeline"], 1);
    assert_eq!(flat["StopPipelineExecution"], 0);
    assert!(!flat.contains_key("AssumeRole"));

    admin.reset_stats().await;
    assert_eq!(admin.stats_by_account().await, json!({}));
    assert!(admin.stats().await.values().all(|n| *n == 0));
}
