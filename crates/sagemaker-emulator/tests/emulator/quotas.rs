//! Request quotas: a token bucket per (account, region, operation), set on the command line
//! or at run time, answered ThrottlingException beyond as SageMaker answers, and counted.

use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use serde_json::json;

use crate::{
    accounts::ROLE_ACCOUNT,
    support::{
        Admin, assume, create_pipeline, default_keys, sagemaker_client_in, spawn_emulator,
        spawn_emulator_with,
    },
};

/// A rate so slow that no token comes back while a test runs: only the burst counts.
const NEVER: f64 = 0.0001;

/// How many of `n` DescribePipeline calls of `client` succeed; each other one must be
/// throttled exactly as SageMaker throttles.
async fn described(client: &aws_sdk_sagemaker::Client, pipeline: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        match client
            .describe_pipeline()
            .pipeline_name(pipeline)
            .send()
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => {
                assert_eq!(e.code(), Some("ThrottlingException"), "{e:?}");
                assert_eq!(e.message(), Some("Rate exceeded"));
                let raw = e.raw_response().unwrap();
                assert_eq!(raw.status().as_u16(), 400);
                let body: serde_json::Value =
                    serde_json::from_slice(raw.body().bytes().unwrap()).unwrap();
                assert_eq!(body["__type"], "ThrottlingException");
            }
        }
    }
    ok
}

#[tokio::test]
async fn a_quota_holds_per_account_region_and_operation_and_changes_at_run_time() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let role_keys = assume(endpoint, &format!("arn:aws:iam::{ROLE_ACCOUNT}:role/team")).await;
    let east = sagemaker_client_in(endpoint, "us-east-1", default_keys(), 1);
    let west = sagemaker_client_in(endpoint, "us-west-2", default_keys(), 1);
    let theirs = sagemaker_client_in(endpoint, "us-east-1", role_keys, 1);
    let steps = json!([{"Name": "A", "Type": "Training"}]);
    let (in_east, in_west, of_theirs) = (
        create_pipeline(&east, steps.clone()).await,
        create_pipeline(&west, steps.clone()).await,
        create_pipeline(&theirs, steps).await,
    );

    admin
        .set_quota("DescribePipeline", None, json!({"rate": NEVER, "burst": 2}))
        .await;
    assert_eq!(
        admin.quotas(None).await,
        json!({"DescribePipeline": {"rate": NEVER, "burst": 2.0}})
    );
    assert_eq!(
        described(&east, &in_east, 5).await,
        2,
        "the burst, then none"
    );
    // Each (account, region) has buckets of its own, and each operation.
    assert_eq!(described(&west, &in_west, 3).await, 2);
    assert_eq!(described(&theirs, &of_theirs, 3).await, 2);
    for _ in 0..5 {
        east.list_pipelines().send().await.unwrap();
    }
    assert_eq!(
        admin.stats_throttled().await,
        json!({
            "123456789012": {
                "us-east-1": {"DescribePipeline": 3},
                "us-west-2": {"DescribePipeline": 1},
            },
            ROLE_ACCOUNT: {"us-east-1": {"DescribePipeline": 1}},
        })
    );

    // Raised for one account at run time: its buckets start full under the new quota, the
    // others keep theirs.
    admin
        .set_quota("*", Some(ROLE_ACCOUNT), json!({"rate": NEVER, "burst": 4}))
        .await;
    admin
        .set_quota(
            "DescribePipeline",
            Some(ROLE_ACCOUNT),
            json!({"rate": NEVER, "burst": 5}),
        )
        .await;
    assert_eq!(
        admin.quotas(Some(ROLE_ACCOUNT)).await,
        json!({
            "*": {"rate": NEVER, "burst": 4.0},
            "DescribePipeline": {"rate": NEVER, "burst": 5.0},
        })
    );
    assert_eq!(
        described(&theirs, &of_theirs, 6).await,
        5,
        "the most specific"
    );
    assert_eq!(described(&east, &in_east, 1).await, 0);

    // Lifted: no limit.
    let http = reqwest::Client::new();
    let lifted = http
        .delete(format!("{endpoint}/_emulator/quotas/DescribePipeline"))
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 204);
    assert_eq!(described(&east, &in_east, 5).await, 5);
    let lifted = http
        .delete(format!(
            "{endpoint}/_emulator/quotas?account={ROLE_ACCOUNT}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(lifted.status(), 204);
    assert_eq!(admin.quotas(Some(ROLE_ACCOUNT)).await, json!({}));
    assert_eq!(described(&theirs, &of_theirs, 5).await, 5);

    // Stats reset with the others.
    admin.reset_stats().await;
    assert_eq!(admin.stats_throttled().await, json!({}));
}

#[tokio::test]
async fn bad_quotas_are_refused_by_the_admin_surface_and_at_start() {
    let emulator = spawn_emulator(1.0, None).await;
    let http = reqwest::Client::new();
    let put = |path: &str, body: serde_json::Value| {
        http.put(format!("{}/_emulator/quotas/{path}", emulator.endpoint_url))
            .json(&body)
            .send()
    };
    let refused = put("StopPipeline", json!({"rate": 1})).await.unwrap();
    assert_eq!(refused.status(), 404);
    for body in [
        json!({"rate": 0}),
        json!({"rate": 1, "burst": 0.5}),
        json!({"rate": -1}),
    ] {
        let refused = put("*", body.clone()).await.unwrap();
        assert_eq!(refused.status(), 400, "{body}");
        let error: serde_json::Value = refused.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("must be"),
            "{error}"
        );
    }
    let refused = put("*?account=123", json!({"rate": 1})).await.unwrap();
    assert_eq!(refused.status(), 400);
    let set = http
        .post(format!("{}/_emulator/quotas/*", emulator.endpoint_url))
        .json(&json!({"rate": 2.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), 200);
    let shown: serde_json::Value = set.json().await.unwrap();
    assert_eq!(
        shown,
        json!({"rate": 2.5, "burst": 3.0}),
        "one second's calls"
    );

    let options = sagemaker_emulator::EmulatorOptions {
        quotas: vec!["DescribePipelines=1".parse().unwrap()],
        ..Default::default()
    };
    let error = sagemaker_emulator::EmulatorServer::bind(([127, 0, 0, 1], 0).into(), &options)
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("no operation DescribePipelines"),
        "{error}"
    );
}

#[tokio::test]
async fn a_quota_given_at_start_throttles_every_attempt_of_the_sdk_beyond_it() {
    let options = sagemaker_emulator::EmulatorOptions {
        quotas: vec![format!("*={NEVER}/3").parse().unwrap()],
        ..Default::default()
    };
    let emulator = spawn_emulator_with(&options).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let once = sagemaker_client_in(endpoint, "us-east-1", default_keys(), 1);
    let pipeline = create_pipeline(&once, json!([{"Name": "A", "Type": "Training"}])).await;
    // CreatePipeline's bucket is another: DescribePipeline's burst is whole.
    assert_eq!(described(&once, &pipeline, 3).await, 3);
    // The SDK retries ThrottlingException, and gives up after its attempts.
    let three_attempts = sagemaker_client_in(endpoint, "us-east-1", default_keys(), 3);
    let e = three_attempts
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("ThrottlingException"));
    assert_eq!(
        admin.stats_throttled().await,
        json!({"123456789012": {"us-east-1": {"DescribePipeline": 3}}})
    );
    assert_eq!(admin.calls("DescribePipeline").await, 6);
}
