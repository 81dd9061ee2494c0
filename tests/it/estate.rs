//! The estate: one service in front of many accounts and regions, against one emulator that
//! plays them all (the region of each call's signature, the account of its key, STS for
//! roles). Every stop, read and watch reaches the ARN's (account, region); refusals of the
//! service's own credentials are neither retried nor recorded.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{
    Admin, Backend, Stack, TestApp, TestDb, assume, default_keys, sagemaker_client_in,
    spawn_emulator, stack_args,
};
use pipeline_control::pb;
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt as _;

pub(crate) const OWN: &str = "123456789012";
pub(crate) const OTHER: &str = "222222222222";
const ROLE: &str = "arn:aws:iam::222222222222:role/pipeline-control";
const EXTERNAL_ID: &str = "stop-them-safely";

on_both_databases!(
    each_stop_read_and_watch_reaches_its_account_and_region,
    the_services_own_credentials_refused_is_neither_retried_nor_recorded,
);

/// An accounts file: the service's own account in two regions, another through a role.
pub(crate) fn accounts_file() -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "[[account]]\nid = \"{OWN}\"\nregions = [\"us-east-1\", \"eu-west-1\"]\n\n\
             [[account]]\nid = \"{OTHER}\"\nrole_arn = \"{ROLE}\"\nexternal_id = \"{EXTERNAL_ID}\"\n"
        ),
    )
    .unwrap();
    file
}

pub(crate) async fn stack(
    backend: Backend,
    time_scale: f64,
    accounts: &tempfile::NamedTempFile,
) -> Stack {
    let path = accounts.path().to_path_buf();
    let stack = Stack::start(backend, time_scale, |args| {
        args.sagemaker.accounts_file = Some(path);
        args.poll_interval = Duration::from_millis(100);
    })
    .await;
    // The role may be assumed only with the external id the accounts file gives.
    stack
        .admin
        .set_role(json!({"roleArn": ROLE, "externalId": EXTERNAL_ID}))
        .await;
    stack
}

/// A SageMaker client acting in `account` (the emulator's default keys, or the role's) and
/// signing for `region`.
pub(crate) async fn client_in(
    stack: &Stack,
    account: &str,
    region: &str,
) -> aws_sdk_sagemaker::Client {
    let endpoint = &stack.emulator.endpoint_url;
    let credentials = if account == OWN {
        default_keys()
    } else {
        let sts = crate::common::sts_client(endpoint, region, default_keys());
        let answer = sts
            .assume_role()
            .role_arn(ROLE)
            .role_session_name("tests")
            .external_id(EXTERNAL_ID)
            .duration_seconds(43_200)
            .send()
            .await
            .unwrap();
        crate::common::session_keys(answer.credentials().unwrap())
    };
    sagemaker_client_in(endpoint, region, credentials, 1)
}

/// An execution of a new pipeline in `account` and `region` whose Callback step holds it.
async fn execution_in(stack: &Stack, account: &str, region: &str) -> String {
    let client = client_in(stack, account, region).await;
    let pipeline = crate::common::create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"}]),
    )
    .await;
    crate::common::start_execution(&client, &pipeline).await
}

