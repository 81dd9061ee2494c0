//! The gRPC surface: the `PipelineControl` service of the generated contract ([`crate::pb`]), one
//! method per RPC (validate, authorize, call the domain, convert to proto), behind the
//! [`Guard`] (authentication and limits). Errors become `Status` only in [`crate::error`].

mod connection;
mod convert;
mod guard;
mod observe;
mod shares;

pub(crate) use connection::{Backoff, Bounded, Deadlines};
pub(crate) use guard::{Guard, GuardSettings, Open};
pub(crate) use observe::Observe;

use std::{pin::Pin, sync::Arc};

use tonic::{Code, Request, Response, Status, metadata::MetadataValue};

use futures_util::StreamExt as _;

use crate::{
    auth::{self, Auth, Caller},
    batch::{self, BatchEvent, BatchInput, Records},
    domain::{self, Action, ClientToken, ExecutionArn, FieldViolation, PipelineArn, Reason},
    error::Error,
    estate::Estate,
    history, hooks,
    metrics::Metrics,
    rate::Rates,
    reads::Reads,
    stop::{Answer, StopInput, Stopper, outcome_label},
    store::{Completion, StopRecord},
    watch::Watcher,
};

use crate::pb::{self, pipeline_control_server::PipelineControl};

/// The `pipelinecontrol.v1.PipelineControl` service.
#[derive(Debug, Clone)]
pub(crate) struct PipelineControlService {
    stopper: Arc<Stopper>,
    /// Where stop requests and batches are recorded (history reads it; batches write it).
    records: Records,
    estate: Arc<Estate>,
    watcher: Arc<Watcher>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
    /// The callers' rates: StopExecutions spends the stop rate once per execution; the calls
    /// that read SageMaker spend the read rate.
    rates: Rates,
    /// GetExecution's reads, shared.
    reads: Arc<Reads>,
}

impl PipelineControlService {
    pub(crate) fn new(
        stopper: Arc<Stopper>,
        records: Records,
        estate: Arc<Estate>,
        watcher: Arc<Watcher>,
        auth: Arc<Auth>,
        metrics: Arc<Metrics>,
        rates: Rates,
    ) -> Self {
        let reads = Arc::new(Reads::new(
            estate.clone(),
            watcher.poll_interval(),
            metrics.clone(),
        ));
        Self {
            stopper,
            records,
            estate,
            watcher,
            auth,
            metrics,
            rates,
            reads,
        }
    }

    /// Says in `metadata` where the service reaches SageMaker for `arn`, when not at AWS's
    /// default endpoint, so that the command line's suggested `aws` commands go there too.
    fn tell_endpoint(&self, arn: &ExecutionArn, metadata: &mut tonic::metadata::MetadataMap) {
        if let Some(value) = self
            .estate
            .endpoint_of(arn.account())
            .and_then(|url| url.parse().ok())
        {
            metadata.insert(pb::SAGEMAKER_ENDPOINT_HEADER, value);
        }
    }

    /// Counts a call the policy refused.
    fn counted<T>(&self, result: Result<T, Status>) -> Result<T, Status> {
        if let Err(status) = &result
            && status.code() == Code::PermissionDenied
        {
            self.metrics.auth_refused("permission_denied");
        }
        result
    }

    /// StopExecution up to its answer, which [`PipelineControl::stop_execution`] counts.
    async fn stop(&self, request: Request<pb::StopExecutionRequest>) -> Result<Answer, Error> {
        let caller = caller(&request)?;
        let deadline = convert::deadline(request.metadata())
            .map(|timeout| tokio::time::Instant::now() + timeout);
        let message = request.into_inner();
        let arn = ExecutionArn::parse(&message.pipeline_execution_arn);
        let token = if message.client_request_token.is_empty() {
            Ok(ClientToken::generate())
        } else {
            ClientToken::parse(&message.client_request_token)
        };
        let reason = Reason::parse(&message.reason);
        let (arn, token, reason) = match (arn, token, reason) {
            (Ok(arn), Ok(token), Ok(reason)) => (arn, token, reason),
            (arn, token, reason) => {
                let violations = [arn.err(), token.err(), reason.err()];
                return Err(Error::InvalidArgument(
                    violations.into_iter().flatten().collect(),
                ));
            }
        };
        let force_after = force_after(message.force_after.as_ref())?;
        // Before anything is recorded or sent; the same answer whether the execution exists.
        caller.authorize(Action::Stop, &arn)?;
        if force_after.is_some() {
            caller.authorize(Action::Force, &arn)?;
        }
        let input = StopInput {
            principal: caller.principal().clone(),
            proof: caller.proof(),
            arn,
            token,
            reason,
            force_after,
        };
        self.stopper.stop(&input, deadline).await
    }
}

