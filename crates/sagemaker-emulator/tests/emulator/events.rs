//! EventBridge events on SQS (read with raw awsJson1_0, as any SQS SDK sends it): every status
//! change in EventBridge's envelope, one events queue per account and region, and event faults
//! (duplicate, drop, delay, reorder).

use std::{collections::HashSet, time::Duration};

use crate::{
    accounts::{DEFAULT_ACCOUNT, ROLE_ACCOUNT},
    pipelines::create_named,
    sqs::sqs,
    step,
    support::{
        Admin, all_steps, assume, create_pipeline, sagemaker_client, sagemaker_client_in,
        spawn_emulator, start_execution, token, wait_for_status,
    },
};
use serde_json::json;

/// Receives (long polling one second at a time) and deletes until `want` messages came or 30
/// real seconds passed: each message's body, parsed, and when it was received.
async fn receive_events(
    endpoint: &str,
    region: &str,
    queue_url: &str,
    want: usize,
) -> Vec<(serde_json::Value, tokio::time::Instant)> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want && tokio::time::Instant::now() < deadline {
        let (status, _, answer) = sqs(
            endpoint,
            region,
            "ReceiveMessage",
            json!({"QueueUrl": queue_url, "WaitTimeSeconds": 1, "MaxNumberOfMessages": 10}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        let at = tokio::time::Instant::now();
        for message in answer["Messages"].as_array().cloned().unwrap_or_default() {
            let (status, _, _) = sqs(
                endpoint,
                region,
                "DeleteMessage",
                json!({"QueueUrl": queue_url, "ReceiptHandle": message["ReceiptHandle"]}),
            )
            .await;
            assert_eq!(status, 200);
            out.push((
                serde_json::from_str(message["Body"].as_str().unwrap()).unwrap(),
                at,
            ));
        }
    }
    out
}

/// The bodies of what `receive_events` got.
fn bodies(received: Vec<(serde_json::Value, tokio::time::Instant)>) -> Vec<serde_json::Value> {
    received.into_iter().map(|(body, _)| body).collect()
}

/// Nothing more arrives on the queue within a second.
async fn assert_no_more_events(endpoint: &str, region: &str, queue_url: &str) {
    let (_, _, rest) = sqs(
        endpoint,
        region,
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "WaitTimeSeconds": 1, "MaxNumberOfMessages": 10}),
    )
    .await;
    assert!(rest.get("Messages").is_none(), "{rest}");
}

const EXECUTION_CHANGE: &str = "SageMaker Model Building Pipeline Execution Status Change";
const STEP_CHANGE: &str = "SageMaker Model Building Pipeline Execution Step Status Change";

/// An event's (execution or step name, previous status, current status).
fn change(event: &serde_json::Value) -> (String, Option<String>, String) {
    let detail = &event["detail"];
    let text = |v: &serde_json::Value| v.as_str().map(str::to_string);
    if event["detail-type"] == EXECUTION_CHANGE {
        (
            "execution".into(),
            text(&detail["previousPipelineExecutionStatus"]),
            text(&detail["currentPipelineExecutionStatus"]).unwrap(),
        )
    } else {
        assert_eq!(event["detail-type"], STEP_CHANGE, "{event}");
        (
            text(&detail["stepName"]).unwrap(),
            text(&detail["previousStepStatus"]),
            text(&detail["currentStepStatus"]).unwrap(),
        )
    }
}

/// The statuses one execution or step went through, as its events tell them, each event's
/// previous status being the one before.
fn statuses_of(events: &[serde_json::Value], name: &str) -> Vec<String> {
    let mut statuses: Vec<String> = Vec::new();
    for (of, previous, current) in events.iter().map(change) {
        if of == name {
            assert_eq!(previous.as_ref(), statuses.last(), "{name}: {events:#?}");
            statuses.push(current);
        }
    }
    statuses
}

/// `2026-12-01T09:00:00Z`: RFC 3339 in UTC, whole seconds, as EventBridge writes times.
fn assert_rfc3339(text: &serde_json::Value) -> i64 {
    let text = text
        .as_str()
        .unwrap_or_else(|| panic!("not a time: {text}"));
    let shape: String = text
        .chars()
        .map(|c| if c.is_ascii_digit() { 'd' } else { c })
        .collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:ddZ", "{text}");
    aws_sdk_sagemaker::primitives::DateTime::from_str(
        text,
        aws_sdk_sagemaker::primitives::DateTimeFormat::DateTime,
    )
    .unwrap()
    .secs()
}

