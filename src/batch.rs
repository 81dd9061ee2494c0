//! StopExecutions: stop every `Executing` execution of one pipeline at once.
//!
//! A batch first selects its executions (ListPipelineExecutions, newest first, within the
//! created filters and the limit) and records that selection under the batch's key, so that
//! the same batch retried (a dropped stream, a crash, another replica) works on the same
//! executions, not on whatever is Executing by then. Each execution is then stopped as
//! StopExecution would stop it, with a key of its own derived from the batch's, so a retry
//! replays what was done and carries out the rest; each stop is claimed and completed by the
//! stop machinery (on a task of its own), so a caller that goes away leaves every execution
//! either stopped and recorded or untouched. A few stops run at a time (four per batch, and
//! at most sixteen for all the batches of a server in one account and region together), each
//! spending one of the caller's StopExecution rate, and each is authorized on its own. Their
//! calls to SageMaker go at the pace of their (account, region) (see `pace`): batches of
//! several accounts run in parallel, each account at its own quota.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures_util::{StreamExt as _, stream};

use crate::{
    auth::Caller,
    domain::{Action, ClientToken, ExecutionArn, FieldViolation, PipelineArn, Reason},
    error::Error,
    estate::Estate,
    rate::Rate,
    sagemaker::UpstreamError,
    stop::{Answer, StopInput, Stopper, digest},
    store::{Completion, NewBatch, RequestKey, Store},
};

/// Upstream stops of one batch running at once.
const CONCURRENCY: usize = 4;
/// Executions a batch selects when the caller does not say, and the most it may ask for.
pub(crate) const DEFAULT_MAX: usize = 100;
pub(crate) const MAX: usize = 1000;
/// The RPC, in fingerprints.
const METHOD: &str = "StopExecutions";
/// What may have differed from the first use of a batch's token (its record keeps only a
/// digest of the request).
const BATCH_DIFFERS: &str = "pipeline, reason, dry_run, time range, max_executions or force_after";

/// A checked StopExecutions request.
#[derive(Debug, Clone)]
pub(crate) struct BatchInput {
    pub(crate) pipeline: PipelineArn,
    pub(crate) token: ClientToken,
    pub(crate) reason: Reason,
    pub(crate) dry_run: bool,
    pub(crate) created_after: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) created_before: Option<chrono::DateTime<chrono::Utc>>,
    pub(crate) max_executions: usize,
    pub(crate) force_after: Option<std::time::Duration>,
}

impl BatchInput {
    /// The batch's fingerprint: everything that decides what it does.
    fn fingerprint(&self) -> String {
        let millis = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or(String::new(), |t| t.timestamp_millis().to_string())
        };
        digest(&[
            METHOD,
            self.pipeline.as_str(),
            self.reason.as_str(),
            &millis(self.created_after),
            &millis(self.created_before),
            &self.max_executions.to_string(),
            &self
                .force_after
                .map_or(String::new(), |d| d.as_millis().to_string()),
        ])
    }
}

/// The client token of one execution's stop within a batch: from the batch's token and the
/// execution (the principal is the key's other half).
pub(crate) fn execution_token(batch: &ClientToken, arn: &ExecutionArn) -> ClientToken {
    let derived = format!("batch-{}", &digest(&[batch.as_str(), arn.as_str()])[..48]);
    ClientToken::parse(&derived).unwrap_or_else(|_| ClientToken::generate())
}

/// What a batch says, in order: `Selected`, a `Result` per execution, `Summary`.
#[derive(Debug)]
pub(crate) enum BatchEvent {
    Selected(Selection),
    Result {
        arn: String,
        result: Box<Result<Answer, Error>>,
    },
    Summary(Summary),
}

/// The executions a batch works on.
#[derive(Debug, Clone)]
pub(crate) struct Selection {
    pub(crate) arns: Vec<String>,
    pub(crate) token: String,
    pub(crate) dry_run: bool,
    pub(crate) truncated: bool,
    /// Recorded by an earlier attempt of the same batch.
    pub(crate) replayed: bool,
}

/// The counts of a batch's results.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) selected: usize,
    pub(crate) stop_requested: usize,
    pub(crate) already_stopping: usize,
    pub(crate) already_stopped: usize,
    pub(crate) failed: usize,
    pub(crate) errors: BTreeMap<&'static str, usize>,
    pub(crate) would_stop: usize,
}

impl Summary {
    fn count(&mut self, result: &Result<Answer, Error>) {
        match result
            .as_ref()
            .map(|answer| answer.record.state.completion())
        {
            Ok(Some(Completion::Stopped { outcome, .. })) => match outcome {
                crate::domain::StopOutcome::StopRequested => self.stop_requested += 1,
                crate::domain::StopOutcome::AlreadyStopping => self.already_stopping += 1,
                crate::domain::StopOutcome::AlreadyStopped => self.already_stopped += 1,
            },
            Ok(Some(Completion::Refused { error, status })) => {
                self.failed += 1;
                *self
                    .errors
                    .entry(Error::recorded(*error, status.as_ref()).reason())
                    .or_default() += 1;
            }
            Ok(None) => {}
            Err(error) => {
                self.failed += 1;
                *self.errors.entry(error.reason()).or_default() += 1;
            }
        }
    }
}

/// Where batches are recorded, and for how long (as long as stop requests).
#[derive(Debug, Clone)]
pub(crate) struct Records {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) retention: Duration,
}