/// `force_after`, checked: zero or more, at most [`domain::FORCE_AFTER_MAX`].
fn force_after(
    value: Option<&prost_types::Duration>,
) -> Result<Option<std::time::Duration>, Error> {
    let Some(value) = value else {
        return Ok(None);
    };
    let converted = u64::try_from(value.seconds)
        .ok()
        .zip(
            u32::try_from(value.nanos)
                .ok()
                .filter(|n| *n < 1_000_000_000),
        )
        .map(|(seconds, nanos)| std::time::Duration::new(seconds, nanos))
        .filter(|d| *d <= domain::FORCE_AFTER_MAX);
    converted.map(Some).ok_or_else(|| {
        Error::InvalidArgument(vec![FieldViolation::new(
            "force_after",
            "must be between 0s and 7 days",
        )])
    })
}

/// A StopExecutions request, checked; every violation is named.
fn batch_input(message: &pb::StopExecutionsRequest) -> Result<BatchInput, Error> {
    let mut violations = Vec::new();
    let pipeline = PipelineArn::parse("pipeline_arn", &message.pipeline_arn)
        .map_err(|v| violations.push(v))
        .ok();
    let token = if message.client_request_token.is_empty() {
        Some(ClientToken::generate())
    } else {
        ClientToken::parse(&message.client_request_token)
            .map_err(|v| violations.push(v))
            .ok()
    };
    let reason = Reason::parse(&message.reason)
        .map_err(|v| violations.push(v))
        .ok();
    let force = match force_after(message.force_after.as_ref()) {
        Ok(force) => force,
        Err(Error::InvalidArgument(mut more)) => {
            violations.append(&mut more);
            None
        }
        Err(_) => None,
    };
    let max_executions = match message.max_executions {
        0 => batch::DEFAULT_MAX,
        n if n > 0 && n as usize <= batch::MAX => n as usize,
        _ => {
            violations.push(FieldViolation::new(
                "max_executions",
                format!(
                    "must be between 1 and {} (0: {})",
                    batch::MAX,
                    batch::DEFAULT_MAX
                ),
            ));
            0
        }
    };
    let mut time = |field: &'static str, t: Option<&prost_types::Timestamp>| {
        let t = t?;
        let converted = u32::try_from(t.nanos)
            .ok()
            .and_then(|nanos| chrono::DateTime::from_timestamp(t.seconds, nanos));
        if converted.is_none() {
            violations.push(FieldViolation::new(field, "is not a valid time"));
        }
        converted
    };
    let created_after = time("created_after", message.created_after.as_ref());
    let created_before = time("created_before", message.created_before.as_ref());
    if let (Some(after), Some(before)) = (created_after, created_before)
        && after >= before
    {
        violations.push(FieldViolation::new(
            "created_before",
            "must be later than created_after",
        ));
    }
    match (pipeline, token, reason) {
        (Some(pipeline), Some(token), Some(reason)) if violations.is_empty() => Ok(BatchInput {
            pipeline,
            token,
            reason,
            dry_run: message.dry_run,
            created_after,
            created_before,
            max_executions,
            force_after: force,
        }),
        _ => Err(Error::InvalidArgument(violations)),
    }
}

/// An error as a `google.rpc.Status`, with the details its `tonic::Status` carries.
fn rpc_status(status: &Status) -> tonic_types::pb::Status {
    use prost::Message as _;
    tonic_types::pb::Status::decode(status.details()).unwrap_or_else(|_| tonic_types::pb::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    })
}

