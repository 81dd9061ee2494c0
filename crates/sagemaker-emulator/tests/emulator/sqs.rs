//! SQS for callback consumers (raw awsJson1_0, as any SQS SDK sends it): DeleteMessageBatch,
//! long polling and redelivery, and consumers that see stops and callback steps through SQS.

use std::time::Duration;

use crate::support::{
    Admin, create_pipeline, execution_status, sagemaker_client, spawn_emulator, start_execution,
    token,
};
use serde_json::json;

/// One SQS call: its HTTP status, `x-amzn-query-error` header and JSON body. `region` signs
/// the call's credential scope (the emulator reads nothing else of the signature).
pub(crate) async fn sqs(
    endpoint: &str,
    region: &str,
    action: &str,
    body: serde_json::Value,
) -> (u16, Option<String>, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("{endpoint}/"))
        .header("Content-Type", "application/x-amz-json-1.0")
        .header("X-Amz-Target", format!("AmazonSQS.{action}"))
        .header(
            "Authorization",
            format!("AWS4-HMAC-SHA256 Credential=AKIDEMULATOR/20261201/{region}/sqs/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/x-amz-json-1.0"
    );
    let query_error = response
        .headers()
        .get("x-amzn-query-error")
        .map(|v| v.to_str().unwrap().to_string());
    (status, query_error, response.json().await.unwrap())
}

/// Receives with long polling and deletes what it got: the messages' bodies, parsed.
async fn receive_and_delete(endpoint: &str, queue_url: &str) -> Vec<serde_json::Value> {
    let (status, _, answer) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "WaitTimeSeconds": 10, "MaxNumberOfMessages": 10}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let mut bodies = Vec::new();
    for message in answer["Messages"].as_array().cloned().unwrap_or_default() {
        let md5 = message["MD5OfBody"].as_str().unwrap();
        assert_eq!(md5.len(), 32);
        assert!(md5.bytes().all(|b| b.is_ascii_hexdigit()));
        let (status, _, _) = sqs(
            endpoint,
            "us-east-1",
            "DeleteMessage",
            json!({"QueueUrl": queue_url, "ReceiptHandle": message["ReceiptHandle"]}),
        )
        .await;
        assert_eq!(status, 200);
        bodies.push(serde_json::from_str(message["Body"].as_str().unwrap()).unwrap());
    }
    bodies
}

