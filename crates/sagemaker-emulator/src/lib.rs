//! A SageMaker Pipelines emulator that speaks SageMaker's real wire protocol (awsJson1_1), so
//! the official AWS SDKs and CLI talk to it unchanged through an endpoint override.
//!
//! It serves the 18 SageMaker Pipelines operations of the API model: CreatePipeline,
//! DescribePipeline, ListPipelines, UpdatePipeline, DeletePipeline, ListPipelineVersions,
//! UpdatePipelineVersion, StartPipelineExecution, DescribePipelineExecution,
//! UpdatePipelineExecution, ListPipelineExecutions, ListPipelineExecutionSteps,
//! ListPipelineParametersForExecution, DescribePipelineDefinitionForExecution,
//! StopPipelineExecution, SendPipelineExecutionStepSuccess/Failure and RetryPipelineExecution,
//! with SageMaker's validation, error shapes and stop semantics. A pipeline keeps every version
//! of its definition, and an execution the version it started with. Pipelines run real definition
//! documents as simulated work, scripted per step (see [`definition`] for the keys), in
//! emulated time that `time_scale` speeds up. A small admin surface under `/_emulator/` counts
//! calls, shows the messages Callback steps would have sent and the events executions made,
//! injects faults, sets request quotas and what roles demand. Beyond a quota of its
//! (account, region, operation), a call is answered ThrottlingException, as SageMaker does.
//!
//! One emulator plays every account and region, kept apart as SageMaker keeps them: a call
//! acts in the region of its SigV4 credential scope and in the account of its access key, and
//! sees nothing of another (account, region). The SigV4 signatures of the keys whose secrets
//! it knows (those its STS issues, and [`AccessKey`]s given to it) are checked as AWS checks
//! them; other keys are accepted with any signature. On the same port it serves STS's AssumeRole,
//! AssumeRoleWithWebIdentity (for a web identity token, such as the one EKS gives a pod for
//! IRSA) and GetCallerIdentity, whose temporary keys act in the role's account and expire on
//! the emulated clock; and SQS (CreateQueue, GetQueueUrl, ListQueues, SendMessage, ReceiveMessage
//! with long polling, DeleteMessage, ChangeMessageVisibility, PurgeQueue), whose queues
//! receive the messages of the Callback steps whose `SqsQueueUrl` names them, so a callback
//! consumer can be tested end to end. Queues named by `events_queues` or the admin surface
//! receive SageMaker's EventBridge events (every status change of an execution or a step,
//! in EventBridge's envelope), as an EventBridge rule with an SQS target would deliver them,
//! when they are due whether or not anybody looks at the execution.
//!
//! # Layout
//!
//! - This file: the server ([`EmulatorServer`] binds, then serves, with the event pump beside
//!   it; [`RunningEmulator`] in the background) and its routes. `options`: how an emulator
//!   behaves ([`EmulatorOptions`]).
//!   [`cli`]: the command line of the binary and of `pipeline-control emulator`.
//! - `wire`: the HTTP entry point and its two protocols; `error`: SageMaker's error shapes,
//!   the only place a SageMaker error becomes a response.
//! - `ops`: the SageMaker operations (`ops/pipelines.rs`: pipelines and their versions;
//!   `ops/executions.rs`: executions; `ops/common.rs`: ClientRequestToken replay, paging and
//!   what else both use); `sts`: STS (awsQuery, AssumeRole, AssumeRoleWithWebIdentity,
//!   GetCallerIdentity, its XML and errors); `sqs`: SQS (awsJson1_0, its actions and errors); `validate`: AWS-style
//!   validation.
//! - [`definition`]: pipeline definitions; `engine`: the execution state machine, which
//!   records every status change; `events`: SageMaker's EventBridge events, the queues that
//!   receive them and what their faults let through.
//! - `state`: the data, per (account, region) in sharded maps with a lock per execution and
//!   per token record, the call counts, and the event pump that advances executions whose
//!   events someone receives when they are due; `identity`: the (account, region) and principal
//!   of a call, the keys whose secrets it knows and the checks of their calls, the roles'
//!   rules; `queue`: an SQS queue (messages, visibility, long polling); `clock`: time and ids;
//!   `sigv4`: AWS Signature Version 4 as a service checks it; `jwt`: the claims of a web
//!   identity token.
//! - `faults` and `admin`: fault injection and the admin surface; `quotas`: request quotas,
//!   a token bucket per (account, region, operation).
//!
//! A module imports only modules of the groups after its own, in this order, so none imports
//! one that imports it back: `cli`; this file; `wire`, `admin`; `ops`, `sts`, `sqs`; `state`,
//! `validate`; `events`; `engine`, `error`; `definition`, `faults`, `identity`, `options`,
//! `queue`; `clock`, `jwt`, `quotas`, `sigv4`.
//! Inside `ops` likewise: `ops.rs`; `pipelines`, `executions`; `common`.