/// Selects a batch's executions (recording the selection unless it is a dry run) and returns
/// the stream of its events; a failure to select is the call's error.
pub(crate) async fn start(
    stopper: Arc<Stopper>,
    records: &Records,
    estate: &Estate,
    rate: Arc<Rate>,
    caller: Caller,
    input: BatchInput,
) -> Result<impl futures_util::Stream<Item = BatchEvent> + Send + 'static, Error> {
    // A caller that may stop nothing is refused before SageMaker is asked anything.
    caller.authorize_any(Action::Stop)?;
    let pipeline = &input.pipeline;
    estate.check_in(pipeline.account(), pipeline.region())?;
    let key = RequestKey {
        principal: caller.principal().as_str().to_string(),
        token: input.token.as_str().to_string(),
    };
    let fingerprint = input.fingerprint();
    // A batch retried works on what its first attempt selected, without asking SageMaker
    // again (it may be throttling, or the executions have moved on since).
    if !input.dry_run
        && let Some(stored) = records.store.batch(&key).await?
    {
        if stored.fingerprint != fingerprint {
            return Err(Error::IdempotencyKeyReused {
                differs: BATCH_DIFFERS.to_string(),
            });
        }
        let selection = Selection {
            arns: stored.selected,
            token: input.token.as_str().to_string(),
            dry_run: false,
            truncated: stored.truncated,
            replayed: true,
        };
        return Ok(events(stopper, rate, caller, input, selection));
    }
    let sagemaker = estate
        .client_in(pipeline.account(), pipeline.region())
        .await;
    let (arns, truncated) = sagemaker
        .executing_executions(
            pipeline.as_str(),
            input.created_after,
            input.created_before,
            input.max_executions,
        )
        .await
        .map_err(|error| match error {
            // SageMaker does not take it for a pipeline (a name of `..`, say): the caller's.
            UpstreamError::Invalid(_) => Error::InvalidArgument(vec![FieldViolation::new(
                "pipeline_arn",
                "SageMaker does not accept it as a pipeline's ARN",
            )]),
            other => other.into(),
        })?
        .ok_or(Error::PipelineNotFound)?;
    let selection = if input.dry_run {
        Selection {
            arns,
            token: input.token.as_str().to_string(),
            dry_run: true,
            truncated,
            replayed: false,
        }
    } else {
        let stored = records
            .store
            .claim_batch(
                &NewBatch {
                    key,
                    fingerprint: fingerprint.clone(),
                    pipeline_arn: pipeline.as_str().to_string(),
                    selected: arns,
                    truncated,
                },
                records.retention,
            )
            .await?;
        if stored.fingerprint != fingerprint {
            return Err(Error::IdempotencyKeyReused {
                differs: BATCH_DIFFERS.to_string(),
            });
        }
        Selection {
            arns: stored.selected,
            token: input.token.as_str().to_string(),
            dry_run: false,
            truncated: stored.truncated,
            replayed: !stored.inserted,
        }
    };
    Ok(events(stopper, rate, caller, input, selection))
}

/// `Selected`, then each execution's result as its stop completes, then `Summary`.
fn events(
    stopper: Arc<Stopper>,
    rate: Arc<Rate>,
    caller: Caller,
    input: BatchInput,
    selection: Selection,
) -> impl futures_util::Stream<Item = BatchEvent> + Send + 'static {
    let summary = Arc::new(Mutex::new(Summary {
        selected: selection.arns.len(),
        ..Summary::default()
    }));
    let arns = selection.arns.clone();
    let results = stream::iter(arns)
        .map(move |arn| {
            let (stopper, rate, caller, input) =
                (stopper.clone(), rate.clone(), caller.clone(), input.clone());
            async move {
                let result = stop_one(&stopper, &rate, &caller, &input, &arn).await;
                (arn, result)
            }
        })
        .buffer_unordered(CONCURRENCY);
    let counted = summary.clone();
    let results = results.filter_map(move |(arn, result)| {
        let mut summary = counted.lock().unwrap_or_else(|e| e.into_inner());
        let event = match result {
            // A dry run's execution that would be stopped: counted, not reported.
            None => {
                summary.would_stop += 1;
                None
            }
            Some(result) => {
                summary.count(&result);
                Some(BatchEvent::Result {
                    arn,
                    result: Box::new(result),
                })
            }
        };
        std::future::ready(event)
    });
    stream::once(std::future::ready(BatchEvent::Selected(selection)))
        .chain(results)
        .chain(stream::once(async move {
            let summary = summary.lock().unwrap_or_else(|e| e.into_inner()).clone();
            BatchEvent::Summary(summary)
        }))
}

/// One execution of a batch: refused, or (dry) `None` for "would stop", or stopped as
/// StopExecution would stop it.
async fn stop_one(
    stopper: &Arc<Stopper>,
    rate: &Rate,
    caller: &Caller,
    input: &BatchInput,
    arn: &str,
) -> Option<Result<Answer, Error>> {
    let arn = match ExecutionArn::parse(arn) {
        Ok(arn) => arn,
        Err(violation) => return Some(Err(Error::InvalidArgument(vec![violation]))),
    };
    if let Err(denied) = caller.authorize(Action::Stop, &arn) {
        return Some(Err(denied));
    }
    if input.force_after.is_some()
        && let Err(denied) = caller.authorize(Action::Force, &arn)
    {
        return Some(Err(denied));
    }
    if input.dry_run {
        return None;
    }
    let _permit = stopper.batch_stop_permit(&arn).await;
    rate.wait(caller.principal()).await;
    let stop = StopInput {
        principal: caller.principal().clone(),
        proof: caller.proof(),
        token: execution_token(&input.token, &arn),
        arn,
        reason: input.reason.clone(),
        force_after: input.force_after,
    };
    Some(stopper.stop_in_batch(&stop, None).await)
}
