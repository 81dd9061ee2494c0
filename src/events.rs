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

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::{domain::ExecutionArn, estate::Estate, metrics::Metrics, watch::Watcher};

/// SageMaker's two detail types, as EventBridge names them.
const DETAIL_TYPES: [&str; 2] = [
    "SageMaker Model Building Pipeline Execution Status Change",
    "SageMaker Model Building Pipeline Execution Step Status Change",
];

/// How a message's visibility is set while it is handled (seconds).
const VISIBILITY_TIMEOUT: i32 = 30;
/// The long poll of each ReceiveMessage (seconds; SQS's longest).
const WAIT_TIME: i32 = 20;

/// Whether events flow: for an (account, region), whether a queue of theirs answered its
/// last receive; overall, whether every queue did.
#[derive(Debug)]
pub(crate) struct Push {
    queues: Vec<(Queue, AtomicBool)>,
}

impl Push {
    /// The consumers of `queues`, none of which has answered yet (so pollers start at the
    /// normal interval).
    pub(crate) fn new(queues: &[Queue]) -> Arc<Self> {
        Arc::new(Self {
            queues: queues
                .iter()
                .map(|queue| (queue.clone(), AtomicBool::new(false)))
                .collect(),
        })
    }

    /// Every queue answered its last receive (and there is one).
    pub(crate) fn flowing(&self) -> bool {
        !self.queues.is_empty() && self.queues.iter().all(|(_, q)| q.load(Ordering::Relaxed))
    }

    /// The events of executions of `account` in `region` flow: a queue of theirs answers.
    pub(crate) fn flowing_for(&self, account: &str, region: &str) -> bool {
        self.queues.iter().any(|(queue, healthy)| {
            queue.account == account && queue.region == region && healthy.load(Ordering::Relaxed)
        })
    }

    /// Records how queue `index` answered; returns whether that changed it.
    fn set(&self, index: usize, healthy: bool) -> bool {
        self.queues
            .get(index)
            .is_some_and(|(_, queue)| queue.swap(healthy, Ordering::Relaxed) != healthy)
    }
}

/// The queues `urls` name (a URL that cannot be a queue's stops the start).
pub(crate) fn queues(urls: &[String], default_region: &str) -> anyhow::Result<Vec<Queue>> {
    urls.iter()
        .map(|url| {
            Queue::parse(url, default_region)
                .map_err(anyhow::Error::msg)
                .context("--events-queue-url")
        })
        .collect()
}

/// A queue to read: its URL, and the account and region whose SQS holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Queue {
    pub(crate) url: String,
    pub(crate) account: String,
    pub(crate) region: String,
}

impl Queue {
    /// `https://sqs.REGION.amazonaws.com/ACCOUNT/NAME` (or the legacy
    /// `https://REGION.queue.amazonaws.com/...`); any other host (an emulator, a VPC endpoint)
    /// is read in `default_region`.
    pub(crate) fn parse(url: &str, default_region: &str) -> Result<Self, String> {
        let parsed: http::Uri = url
            .parse()
            .map_err(|e| format!("events queue URL {url:?}: {e}"))?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) {
            return Err(format!("events queue URL {url:?} must start with https://"));
        }
        let host = parsed.host().unwrap_or_default();
        let region = host
            .strip_prefix("sqs.")
            .and_then(|rest| rest.split('.').next())
            .or_else(|| {
                host.strip_suffix(".queue.amazonaws.com")
                    .filter(|r| !r.contains('.'))
            })
            .filter(|r| !r.is_empty())
            .unwrap_or(default_region)
            .to_string();
        let segments: Vec<&str> = parsed.path().split('/').filter(|s| !s.is_empty()).collect();
        match segments.as_slice() {
            [account, name]
                if account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && !name.is_empty() =>
            {
                Ok(Self {
                    url: url.to_string(),
                    account: (*account).to_string(),
                    region,
                })
            }
            _ => Err(format!(
                "events queue URL {url:?} must end in /ACCOUNT/QUEUE_NAME (a 12-digit account)"
            )),
        }
    }
}

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

/// Starts one consumer per queue (until `stopping`).
pub(crate) fn start(
    queues: Vec<Queue>,
    push: &Arc<Push>,
    estate: &Arc<Estate>,
    watcher: &Arc<Watcher>,
    metrics: &Arc<Metrics>,
    stopping: &CancellationToken,
) {
    for (index, queue) in queues.into_iter().enumerate() {
        tracing::info!(queue = %queue.url, account = %queue.account, region = %queue.region, "reading SageMaker's events");
        tokio::spawn(consume(
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
    fn queue_urls_give_account_and_region() {
        let queue = Queue::parse(
            "https://sqs.eu-west-1.amazonaws.com/123456789012/events",
            "us-east-1",
        )
        .unwrap();
        assert_eq!(
            (queue.account.as_str(), queue.region.as_str()),
            ("123456789012", "eu-west-1")
        );
        let legacy = Queue::parse(
            "https://ap-south-1.queue.amazonaws.com/123456789012/e",
            "us-east-1",
        )
        .unwrap();
        assert_eq!(legacy.region, "ap-south-1");
        let local = Queue::parse("http://127.0.0.1:9380/111111111111/events", "us-west-2").unwrap();
        assert_eq!(
            (local.account.as_str(), local.region.as_str()),
            ("111111111111", "us-west-2")
        );
        for bad in [
            "sqs.eu-west-1.amazonaws.com/123456789012/events",
            "https://sqs.eu-west-1.amazonaws.com/events",
            "https://sqs.eu-west-1.amazonaws.com/12345/events",
            "ftp://host/123456789012/events",
        ] {
            assert!(Queue::parse(bad, "us-east-1").is_err(), "{bad}");
        }
    }

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

    #[test]
    fn events_flow_for_the_account_and_region_of_a_queue_that_answers() {
        let parsed = queues(
            &[
                "https://sqs.eu-west-1.amazonaws.com/111111111111/events".to_string(),
                "https://sqs.us-east-1.amazonaws.com/222222222222/events".to_string(),
            ],
            "us-east-1",
        )
        .unwrap();
        let push = Push::new(&parsed);
        assert!(!push.flowing() && !push.flowing_for("111111111111", "eu-west-1"));
        assert!(push.set(0, true));
        assert!(!push.set(0, true));
        assert!(push.flowing_for("111111111111", "eu-west-1"));
        assert!(!push.flowing_for("111111111111", "us-east-1"));
        assert!(!push.flowing_for("222222222222", "us-east-1"));
        assert!(!push.flowing());
        assert!(push.set(1, true));
        assert!(push.flowing());
        assert!(push.set(1, false));
        assert!(!push.flowing() && push.flowing_for("111111111111", "eu-west-1"));
        assert!(!Push::new(&[]).flowing());
        assert!(queues(&["ftp://x/1/q".to_string()], "us-east-1").is_err());
    }
}