mod admin;
pub mod cli;
mod clock;
pub mod definition;
mod engine;
mod error;
mod events;
mod faults;
mod identity;
mod jwt;
mod ops;
mod options;
mod queue;
mod quotas;
mod sigv4;
mod sqs;
mod state;
mod sts;
mod validate;
mod wire;

pub use options::{AccessKey, EmulatorOptions};
pub use quotas::{Quota, QuotaSetting};

use std::{future::Future, io, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    routing::{get, post, put},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use queue::valid_queue_name;

use state::Emulator;

fn router(emulator: Arc<Emulator>) -> Router {
    Router::new()
        .route("/", post(wire::handle))
        .route(
            "/_emulator/stats",
            get(admin::stats).delete(admin::reset_stats),
        )
        .route("/_emulator/stats/by-account", get(admin::stats_by_account))
        .route("/_emulator/stats/throttled", get(admin::stats_throttled))
        .route("/_emulator/callbacks", get(admin::callbacks))
        .route("/_emulator/stop-requests", get(admin::stop_requests))
        .route(
            "/_emulator/faults",
            get(admin::list_faults).delete(admin::clear_faults),
        )
        .route(
            "/_emulator/faults/{operation}",
            put(admin::set_fault).delete(admin::clear_fault),
        )
        .route(
            "/_emulator/roles",
            get(admin::list_roles)
                .put(admin::set_role)
                .delete(admin::clear_roles),
        )
        .route("/_emulator/events", get(admin::events))
        .route(
            "/_emulator/events/queues",
            get(admin::list_event_queues)
                .put(admin::add_event_queue)
                .delete(admin::clear_event_queues),
        )
        .route(
            "/_emulator/events/faults",
            get(admin::event_faults)
                .put(admin::set_event_faults)
                .delete(admin::clear_event_faults),
        )
        .route(
            "/_emulator/quotas",
            get(admin::list_quotas).delete(admin::clear_quotas),
        )
        .route(
            "/_emulator/quotas/{operation}",
            put(admin::set_quota)
                .post(admin::set_quota)
                .delete(admin::clear_quota),
        )
        .route("/_emulator/config", get(admin::config))
        .with_state(emulator)
}

/// An emulator bound to its port, ready to serve.
#[derive(Debug)]
pub struct EmulatorServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    emulator: Arc<Emulator>,
}

impl EmulatorServer {
    /// Binds `addr` (port 0 picks a free port). An `events_queues` name that is no SQS queue
    /// name, an access key that is malformed or given twice, a web identity issuer that is
    /// no http(s) URL, and a quota of no operation or out of bounds are `InvalidInput` errors.
    pub async fn bind(addr: SocketAddr, options: &EmulatorOptions) -> io::Result<Self> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidInput, message);
        if let Some(name) = options.events_queues.iter().find(|n| !valid_queue_name(n)) {
            return Err(invalid(format!(
                "events queue {name:?} is not a queue name (1 to 80 letters, digits, - and _)"
            )));
        }
        for (i, key) in options.access_keys.iter().enumerate() {
            let id = &key.access_key_id;
            key.check()
                .map_err(|reason| invalid(format!("access key {id:?}: {reason}")))?;
            if options.access_keys[..i]
                .iter()
                .any(|other| other.access_key_id == *id)
            {
                return Err(invalid(format!("access key {id:?} is given twice")));
            }
        }
        for issuer in &options.web_identity_issuers {
            options::check_web_identity_issuer(issuer).map_err(invalid)?;
        }
        for setting in &options.quotas {
            let op = &setting.operation;
            if op != "*" && state::Operation::from_name(op).is_none() {
                return Err(invalid(format!("quota {setting}: no operation {op}")));
            }
            setting
                .quota
                .check()
                .map_err(|reason| invalid(format!("quota {setting}: {reason}")))?;
        }
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        Ok(Self {
            listener,
            local_addr,
            emulator: Arc::new(Emulator::new(options)),
        })
    }

    /// The endpoint URL to give an SDK (`http://127.0.0.1:PORT`).
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.local_addr)
    }

    /// Serves until `shutdown` completes, with the event pump beside it (see `state`), which
    /// ends with it.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> io::Result<()> {
        let _pump = EndsOnDrop(tokio::spawn(self.emulator.clone().pump_events()));
        axum::serve(self.listener, router(self.emulator))
            .with_graceful_shutdown(shutdown)
            .await
    }

    /// Serves on a task of its own until the returned handle is stopped or dropped.
    pub fn spawn(self) -> RunningEmulator {
        let endpoint_url = self.endpoint_url();
        let local_addr = self.local_addr;
        let emulator = self.emulator.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(self.run_until(async {
            let _ = stopped.await;
        }));
        RunningEmulator {
            local_addr,
            endpoint_url,
            emulator,
            stop: Some(stop),
            task: Some(task),
        }
    }
}