async fn get(stack: &Stack, arn: &str) -> Result<pb::Execution, tonic::Status> {
    stack
        .client
        .clone()
        .get_execution(pb::GetExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .map(tonic::Response::into_inner)
}

async fn stop(
    stack: &Stack,
    arn: &str,
    token: &str,
) -> Result<pb::StopExecutionResponse, tonic::Status> {
    stack
        .client
        .clone()
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
            client_request_token: token.to_string(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Calls of `operation` the emulator counted for (account, region).
fn calls(stats: &serde_json::Value, account: &str, region: &str, operation: &str) -> u64 {
    stats[account][region][operation].as_u64().unwrap_or(0)
}

async fn each_stop_read_and_watch_reaches_its_account_and_region(backend: Backend) {
    let accounts = accounts_file();
    let stack = stack(backend, 1000.0, &accounts).await;
    let places = [
        (OWN, "us-east-1"),
        (OWN, "eu-west-1"),
        (OTHER, "us-east-1"),
        (OTHER, "eu-west-1"),
    ];
    let mut arns = Vec::new();
    for (account, region) in places {
        let arn = execution_in(&stack, account, region).await;
        assert!(
            arn.starts_with(&format!("arn:aws:sagemaker:{region}:{account}:pipeline/")),
            "{arn}"
        );
        arns.push(arn);
    }
    stack.admin.reset_stats().await;

    for arn in &arns {
        let execution = get(&stack, arn).await.unwrap();
        assert_eq!(&execution.pipeline_execution_arn, arn);
        assert_eq!(execution.status(), pb::ExecutionStatus::Executing);
        let mut stream = stack
            .client
            .clone()
            .watch_execution(pb::WatchExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = stream.message().await.unwrap().unwrap();
        assert!(matches!(
            first.event,
            Some(pb::watch_execution_response::Event::Execution(ref e)) if &e.pipeline_execution_arn == arn
        ));
        let answer = stop(&stack, arn, &format!("stop-{arn}")).await.unwrap();
        assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
    }

    // Each call went to its own (account, region), and nowhere else.
    let stats = stack.admin.stats_by_account().await;
    for (account, region) in places {
        assert_eq!(
            calls(&stats, account, region, "StopPipelineExecution"),
            1,
            "{account}/{region}: {stats}"
        );
        assert!(
            calls(&stats, account, region, "DescribePipelineExecution") >= 2,
            "{account}/{region}: {stats}"
        );
    }
    // The role was assumed (with its external id) in the regions of the other account's
    // executions, by the service's own account.
    for region in ["us-east-1", "eu-west-1"] {
        assert!(calls(&stats, OWN, region, "AssumeRole") >= 1, "{stats}");
    }
    assert_eq!(stack.stored_requests().await, 4);

    // The same execution id under another account is another (missing) execution.
    let elsewhere = arns[0].replace(&format!(":{OWN}:"), &format!(":{OTHER}:"));
    assert_eq!(
        get(&stack, &elsewhere).await.unwrap_err().code(),
        Code::NotFound
    );
}

async fn the_services_own_credentials_refused_is_neither_retried_nor_recorded(backend: Backend) {
    let accounts = accounts_file();
    let stack = stack(backend, 1000.0, &accounts).await;
    let arn = execution_in(&stack, OWN, "eu-west-1").await;
    stack.admin.reset_stats().await;
    stack
        .admin
        .set_fault(
            "StopPipelineExecution",
            json!({"accessDenied": {"count": 1}}),
        )
        .await;

    let error = stop(&stack, &arn, "denied").await.unwrap_err();
    assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
    let info = error.get_details_error_info().unwrap();
    assert_eq!(info.reason, "UPSTREAM_ACCESS_DENIED");
    assert_eq!(info.metadata["account"], OWN);
    assert_eq!(info.metadata["region"], "eu-west-1");
    assert!(error.get_details_precondition_failure().is_some());
    assert!(
        !error.message().contains("not authorized"),
        "AWS's text stays in the log: {}",
        error.message()
    );
    assert_eq!(
        stack.admin.calls("StopPipelineExecution").await,
        1,
        "not retried"
    );
    assert_eq!(stack.stored_requests().await, 0, "not recorded");
    assert_eq!(
        crate::common::count_where(
            &stack.db,
            "stop_audit",
            "event = 'discarded' AND error_code = 'UPSTREAM_ACCESS_DENIED'"
        )
        .await,
        1
    );

    // The IAM setup fixed: the same token now stops the execution.
    let answer = stop(&stack, &arn, "denied").await.unwrap();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
    assert!(!answer.replayed);

    // A role STS refuses to give: the same refusal, for the role's account.
    let other = execution_in(&stack, OTHER, "us-east-1").await;
    stack
        .admin
        .set_role(json!({"roleArn": ROLE, "refuse": true}))
        .await;
    for _ in 0..2 {
        let error = get(&stack, &other).await.unwrap_err();
        assert_eq!(error.code(), Code::FailedPrecondition, "{error:?}");
        let info = error.get_details_error_info().unwrap();
        assert_eq!(info.reason, "UPSTREAM_ACCESS_DENIED");
        assert_eq!(info.metadata["account"], OTHER);
        assert_eq!(info.metadata["region"], "us-east-1");
    }
    let error = stop(&stack, &other, "role-refused").await.unwrap_err();
    assert_eq!(
        error.get_details_error_info().unwrap().reason,
        "UPSTREAM_ACCESS_DENIED"
    );
    stack
        .admin
        .set_role(json!({"roleArn": ROLE, "externalId": EXTERNAL_ID}))
        .await;
    assert_eq!(
        get(&stack, &other).await.unwrap().pipeline_execution_arn,
        other
    );
    let answer = stop(&stack, &other, "role-refused").await.unwrap();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
}

/// At 1000 emulated seconds a real one, a role's hour-long credentials last 3.6 s: a watch
/// of 8 s outlives two of them, and goes on without an error on fresh ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assumed_roles_credentials_are_renewed_during_a_long_watch() {
    let accounts = accounts_file();
    let stack = stack(Backend::Sqlite, 1000.0, &accounts).await;
    let arn = execution_in(&stack, OTHER, "eu-west-1").await;
    stack.admin.reset_stats().await;
    let mut stream = stack
        .client
        .clone()
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let watched = tokio::time::timeout(Duration::from_secs(8), stream.message()).await;
    assert!(
        watched.is_err(),
        "the quiet stream ended or failed: {watched:?}"
    );
    let stats = stack.admin.stats_by_account().await;
    assert!(
        calls(&stats, OWN, "eu-west-1", "AssumeRole") >= 2,
        "renewed: {stats}"
    );
    assert!(
        calls(&stats, OTHER, "eu-west-1", "DescribePipelineExecution") >= 20,
        "polled throughout: {stats}"
    );

    // Still following the execution: a stop shows.
    stop(&stack, &arn, "after-renewal").await.unwrap();
    // A snapshot taken while the stop lands may come first (a poll in flight); the stop's
    // follows within a poll interval.
    let stopping = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let next = stream.message().await.unwrap().unwrap();
            if let Some(pb::watch_execution_response::Event::Execution(execution)) = next.event
                && execution.status() == pb::ExecutionStatus::Stopping
            {
                return execution;
            }
        }
    })
    .await
    .expect("the stop shows in the watch");
    assert_eq!(stopping.pipeline_execution_arn, arn);
}

