//! The gRPC surface: the generated contract ([`pb`]) and the `PipelineControl` service, one
//! method per RPC (validate, authorize, call the domain, convert to proto), behind the
//! [`Guard`] (authentication and limits). Errors become `Status` only in [`crate::error`].

mod codec;
mod convert;
mod guard;
mod observe;

pub(crate) use guard::{Guard, GuardSettings};
pub(crate) use observe::Observe;

use std::{pin::Pin, sync::Arc};

use tonic::{Code, Request, Response, Status, metadata::MetadataValue};

use futures_util::StreamExt as _;

use crate::{
    auth::{Auth, Caller},
    domain::{Action, ClientToken, ExecutionArn, Reason},
    error::Error,
    estate::Estate,
    history, hooks,
    metrics::Metrics,
    stop::{Answer, StopInput, Stopper},
    store::{Completion, StopRecord},
    watch::{WatchStream, Watcher},
};

/// The generated messages, server and client of `proto/pipelinecontrol/v1`.
pub mod pb {
    #![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]
    tonic::include_proto!("pipelinecontrol.v1");

    /// The encoded descriptor set of the contract, with its imports and doc comments, for
    /// server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pipeline_control_descriptor.bin"));
}

use pb::pipeline_control_server::PipelineControl;

/// The `pipelinecontrol.v1.PipelineControl` service.
#[derive(Debug, Clone)]
pub(crate) struct PipelineControlService {
    stopper: Arc<Stopper>,
    estate: Arc<Estate>,
    watcher: Arc<Watcher>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
}

impl PipelineControlService {
    pub(crate) fn new(
        stopper: Arc<Stopper>,
        estate: Arc<Estate>,
        watcher: Arc<Watcher>,
        auth: Arc<Auth>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            stopper,
            estate,
            watcher,
            auth,
            metrics,
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
        // Before anything is recorded or sent; the same answer whether the execution exists.
        caller.authorize(Action::Stop, &arn)?;
        let input = StopInput {
            principal: caller.principal().clone(),
            arn,
            token,
            reason,
        };
        self.stopper.stop(&input, deadline).await
    }
}

/// The `outcome` label of a StopExecution answer: the outcome, or the error's reason (the
/// recorded one for a replayed refusal).
fn outcome_label(result: &Result<Answer, Error>) -> (&'static str, bool) {
    match result {
        Ok(Answer { record, replayed }) => match record.state.completion() {
            Some(Completion::Stopped { outcome, .. }) => (outcome.as_str(), *replayed),
            Some(Completion::Refused { error, status }) => {
                (Error::recorded(*error, status.as_ref()).reason(), *replayed)
            }
            None => ("PENDING", *replayed),
        },
        Err(error) => (error.reason(), false),
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

/// Ends a watch stream with the refusal as soon as a reload of the token or policy file takes
/// the caller's right to read the execution away (a stream may otherwise outlive its rights
/// by days). Messages are still made only when the transport asks for them.
fn end_if_revoked(
    stream: WatchStream,
    auth: Arc<Auth>,
    caller: Caller,
    arn: ExecutionArn,
) -> WatchStream {
    let mut reloads = auth.reloads();
    let revoked = async move {
        // Checked once at the start too: a reload may have come between authentication and
        // this subscription.
        loop {
            if let Err(error) = auth.recheck(&caller, Action::Read, &arn) {
                return error;
            }
            if reloads.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let state = (stream, Box::pin(revoked), false);
    Box::pin(futures_util::stream::unfold(
        state,
        |(mut stream, mut revoked, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                error = &mut revoked => Some((Err(error), (stream, revoked, true))),
                item = stream.next() => item.map(|item| (item, (stream, revoked, false))),
            }
        },
    ))
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
    let Answer { record, replayed } = answer;
    if let Some(Completion::Refused { error, status }) = record.state.completion() {
        let mut status = Status::from(Error::recorded(*error, status.as_ref()));
        idempotency_metadata(status.metadata_mut(), &record, replayed);
        return Err(status);
    }
    let mut response = Response::new(convert::stop_response(&record, replayed));
    idempotency_metadata(response.metadata_mut(), &record, replayed);
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
            let (_, arn) = readable(&request, &request.get_ref().pipeline_execution_arn)?;
            let snapshot = self
                .estate
                .client(&arn)
                .await?
                .execution(&arn)
                .await
                .map_err(Error::from)?
                .ok_or(Error::ExecutionNotFound)?;
            Ok::<_, Error>(Response::new(convert::execution(&snapshot)))
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
            let events = self.watcher.watch(arn.clone()).await?;
            Ok::<_, Error>(end_if_revoked(events, self.auth.clone(), caller, arn))
        };
        let events = self.counted(result.await.map_err(Status::from))?;
        Ok(Response::new(Box::pin(events.map(|event| {
            event
                .map(|event| convert::watch_response(&event))
                .map_err(Status::from)
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
            let page = self.stopper.history(&caller, &query).await?;
            Ok::<_, Error>(Response::new(pb::ListStopRequestsResponse {
                stop_requests: page.records.iter().map(convert::stop_request).collect(),
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
            let arn = ExecutionArn::parse(&record.pipeline_execution_arn)
                .map_err(|_| Error::Internal("a recorded execution ARN does not parse".into()))?;
            caller.authorize(Action::Read, &arn)?;
            Ok::<_, Error>(Response::new(convert::stop_request(&record)))
        };
        self.counted(result.await.map_err(Status::from))
    }
}