#[tokio::test]
async fn delete_message_batch_deletes_each_entry_and_says_which_failed() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let (_, _, created) = sqs(
        endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "batch"}),
    )
    .await;
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();
    for i in 0..3 {
        let (status, _, _) = sqs(
            endpoint,
            "us-east-1",
            "SendMessage",
            json!({"QueueUrl": queue_url, "MessageBody": format!("m{i}")}),
        )
        .await;
        assert_eq!(status, 200);
    }
    let (_, _, received) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "VisibilityTimeout": 1}),
    )
    .await;
    let handles: Vec<String> = received["Messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ReceiptHandle"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(handles.len(), 3);
    let (status, _, answer) = sqs(
        endpoint,
        "us-east-1",
        "DeleteMessageBatch",
        json!({"QueueUrl": queue_url, "Entries": [
            {"Id": "a", "ReceiptHandle": handles[0]},
            {"Id": "b", "ReceiptHandle": handles[1]},
            {"Id": "bad", "ReceiptHandle": "not-a-handle"}]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["Successful"], json!([{"Id": "a"}, {"Id": "b"}]));
    assert_eq!(answer["Failed"][0]["Id"], "bad");
    assert_eq!(answer["Failed"][0]["Code"], "ReceiptHandleIsInvalid");
    assert_eq!(answer["Failed"][0]["SenderFault"], true);
    // Only the message not deleted comes back after its visibility timeout.
    let (_, _, again) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 10, "WaitTimeSeconds": 5}),
    )
    .await;
    let bodies: Vec<&str> = again["Messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["m2"]);
    // Whole-request refusals: none, more than ten, ids repeated or malformed.
    for (entries, query_error) in [
        (json!([]), "AWS.SimpleQueueService.EmptyBatchRequest;Sender"),
        (
            json!(
                (0..11)
                    .map(|i| json!({"Id": format!("e{i}"), "ReceiptHandle": "h"}))
                    .collect::<Vec<_>>()
            ),
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest;Sender",
        ),
        (
            json!([{"Id": "x", "ReceiptHandle": "h"}, {"Id": "x", "ReceiptHandle": "h"}]),
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct;Sender",
        ),
        (
            json!([{"Id": "no spaces", "ReceiptHandle": "h"}]),
            "AWS.SimpleQueueService.InvalidBatchEntryId;Sender",
        ),
    ] {
        let (status, error, _) = sqs(
            endpoint,
            "us-east-1",
            "DeleteMessageBatch",
            json!({"QueueUrl": queue_url, "Entries": entries}),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(error.as_deref(), Some(query_error));
    }
}

#[tokio::test]
async fn a_callback_consumer_on_sqs_sees_the_stop_and_answers_it() {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let (status, _, created) = sqs(
        endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "approvals"}),
    )
    .await;
    assert_eq!(status, 200, "{created}");
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();
    assert_eq!(queue_url, format!("{endpoint}/123456789012/approvals"));

    // The step names the queue as a definition for real SQS would: account and name.
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback",
                "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/approvals",
                "Arguments": {"model": {"Get": "Parameters.InputUri"}}}]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;

    let first = receive_and_delete(endpoint, &queue_url).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0]["pipelineExecutionArn"], arn.as_str());
    assert_eq!(first[0]["arguments"]["model"], "s3://bucket/input");
    assert!(first[0].get("status").is_none());
    let callback = first[0]["token"].as_str().unwrap().to_string();

    client
        .stop_pipeline_execution()
        .pipeline_execution_arn(&arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    let stopping = receive_and_delete(endpoint, &queue_url).await;
    assert_eq!(stopping.len(), 1, "{stopping:?}");
    assert_eq!(stopping[0]["status"], "Stopping");
    assert_eq!(stopping[0]["token"], callback.as_str());
    assert_eq!(execution_status(&client, &arn).await, "Stopping");

    client
        .send_pipeline_execution_step_success()
        .callback_token(&callback)
        .send()
        .await
        .unwrap();
    assert_eq!(execution_status(&client, &arn).await, "Stopped");
    let (_, _, rest) = sqs(
        endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert!(rest.get("Messages").is_none(), "{rest}");
    // The admin surface still shows both messages.
    assert_eq!(Admin::new(endpoint).callbacks(&arn).await.len(), 2);
}

#[tokio::test]
async fn sqs_long_polling_answers_as_soon_as_a_message_arrives_and_redelivers_after_the_visibility_timeout()
 {
    let emulator = spawn_emulator(1.0, None).await;
    let endpoint = emulator.endpoint_url.clone();
    let (_, _, created) = sqs(
        &endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "q"}),
    )
    .await;
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();

    let waiting = tokio::time::Instant::now();
    let receiver = tokio::spawn({
        let (endpoint, queue_url) = (endpoint.clone(), queue_url.clone());
        async move {
            sqs(
                &endpoint,
                "us-east-1",
                "ReceiveMessage",
                json!({"QueueUrl": queue_url, "WaitTimeSeconds": 20, "VisibilityTimeout": 1,
                       "AttributeNames": ["All"]}),
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _, sent) = sqs(
        &endpoint,
        "us-east-1",
        "SendMessage",
        json!({"QueueUrl": queue_url, "MessageBody": "hello"}),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["MD5OfMessageBody"], "5d41402abc4b2a76b9719d911017c592");
    let (status, _, received) = receiver.await.unwrap();
    let elapsed = waiting.elapsed();
    assert_eq!(status, 200);
    assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "waited {elapsed:?}");
    let message = &received["Messages"][0];
    assert_eq!(message["MessageId"], sent["MessageId"]);
    assert_eq!(message["Body"], "hello");
    assert_eq!(message["MD5OfBody"], sent["MD5OfMessageBody"]);
    assert_eq!(message["Attributes"]["ApproximateReceiveCount"], "1");

    // Hidden for its visibility timeout (1 s), then delivered again with a new handle.
    let (_, _, hidden) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert!(hidden.get("Messages").is_none(), "{hidden}");
    let (_, _, again) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "WaitTimeSeconds": 10, "AttributeNames": ["ApproximateReceiveCount"]}),
    )
    .await;
    let again = &again["Messages"][0];
    assert_eq!(again["MessageId"], sent["MessageId"]);
    assert_eq!(again["Attributes"]["ApproximateReceiveCount"], "2");
    assert_ne!(again["ReceiptHandle"], message["ReceiptHandle"]);
    let (status, _, _) = sqs(
        &endpoint,
        "us-east-1",
        "ChangeMessageVisibility",
        json!({"QueueUrl": queue_url, "ReceiptHandle": again["ReceiptHandle"], "VisibilityTimeout": 0}),
    )
    .await;
    assert_eq!(status, 200);
    let (_, _, visible) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert_eq!(visible["Messages"].as_array().unwrap().len(), 1);
    let (status, _, _) = sqs(
        &endpoint,
        "us-east-1",
        "PurgeQueue",
        json!({"QueueUrl": queue_url}),
    )
    .await;
    assert_eq!(status, 200);

    // Listing, errors, and queues per (account, region).
    let (_, _, listed) = sqs(
        &endpoint,
        "us-east-1",
        "ListQueues",
        json!({"QueueNamePrefix": "q"}),
    )
    .await;
    assert_eq!(listed["QueueUrls"], json!([queue_url]));
    let (_, _, found) = sqs(
        &endpoint,
        "us-east-1",
        "GetQueueUrl",
        json!({"QueueName": "q"}),
    )
    .await;
    assert_eq!(found["QueueUrl"], queue_url.as_str());
    let (status, query_error, missing) = sqs(
        &endpoint,
        "eu-west-1",
        "GetQueueUrl",
        json!({"QueueName": "q"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(missing["__type"], "com.amazonaws.sqs#QueueDoesNotExist");
    assert_eq!(
        query_error.as_deref(),
        Some("AWS.SimpleQueueService.NonExistentQueue;Sender")
    );
    let (status, query_error, too_many) = sqs(
        &endpoint,
        "us-east-1",
        "ReceiveMessage",
        json!({"QueueUrl": queue_url, "MaxNumberOfMessages": 11}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        too_many["__type"],
        "com.amazonaws.sqs#InvalidParameterValue"
    );
    assert_eq!(query_error.as_deref(), Some("InvalidParameterValue;Sender"));
    assert_eq!(
        too_many["message"],
        "Value 11 for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 and 10, if provided."
    );
    let (status, _, bad_handle) = sqs(
        &endpoint,
        "us-east-1",
        "DeleteMessage",
        json!({"QueueUrl": queue_url, "ReceiptHandle": "nonsense"}),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(
        bad_handle["__type"],
        "com.amazonaws.sqs#ReceiptHandleIsInvalid"
    );
}

#[tokio::test]
async fn a_consumer_waiting_only_on_sqs_gets_a_callback_step_that_starts_later() {
    // 20 emulated seconds of training take one real second.
    let emulator = spawn_emulator(20.0, None).await;
    let endpoint = &emulator.endpoint_url;
    let client = sagemaker_client(endpoint, 1);
    let pipeline = create_pipeline(
        &client,
        json!([
            {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 20}}},
            {"Name": "Approve", "Type": "Callback", "DependsOn": ["Train"],
             "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/later"}
        ]),
    )
    .await;
    let (_, _, created) = sqs(
        endpoint,
        "us-east-1",
        "CreateQueue",
        json!({"QueueName": "later"}),
    )
    .await;
    let queue_url = created["QueueUrl"].as_str().unwrap().to_string();
    let arn = start_execution(&client, &pipeline).await;

    // Nobody looks at the execution meanwhile: the receive alone brings the message in.
    let waiting = tokio::time::Instant::now();
    let messages = receive_and_delete(endpoint, &queue_url).await;
    let elapsed = waiting.elapsed();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["pipelineExecutionArn"], arn.as_str());
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}