/// A StopExecutions event as its message.
fn batch_response(event: BatchEvent) -> pb::StopExecutionsResponse {
    use pb::{execution_stop_result::Result as Outcome, stop_executions_response::Response};
    let response = match event {
        BatchEvent::Selected(selection) => Response::Selected(pb::SelectedExecutions {
            pipeline_execution_arns: selection.arns,
            client_request_token: selection.token,
            dry_run: selection.dry_run,
            truncated: selection.truncated,
            replayed: selection.replayed,
        }),
        BatchEvent::Result { arn, result } => {
            let result = match (*result).map_err(Status::from).and_then(answer) {
                Ok(response) => Outcome::Response(response.into_inner()),
                Err(status) => Outcome::Error(rpc_status(&status)),
            };
            Response::Result(pb::ExecutionStopResult {
                pipeline_execution_arn: arn,
                result: Some(result),
            })
        }
        BatchEvent::Summary(summary) => {
            let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
            Response::Summary(pb::StopExecutionsSummary {
                selected: count(summary.selected),
                stop_requested: count(summary.stop_requested),
                already_stopping: count(summary.already_stopping),
                already_stopped: count(summary.already_stopped),
                failed: count(summary.failed),
                errors: summary
                    .errors
                    .into_iter()
                    .map(|(reason, n)| (reason.to_string(), count(n)))
                    .collect(),
                would_stop: count(summary.would_stop),
            })
        }
    };
    pb::StopExecutionsResponse {
        response: Some(response),
    }
}

/// The caller, as the [`Guard`] authenticated it.
fn caller<T>(request: &Request<T>) -> Result<Caller, Error> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| {
            Error::Internal("a call reached the service without passing the guard".into())
        })
}

/// A reading call's execution ARN, checked, and the caller allowed to read it.
fn readable<T>(request: &Request<T>, arn: &str) -> Result<(Caller, ExecutionArn), Error> {
    let caller = caller(request)?;
    let arn =
        ExecutionArn::parse(arn).map_err(|violation| Error::InvalidArgument(vec![violation]))?;
    caller.authorize(Action::Read, &arn)?;
    Ok((caller, arn))
}

/// The idempotency metadata every StopExecution answer carries.
fn idempotency_metadata(
    metadata: &mut tonic::metadata::MetadataMap,
    record: &StopRecord,
    replayed: bool,
) {
    metadata.insert(
        "idempotency-replayed",
        MetadataValue::from_static(if replayed { "true" } else { "false" }),
    );
    let expires = record
        .expires_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    if let Ok(value) = expires.parse() {
        metadata.insert("idempotency-expires-at", value);
    }
}

/// A completed record as StopExecution answers it: the recorded outcome, or the recorded error.
fn answer(answer: Answer) -> Result<Response<pb::StopExecutionResponse>, Status> {
    let Answer {
        record, replayed, ..
    } = &answer;
    if let Some(Completion::Refused { error, status }) = record.state.completion() {
        let mut status = Status::from(Error::recorded(*error, status.as_ref()));
        idempotency_metadata(status.metadata_mut(), record, *replayed);
        return Err(status);
    }
    let mut response = Response::new(convert::stop_response(&answer));
    idempotency_metadata(response.metadata_mut(), &answer.record, answer.replayed);
    Ok(response)
}

#[tonic::async_trait]
impl PipelineControl for PipelineControlService {
    async fn stop_execution(
        &self,
        request: Request<pb::StopExecutionRequest>,
    ) -> Result<Response<pb::StopExecutionResponse>, Status> {
        hooks::handler_entry().await;
        let result = self.stop(request).await;
        let (outcome, replayed) = outcome_label(&result);
        self.metrics.stop_answered(outcome, replayed);
        self.counted(result.map_err(Status::from).and_then(answer))
    }

    async fn get_execution(
        &self,
        request: Request<pb::GetExecutionRequest>,
    ) -> Result<Response<pb::Execution>, Status> {
        hooks::handler_entry().await;
        let result = async {
            let (caller, arn) = readable(&request, &request.get_ref().pipeline_execution_arn)?;
            self.rates.read.spend(caller.principal())?;
            let snapshot = self.reads.execution(&arn).await?;
            let mut response = Response::new(convert::execution(&snapshot));
            self.tell_endpoint(&arn, response.metadata_mut());
            Ok::<_, Error>(response)
        };
        self.counted(result.await.map_err(Status::from))
    }