/// `315c1398-40ff-a850-213b-158f73e60175`.
fn assert_uuid_shaped(id: &serde_json::Value) {
    let id = id.as_str().unwrap();
    let groups: Vec<usize> = id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
    assert!(
        id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
        "{id}"
    );
}

#[tokio::test]
async fn every_status_change_reaches_the_events_queue_in_eventbridges_envelope_without_anybody_looking()
 {
    // 20 emulated seconds of training take one real second.
    let emulator = spawn_emulator(20.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let admin = Admin::new(endpoint);
    let target = admin
        .add_events_queue(json!({"queueName": "pipeline-events"}))
        .await;
    assert_eq!(
        target,
        json!({"queueName": "pipeline-events", "account": DEFAULT_ACCOUNT, "region": "us-east-1"})
    );
    assert_eq!(admin.events_queues().await, json!([target]));

    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Approve", "Type": "Callback",
             "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/approvals"},
            {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 20}}},
            {"Name": "Evaluate", "Type": "Processing", "DependsOn": ["Train"],
             "Arguments": {"Emulator": {"DurationSeconds": 3600}}}
        ]),
    )
    .await;
    let arn = client
        .start_pipeline_execution()
        .pipeline_name(&pipeline)
        .pipeline_execution_display_name("nightly-1")
        .pipeline_execution_description("the nightly run")
        .client_request_token(token())
        .send()
        .await
        .unwrap()
        .pipeline_execution_arn()
        .unwrap()
        .to_string();
    admin.reset_stats().await;

    // The queue was made on first use.
    let (status, _, found) = sqs(
        endpoint,
        "us-east-1",
        "GetQueueUrl",
        json!({"QueueName": "pipeline-events"}),
    )
    .await;
    assert_eq!(status, 200, "{found}");
    let queue_url = found["QueueUrl"].as_str().unwrap().to_string();

    // The start, then Train's end and Evaluate's start a real second later: nobody asks
    // SageMaker about the execution meanwhile.
    let mut events = bodies(receive_events(endpoint, "us-east-1", &queue_url, 8).await);
    assert_eq!(events.len(), 8, "{events:#?}");
    assert_eq!(admin.calls("DescribePipelineExecution").await, 0);
    assert_eq!(admin.calls("ListPipelineExecutionSteps").await, 0);
    assert_eq!(
        events.iter().map(change).collect::<Vec<_>>()[5..],
        [
            ("Train".into(), Some("Executing".into()), "Succeeded".into()),
            ("Evaluate".into(), None, "Starting".into()),
            (
                "Evaluate".into(),
                Some("Starting".into()),
                "Executing".into()
            ),
        ]
    );

    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    let callback = emulator.callback_tokens(&arn).unwrap()[0].1.clone();
    client
        .send_pipeline_execution_step_success()
        .callback_token(&callback)
        .send()
        .await
        .unwrap();
    events.extend(bodies(
        receive_events(endpoint, "us-east-1", &queue_url, 6).await,
    ));
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;

    // What arrived is what the execution generated, in order.
    assert_eq!(events, admin.events(&arn).await);
    assert_eq!(
        statuses_of(&events, "execution"),
        ["Executing", "Stopping", "Stopped"]
    );
    assert_eq!(
        statuses_of(&events, "Approve"),
        ["Starting", "Executing", "Stopping", "Stopped"]
    );
    assert_eq!(
        statuses_of(&events, "Train"),
        ["Starting", "Executing", "Succeeded"]
    );
    assert_eq!(
        statuses_of(&events, "Evaluate"),
        ["Starting", "Executing", "Stopping", "Stopped"]
    );

    let described = client
        .describe_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .send()
        .await
        .unwrap();
    let pipeline_arn = described.pipeline_arn().unwrap().to_string();
    let created = described.creation_time().unwrap().secs();
    let ended = described.last_modified_time().unwrap().secs();
    let steps = all_steps(&client, &arn).await;
    let training_job = step(&steps, "Train")
        .metadata()
        .and_then(|m| m.training_job())
        .and_then(|j| j.arn())
        .unwrap()
        .to_string();
    let processing_job = step(&steps, "Evaluate")
        .metadata()
        .and_then(|m| m.processing_job())
        .and_then(|j| j.arn())
        .unwrap()
        .to_string();

    let mut ids = HashSet::new();
    let mut last_time = 0;
    for event in &events {
        assert_eq!(event["version"], "0");
        assert_eq!(event["source"], "aws.sagemaker");
        assert_eq!(event["account"], DEFAULT_ACCOUNT);
        assert_eq!(event["region"], "us-east-1");
        assert_eq!(event["resources"], json!([pipeline_arn, arn]));
        assert_uuid_shaped(&event["id"]);
        assert!(ids.insert(event["id"].as_str().unwrap().to_string()));
        let time = assert_rfc3339(&event["time"]);
        assert!(time >= last_time, "{events:#?}");
        last_time = time;
        let detail = &event["detail"];
        assert_eq!(detail["pipelineExecutionArn"], arn.as_str());
        assert!(detail.get("failureReason").is_none(), "{event}");
        if event["detail-type"] == EXECUTION_CHANGE {
            assert_eq!(detail["pipelineArn"], pipeline_arn.as_str());
            assert_eq!(detail["pipelineExecutionDisplayName"], "nightly-1");
            assert_eq!(detail["pipelineExecutionDescription"], "the nightly run");
            assert_eq!(assert_rfc3339(&detail["executionStartTime"]), created);
            let over = detail["currentPipelineExecutionStatus"] == "Stopped";
            assert_eq!(detail.get("executionEndTime").is_some(), over, "{event}");
        } else {
            let (name, kind, metadata) = (
                detail["stepName"].as_str().unwrap(),
                &detail["stepType"],
                &detail["metadata"],
            );
            match name {
                "Approve" => {
                    assert_eq!(*kind, "Callback");
                    assert_eq!(
                        metadata["Callback"]["SqsQueueUrl"],
                        "https://sqs.us-east-1.amazonaws.com/123456789012/approvals"
                    );
                    // The token is the step's from the moment it executes.
                    let token = &metadata["Callback"]["CallbackToken"];
                    if detail["currentStepStatus"] == "Starting" {
                        assert!(token.is_null(), "{event}");
                    } else {
                        assert_eq!(*token, callback.as_str(), "{event}");
                    }
                }
                "Train" | "Evaluate" => {
                    let (step_type, job) = if name == "Train" {
                        ("Training", ("TrainingJob", &training_job))
                    } else {
                        ("Processing", ("ProcessingJob", &processing_job))
                    };
                    assert_eq!(*kind, step_type);
                    if detail["currentStepStatus"] == "Starting" {
                        assert_eq!(*metadata, json!({}), "no job yet: {event}");
                    } else {
                        assert_eq!(metadata[job.0]["Arn"], job.1.as_str(), "{event}");
                    }
                }
                other => panic!("an event of step {other}"),
            }
        }
    }
    let first = &events[0];
    assert_eq!(first["detail-type"], EXECUTION_CHANGE);
    assert!(
        first["detail"]
            .get("previousPipelineExecutionStatus")
            .is_none()
    );
    assert_eq!(assert_rfc3339(&first["time"]), created);
    let stopped = events.last().unwrap();
    assert_eq!(
        stopped["detail"]["currentPipelineExecutionStatus"],
        "Stopped"
    );
    assert_eq!(assert_rfc3339(&stopped["time"]), ended);
    assert_eq!(
        assert_rfc3339(&stopped["detail"]["executionEndTime"]),
        ended
    );
    // Train ended 20 emulated seconds after the start.
    let train_end = events
        .iter()
        .find(|e| change(e) == ("Train".into(), Some("Executing".into()), "Succeeded".into()))
        .unwrap();
    assert_eq!(assert_rfc3339(&train_end["time"]) - created, 20);
}