/// The ids of `count` accounts from `first`, and an accounts file of the service's own account
/// and those, each reached through its role `arn:aws:iam::ID:role/pipeline-control`.
fn estate_of_roles(first: u64, count: u64) -> (Vec<String>, tempfile::NamedTempFile) {
    let ids: Vec<String> = (0..count).map(|i| format!("{:012}", first + i)).collect();
    let accounts = tempfile::NamedTempFile::new().unwrap();
    let mut text = format!("[[account]]\nid = \"{OWN}\"\n\n");
    for id in &ids {
        text.push_str(&format!(
            "[[account]]\nid = \"{id}\"\nrole_arn = \"{}\"\n\n",
            role_of(id)
        ));
    }
    std::fs::write(accounts.path(), text).unwrap();
    (ids, accounts)
}

fn role_of(id: &str) -> String {
    format!("arn:aws:iam::{id}:role/pipeline-control")
}

/// More accounts reached through roles than the SDK's shared cache of credentials holds (64):
/// each is assumed once, and the second call to each uses the credentials of the first.
#[tokio::test]
async fn each_role_of_a_large_estate_is_assumed_once() {
    const ACCOUNTS: u64 = 70;
    let (ids, accounts) = estate_of_roles(300_000_000_000, ACCOUNTS);
    // Real time: the credentials outlive the test.
    let path = accounts.path().to_path_buf();
    let stack = Stack::start(Backend::Sqlite, 1.0, |args| {
        args.sagemaker.accounts_file = Some(path);
    })
    .await;
    let missing = |id: &str| format!("arn:aws:sagemaker:us-east-1:{id}:pipeline/p/execution/none");
    for id in &ids {
        assert_eq!(
            get(&stack, &missing(id)).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let stats = stack.admin.stats_by_account().await;
    assert_eq!(
        calls(&stats, OWN, "us-east-1", "AssumeRole"),
        ACCOUNTS,
        "{stats}"
    );
    stack.admin.reset_stats().await;

    for id in &ids {
        assert_eq!(
            get(&stack, &missing(id)).await.unwrap_err().code(),
            Code::NotFound
        );
    }
    let stats = stack.admin.stats_by_account().await;
    assert_eq!(calls(&stats, OWN, "us-east-1", "AssumeRole"), 0, "{stats}");
    for id in &ids {
        assert_eq!(
            calls(&stats, id, "us-east-1", "DescribePipelineExecution"),
            1,
            "{id}: {stats}"
        );
    }
}

/// Readers of events queues in more accounts reached through roles than the SDK's shared cache
/// of credentials holds (64), and than `--upstream-max-connections` (64) lets requests go to
/// one endpoint at once: every reader long-polls at once, and each role is assumed once,
/// though every reader asks for its credentials again at each receive.
#[tokio::test]
async fn each_events_queue_of_a_large_estate_is_read_at_once_and_assumes_its_role_once() {
    const ACCOUNTS: u64 = 70;
    let (ids, accounts) = estate_of_roles(400_000_000_000, ACCOUNTS);

    let db = TestDb::new(Backend::Sqlite).await;
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let admin = Admin::new(&endpoint);
    // A queue in each account, made with that account's own credentials.
    let mut queues = Vec::new();
    for id in &ids {
        let keys = assume(&endpoint, &role_of(id)).await;
        let sqs = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
                .region(aws_sdk_sqs::config::Region::new("us-east-1"))
                .credentials_provider(keys)
                .endpoint_url(&endpoint)
                .build(),
        );
        let created = sqs
            .create_queue()
            .queue_name("events")
            .send()
            .await
            .unwrap();
        let url = created.queue_url().unwrap().to_string();
        assert!(url.contains(&format!("/{id}/")), "{url}");
        queues.push(url);
    }
    admin.reset_stats().await;

    let mut args = stack_args(&db, &endpoint);
    args.sagemaker.accounts_file = Some(accounts.path().to_path_buf());
    args.sagemaker.sqs_endpoint = Some(endpoint.clone());
    args.events_queue_urls = queues;
    let _app = TestApp::spawn(args).await;
    // Each reader's first receive answers at once; its second (a long poll) asks for the
    // credentials again right after. Within 15 s, less than a long poll's 20: a reader that
    // had to wait for another's poll to end (a ceiling on requests in flight) is late.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let stats = loop {
        let stats = admin.stats_by_account().await;
        if ids
            .iter()
            .all(|id| calls(&stats, id, "us-east-1", "ReceiveMessage") >= 2)
        {
            break stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the readers did not all receive twice within 15 s: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        calls(&stats, OWN, "us-east-1", "AssumeRole"),
        ACCOUNTS,
        "{stats}"
    );
}
