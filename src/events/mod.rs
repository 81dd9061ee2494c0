//! Push from EventBridge: consumers of the SQS queues (`--events-queue-url`) that an
//! EventBridge rule fills with SageMaker's execution and step status changes.
//!
//! An event is a wake-up, never the truth: the execution's poller (on whichever replica holds
//! it) reads SageMaker at once, and what it reads is what watchers get. So events that arrive
//! twice, late or out of order change nothing, and a lost one costs only the delay until the
//! next poll. Events of executions nobody watches are dropped once their envelope is read.
//!
//! Each queue has one consumer per replica (any replica may take any message): long polls of
//! up to 10 messages, the handled ones deleted in one batch; a message whose wake-up could not
//! be passed on (the database did not answer) is left for redelivery after its visibility
//! timeout; a malformed one is deleted and counted, never retried. While every queue answers,
//! events flow and pollers read at `--poll-fallback-interval`; when one fails, they go back to
//! `--poll-interval` until it answers again.

use std::{sync::Arc, time::Duration};

use serde_json::Value;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{domain::ExecutionArn, estate::Estate, metrics::Metrics, watch::Watcher};

pub(crate) mod push;

pub(crate) use push::{Push, Queue};

/// SageMaker's two detail types, as EventBridge names them.
const DETAIL_TYPES: [&str; 2] = [
    "SageMaker Model Building Pipeline Execution Status Change",
    "SageMaker Model Building Pipeline Execution Step Status Change",
];

/// How a message's visibility is set while it is handled (seconds).
const VISIBILITY_TIMEOUT: i32 = 30;
/// The long poll of each ReceiveMessage (seconds; SQS's longest).
const WAIT_TIME: i32 = 20;

/// The execution an EventBridge message from SageMaker is about.
pub(crate) fn execution_of(body: &str) -> Result<ExecutionArn, &'static str> {
    let event: Value = serde_json::from_str(body).map_err(|_| "not JSON")?;
    if event["source"] != "aws.sagemaker" {
        return Err("not from aws.sagemaker");
    }
    let kind = event["detail-type"].as_str().ok_or("no detail-type")?;
    if !DETAIL_TYPES.contains(&kind) {
        return Err("not a pipeline execution status change");
    }
    let arn = event["detail"]["pipelineExecutionArn"]
        .as_str()
        .ok_or("no detail.pipelineExecutionArn")?;
    ExecutionArn::parse(arn).map_err(|_| "not a pipeline execution ARN")
}

/// Starts one consumer per queue on `tasks` (until `stopping`).
pub(crate) fn start(
    queues: Vec<Queue>,
    push: &Arc<Push>,
    estate: &Arc<Estate>,
    watcher: &Arc<Watcher>,
    metrics: &Arc<Metrics>,
    stopping: &CancellationToken,
    tasks: &TaskTracker,
) {
    for (index, queue) in queues.into_iter().enumerate() {
        tracing::info!(queue = %queue.url, account = %queue.account, region = %queue.region, "reading SageMaker's events");
        tasks.spawn(consume(
            queue,
            index,
            push.clone(),
            estate.clone(),
            watcher.clone(),
            metrics.clone(),
            stopping.clone(),
        ));
    }
}

/// What came of one message.
enum Handled {
    /// Deleted: passed on, of no use, or malformed.
    Done,
    /// Left for redelivery: the wake-up could not be passed on.
    Again,
}

async fn consume(
    queue: Queue,
    index: usize,
    push: Arc<Push>,
    estate: Arc<Estate>,
    watcher: Arc<Watcher>,
    metrics: Arc<Metrics>,
    stopping: CancellationToken,
) {
    let sqs = estate.sqs(&queue.account, &queue.region).await;
    let mut backoff = Duration::from_secs(1);
    // The first receive does not wait, so whether events flow is known at once.
    let mut wait = 0;
    loop {
        let received = tokio::select! {
            received = sqs
                .receive_message()
                .queue_url(&queue.url)
                .max_number_of_messages(10)
                .wait_time_seconds(std::mem::replace(&mut wait, WAIT_TIME))
                .visibility_timeout(VISIBILITY_TIMEOUT)
                .send() => received,
            () = stopping.cancelled() => return,
        };
        let output = match received {
            Ok(output) => output,
            Err(error) => {
                metrics.events_received("error", 1);
                if push.set(index, false) {
                    metrics.set_events_flowing(push.flowing());
                    tracing::warn!(queue = %queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "the events queue failed: polling at --poll-interval again");
                    watcher.interval_changed();
                }
                tokio::select! {
                    () = tokio::time::sleep(crate::jitter::jittered(backoff, 0.2)) => {}
                    () = stopping.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        if push.set(index, true) {
            metrics.set_events_flowing(push.flowing());
            tracing::info!(queue = %queue.url, "events flow: polling at --poll-fallback-interval");
            watcher.interval_changed();
        }
        let mut done = Vec::new();
        for message in output.messages() {
            let handled = match execution_of(message.body().unwrap_or_default()) {
                Ok(arn) => match watcher.wake(arn.as_str()).await {
                    Some(true) => {
                        metrics.events_received("watched", 1);
                        Handled::Done
                    }
                    Some(false) => {
                        metrics.events_received("unwatched", 1);
                        Handled::Done
                    }
                    None => {
                        metrics.events_received("deferred", 1);
                        Handled::Again
                    }
                },
                Err(why) => {
                    tracing::debug!(queue = %queue.url, why, "a malformed event: deleted");
                    metrics.events_received("malformed", 1);
                    Handled::Done
                }
            };
            if let (Handled::Done, Some(handle)) = (handled, message.receipt_handle()) {
                done.push(handle.to_string());
            }
        }
        if done.is_empty() {
            continue;
        }
        let mut batch = sqs.delete_message_batch().queue_url(&queue.url);
        for (i, handle) in done.iter().enumerate() {
            match aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(handle)
                .build()
            {
                Ok(entry) => batch = batch.entries(entry),
                Err(error) => tracing::debug!(%error, "cannot make a delete entry"),
            }
        }
        // What is not deleted comes back after the visibility timeout: a second wake-up
        // harms nothing.
        match batch.send().await {
            Ok(output) if !output.failed().is_empty() => {
                let first = &output.failed()[0];
                tracing::warn!(queue = %queue.url, failed = output.failed().len(), code = first.code(), message = first.message().unwrap_or_default(), "cannot delete some handled events");
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(queue = %queue.url, error = %aws_sdk_sqs::error::DisplayErrorContext(&error), "cannot delete handled events");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_sagemaker_pipeline_events_name_an_execution() {
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefabcdef";
        let event = |source: &str, kind: &str, arn: &str| {
            serde_json::json!({"version": "0", "source": source, "detail-type": kind,
                "detail": {"pipelineExecutionArn": arn}})
            .to_string()
        };
        assert_eq!(
            execution_of(&event("aws.sagemaker", DETAIL_TYPES[0], arn))
                .unwrap()
                .as_str(),
            arn
        );
        assert!(execution_of(&event("aws.sagemaker", DETAIL_TYPES[1], arn)).is_ok());
        assert_eq!(execution_of("{"), Err("not JSON"));
        assert!(execution_of(&event("aws.ec2", DETAIL_TYPES[0], arn)).is_err());
        assert!(
            execution_of(&event(
                "aws.sagemaker",
                "SageMaker Training Job State Change",
                arn
            ))
            .is_err()
        );
        assert!(execution_of(&event("aws.sagemaker", DETAIL_TYPES[0], "arn:nope")).is_err());
    }
}