#[tokio::test]
async fn each_events_queue_gets_the_events_of_its_own_account_and_region_only() {
    // `--events-queue` names queues of the default account and region.
    let options = sagemaker_emulator::EmulatorOptions {
        time_scale: 1000.0,
        events_queues: vec!["default-events".into()],
        ..Default::default()
    };
    let emulator = sagemaker_emulator::EmulatorServer::bind(
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        &options,
    )
    .await
    .unwrap()
    .spawn();
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let eu = admin
        .add_events_queue(
            json!({"queueName": "eu-events", "account": ROLE_ACCOUNT, "region": "eu-west-1"}),
        )
        .await;
    assert_eq!(
        admin.events_queues().await,
        json!([
            eu,
            {"queueName": "default-events", "account": DEFAULT_ACCOUNT, "region": "us-east-1"}
        ])
    );
    for (bad, why) in [
        (json!({"queueName": "bad.name"}), "queueName"),
        (json!({"queueName": "q", "account": "12345"}), "account"),
        (
            json!({"queueName": "q", "region": "Not A Region"}),
            "region",
        ),
    ] {
        let (status, answer) = admin
            .call(reqwest::Method::PUT, "events/queues", Some(bad))
            .await;
        assert_eq!(status, 400, "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(why), "{answer}");
    }

    let role = assume(endpoint, "arn:aws:iam::111111111111:role/Deployer").await;
    let default_client = sagemaker_client(endpoint, 1);
    let eu_client = sagemaker_client_in(endpoint, "eu-west-1", role.clone(), 1);
    // The role's account in us-east-1 has no queue for its events.
    let unwatched_client = sagemaker_client_in(endpoint, "us-east-1", role, 1);
    let train = json!({"Version": "2020-12-01", "Steps": [
        {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 60}}}
    ]})
    .to_string();
    let mut arns = Vec::new();
    for client in [&default_client, &eu_client, &unwatched_client] {
        create_named(client, "shared", &train).await;
        arns.push(start_execution(client, "shared").await);
    }
    let [default_arn, eu_arn, unwatched_arn] = arns.as_slice() else {
        unreachable!()
    };

    let default_url = format!("{endpoint}/{DEFAULT_ACCOUNT}/default-events");
    let eu_url = format!("{endpoint}/{ROLE_ACCOUNT}/eu-events");
    for (region, url, account, arn) in [
        ("us-east-1", &default_url, DEFAULT_ACCOUNT, default_arn),
        ("eu-west-1", &eu_url, ROLE_ACCOUNT, eu_arn),
    ] {
        // Executing, Train Starting, Executing and Succeeded, Succeeded: 60 emulated
        // seconds after the start, which nobody looks at.
        let events = bodies(receive_events(endpoint, region, url, 5).await);
        assert_no_more_events(endpoint, region, url).await;
        assert_eq!(events.len(), 5, "{events:#?}");
        assert_eq!(
            statuses_of(&events, "execution"),
            ["Executing", "Succeeded"]
        );
        for event in &events {
            assert_eq!(event["account"], account);
            assert_eq!(event["region"], region);
            assert_eq!(event["detail"]["pipelineExecutionArn"], arn.as_str());
            assert!(
                event["resources"][0]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("arn:aws:sagemaker:{region}:{account}:pipeline/"))
            );
        }
        assert_eq!(events, admin.events(arn).await);
    }
    // The unwatched execution made its events all the same; no queue got them.
    wait_for_status(&unwatched_client, unwatched_arn, "Succeeded").await;
    let unwatched = admin.events(unwatched_arn).await;
    assert_eq!(unwatched.len(), 5);
    assert_eq!(unwatched[0]["account"], ROLE_ACCOUNT);
    assert_eq!(unwatched[0]["region"], "us-east-1");
    assert_no_more_events(endpoint, "us-east-1", &default_url).await;
    assert_no_more_events(endpoint, "eu-west-1", &eu_url).await;

    // Without targets nothing is sent, and the events are still kept.
    let (status, _) = admin
        .call(reqwest::Method::DELETE, "events/queues", None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(admin.events_queues().await, json!([]));
    let later = start_execution(&default_client, "shared").await;
    wait_for_status(&default_client, &later, "Succeeded").await;
    assert_eq!(admin.events(&later).await.len(), 5);
    assert_no_more_events(endpoint, "us-east-1", &default_url).await;
    let (status, _) = admin
        .call(
            reqwest::Method::GET,
            "events?pipelineExecutionArn=arn:aws:sagemaker:us-east-1:123456789012:pipeline/x/execution/none",
            None,
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn event_faults_duplicate_drop_delay_and_reorder_what_reaches_the_queue() {
    // Nothing ends on its own: every event comes from a start or a stop.
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let admin = Admin::new(endpoint);
    admin.add_events_queue(json!({"queueName": "faulty"})).await;
    let queue_url = format!("{endpoint}/{DEFAULT_ACCOUNT}/faulty");
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Train", "Type": "Training",
                "Arguments": {"Emulator": {"DurationSeconds": 36000}}}]),
    )
    .await;
    // Starts and stops an execution: its seven events (Executing, Train Starting and
    // Executing; Stopping, Train Stopping and Stopped, Stopped) as generated, ids only.
    let run = || async {
        let arn = start_execution(&client, &pipeline).await;
        client
            .stop_pipeline_execution()
            .pipeline_execution_arn(&arn)
            .client_request_token(token())
            .send()
            .await
            .unwrap();
        let generated: Vec<String> = admin
            .events(&arn)
            .await
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(generated.len(), 7);
        generated
    };
    let ids = |received: Vec<(serde_json::Value, tokio::time::Instant)>| -> Vec<String> {
        received
            .iter()
            .map(|(e, _)| e["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Without faults: each once, in order.
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 7).await);
    assert_eq!(received, generated);

    // A duplicate arrives twice, with the same id.
    admin
        .set_event_faults(json!({"duplicate": {"count": 1}}))
        .await;
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 8).await);
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;
    let mut expected = generated.clone();
    expected.insert(0, generated[0].clone());
    assert_eq!(received, expected);
    let (_, left) = admin
        .call(reqwest::Method::GET, "events/faults", None)
        .await;
    assert_eq!(left, json!({"duplicate": {"count": 0}}));

    // A dropped one never does.
    admin.set_event_faults(json!({"drop": {"count": 2}})).await;
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 5).await);
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;
    assert_eq!(received, generated[2..]);
    admin
        .set_event_faults(json!({"drop": {"fraction": 1.0}}))
        .await;
    run().await;
    assert_no_more_events(endpoint, "us-east-1", &queue_url).await;

    // A delayed one arrives no sooner than the delay after its change.
    admin.set_event_faults(json!({"delayMs": 1500})).await;
    let changed = tokio::time::Instant::now();
    let generated = run().await;
    let (_, _, early) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10}),
    )
    .await;
    assert!(early.get("Messages").is_none(), "{early}");
    let received = receive_events(endpoint, "us-east-1", &queue_url, 7).await;
    for (_, at) in &received {
        let waited = at.duration_since(changed);
        assert!(waited >= Duration::from_millis(1500), "{waited:?}");
    }
    assert_eq!(ids(received), generated);

    // Reordered: consecutive events swapped pair by pair, in the start's three and the
    // stop's four.
    admin.set_event_faults(json!({"reorder": true})).await;
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 7).await);
    assert_ne!(received, generated);
    let swapped: Vec<String> = [1, 0, 2, 4, 3, 6, 5]
        .into_iter()
        .map(|i| generated[i].clone())
        .collect();
    assert_eq!(received, swapped);

    // Malformed faults are refused; cleared, events flow as generated again.
    for bad in [
        json!({"drop": {"count": 1, "fraction": 0.5}}),
        json!({"duplicate": {"fraction": 2.0}}),
        json!({"delayMs": 1_000_000}),
    ] {
        let (status, answer) = admin
            .call(reqwest::Method::PUT, "events/faults", Some(bad))
            .await;
        assert_eq!(status, 400, "{answer}");
    }
    admin.clear_event_faults().await;
    let (_, none) = admin
        .call(reqwest::Method::GET, "events/faults", None)
        .await;
    assert_eq!(none, json!({}));
    let generated = run().await;
    let received = ids(receive_events(endpoint, "us-east-1", &queue_url, 7).await);
    assert_eq!(received, generated);
}