/// A task that ends when this is dropped: the server's companion ends with it, however the
/// server ends.
struct EndsOnDrop(JoinHandle<()>);

impl Drop for EndsOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An emulator serving in the background.
#[derive(Debug)]
pub struct RunningEmulator {
    /// Where it listens.
    pub local_addr: SocketAddr,
    /// The endpoint URL to give an SDK.
    pub endpoint_url: String,
    emulator: Arc<Emulator>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<io::Result<()>>>,
}

impl RunningEmulator {
    /// The callback tokens an execution's Callback steps are waiting with, by step name (from
    /// the messages they sent), or `None` if there is no such execution. The execution may be
    /// of any account and region: its ARN names them.
    pub fn callback_tokens(&self, execution_arn: &str) -> Option<Vec<(String, String)>> {
        let messages = admin::callback_messages(&self.emulator, Some(execution_arn))?;
        let mut tokens: Vec<(String, String)> = Vec::new();
        for message in messages {
            let step = message["stepName"].as_str().unwrap_or_default().to_string();
            let token = message["body"]["token"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            tokens.retain(|(s, _)| *s != step);
            tokens.push((step, token));
        }
        Some(tokens)
    }

    /// Stops serving and waits for the server to end.
    pub async fn stop(mut self) -> io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(io::Error::other)?,
            None => Ok(()),
        }
    }
}

impl Drop for RunningEmulator {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use super::*;

    fn any_port() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    #[tokio::test]
    async fn the_event_pump_ends_with_the_server() {
        let options = EmulatorOptions {
            events_queues: vec!["events".into()],
            ..Default::default()
        };
        let server = EmulatorServer::bind(any_port(), &options).await.unwrap();
        let emulator = server.emulator.clone();
        let running = server.spawn();
        running.stop().await.unwrap();
        // The server's task and the pump held the only other references.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&emulator) > 1 {
            assert!(tokio::time::Instant::now() < deadline, "the pump runs on");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn access_keys_must_be_well_formed_and_given_once() {
        for (keys, wanted) in [
            (
                vec![AccessKey {
                    account_id: Some("1234".into()),
                    ..AccessKey::new("AKIDONE", "secret")
                }],
                "access key \"AKIDONE\": the account must be 12 digits",
            ),
            (
                vec![AccessKey::new("AKID ONE", "secret")],
                "access key \"AKID ONE\": the access key id must be",
            ),
            (
                vec![AccessKey::new("AKIDONE", "")],
                "access key \"AKIDONE\": the secret must be",
            ),
            (
                vec![
                    AccessKey::new("AKIDONE", "a"),
                    AccessKey::new("AKIDTWO", "b"),
                    AccessKey::new("AKIDONE", "c"),
                ],
                "access key \"AKIDONE\" is given twice",
            ),
        ] {
            let options = EmulatorOptions {
                access_keys: keys,
                ..Default::default()
            };
            let error = EmulatorServer::bind(any_port(), &options)
                .await
                .unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
            assert!(error.to_string().starts_with(wanted), "{error}");
        }
    }

    #[tokio::test]
    async fn a_web_identity_issuer_must_be_a_url() {
        let options = EmulatorOptions {
            web_identity_issuers: vec![
                "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE".into(),
                "oidc.eks.eu-west-1.amazonaws.com/id/OTHER".into(),
            ],
            ..Default::default()
        };
        let error = EmulatorServer::bind(any_port(), &options)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("/id/OTHER"), "{error}");
    }

    #[tokio::test]
    async fn an_events_queue_must_be_a_queue_name() {
        let options = EmulatorOptions {
            events_queues: vec!["ok".into(), "not.ok".into()],
            ..Default::default()
        };
        let error = EmulatorServer::bind(any_port(), &options)
            .await
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(error.to_string().contains("not.ok"), "{error}");
    }
}