    type WatchExecutionStream = Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::WatchExecutionResponse, Status>> + Send>,
    >;

    async fn watch_execution(
        &self,
        request: Request<pb::WatchExecutionRequest>,
    ) -> Result<Response<Self::WatchExecutionStream>, Status> {
        hooks::handler_entry().await;
        let result = async {
            let (caller, arn) = readable(&request, &request.get_ref().pipeline_execution_arn)?;
            self.estate.check(&arn)?;
            // A stream's start may read SageMaker (its poller's first read); its messages do not.
            self.rates.read.spend(caller.principal())?;
            let events = self.watcher.watch(arn.clone()).await?;
            let mut metadata = tonic::metadata::MetadataMap::new();
            self.tell_endpoint(&arn, &mut metadata);
            let events = auth::until_revoked(events, self.auth.clone(), caller, arn);
            Ok::<_, Error>((events, metadata))
        };
        let (events, metadata) = self.counted(result.await.map_err(Status::from))?;
        let mut response = Response::new(Box::pin(events.map(|event| {
            event
                .map(|event| convert::watch_response(&event))
                .map_err(Status::from)
        })) as Self::WatchExecutionStream);
        *response.metadata_mut() = metadata;
        Ok(response)
    }

    type StopExecutionsStream = Pin<
        Box<dyn futures_util::Stream<Item = Result<pb::StopExecutionsResponse, Status>> + Send>,
    >;

    async fn stop_executions(
        &self,
        request: Request<pb::StopExecutionsRequest>,
    ) -> Result<Response<Self::StopExecutionsStream>, Status> {
        hooks::handler_entry().await;
        let result = async {
            let caller = caller(&request)?;
            let input = batch_input(request.get_ref())?;
            if input.force_after.is_some() {
                caller.authorize_any(Action::Force)?;
            }
            batch::start(
                self.stopper.clone(),
                &self.records,
                &self.estate,
                self.rates.stop.clone(),
                caller,
                input,
            )
            .await
        };
        let events = self.counted(result.await.map_err(Status::from))?;
        let metrics = self.metrics.clone();
        Ok(Response::new(Box::pin(events.map(move |event| {
            if let BatchEvent::Result { result, .. } = &event {
                let (outcome, replayed) = outcome_label(result);
                metrics.stop_answered(outcome, replayed);
            }
            Ok(batch_response(event))
        }))))
    }

    async fn list_stop_requests(
        &self,
        request: Request<pb::ListStopRequestsRequest>,
    ) -> Result<Response<pb::ListStopRequestsResponse>, Status> {
        hooks::handler_entry().await;
        let result = async {
            let caller = caller(&request)?;
            let message = request.into_inner();
            let query = history::ListRequest::parse(
                &message.pipeline_arn,
                &message.pipeline_execution_arn,
                message.page_size,
                &message.page_token,
            )?;
            let page = history::list(self.records.store.as_ref(), &caller, &query).await?;
            let mut stop_requests = Vec::with_capacity(page.records.len());
            for record in &page.records {
                stop_requests.push(convert::stop_request(
                    record,
                    &self.stopper.releases(record).await?,
                ));
            }
            Ok::<_, Error>(Response::new(pb::ListStopRequestsResponse {
                stop_requests,
                next_page_token: page.next_page_token,
            }))
        };
        self.counted(result.await.map_err(Status::from))
    }

    async fn get_stop_request(
        &self,
        request: Request<pb::GetStopRequestRequest>,
    ) -> Result<Response<pb::StopRequest>, Status> {
        hooks::handler_entry().await;
        let result = async {
            let caller = caller(&request)?;
            let message = request.into_inner();
            let token = ClientToken::parse(&message.client_request_token)
                .map_err(|violation| Error::InvalidArgument(vec![violation]))?;
            // The request names no execution: refuse a caller that may read none before
            // looking, and one that may not read the recorded execution after.
            caller.authorize_any(Action::Read)?;
            let record = self.stopper.get(caller.principal(), &token).await?;
            caller.authorize(Action::Read, &record.pipeline_execution_arn)?;
            let releases = self.stopper.releases(&record).await?;
            Ok::<_, Error>(Response::new(convert::stop_request(&record, &releases)))
        };
        self.counted(result.await.map_err(Status::from))
    }
}
