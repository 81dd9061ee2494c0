//! pipeline-control: a gRPC service that stops Amazon SageMaker pipeline executions safely.
//!
//! # Layout
//!
//! Start-up and shutdown (the binary's command line, `Cli`, is in `main.rs`):
//! - [`config`]: the settings of the service's commands; every setting is a flag with an
//!   environment variable, its default declared once (clap's), turned into each module's own
//!   settings type.
//! - [`app`]: `Application::build` constructs the whole service and binds its ports; `run`
//!   starts its tasks, serves and drains. The cancellation tree of a running service is drawn
//!   there.
//! - `background`: the rounds of a running service (health checker, completer and forcer,
//!   retention of records and audit rows, reload on SIGHUP), stopped together.
//! - [`shutdown`]: the signals that start a shutdown, and connections cut off after its grace.
//! - `demo`: `serve --emulator`, the emulator (crate `sagemaker-emulator`) in-process with demo
//!   executions.
//!
//! The contract and the gRPC surface (the only code that builds `tonic::Status`):
//! - [`pb`]: the generated contract (messages, server, client, descriptor set) and its codec (a
//!   request that does not decode is INVALID_ARGUMENT). The service and the command line use it.
//! - `grpc`: the `pipelinecontrol.v1.PipelineControl` service, one method per RPC (validate,
//!   authorize, call the domain, convert) and `grpc::convert` (domain to proto).
//! - `grpc::guard`: in front of the service: authentication, rate and concurrency limits,
//!   message size, request timeout.
//! - `grpc::observe`: in front of every service (and of the guard): go-grpc-middleware's
//!   server metrics, and with traces on, a server span per call under the caller's
//!   `traceparent`.
//! - `error`: the service's errors and the only conversion to `tonic::Status`.
//!
//! The web console for people on call (`--console-listen`), beside the gRPC surface:
//! - `console`: server-rendered pages over the same domain code and policy as the service,
//!   live over Server-Sent Events from the shared pollers; every state change a same-origin
//!   POST carrying a client token.
//!
//! The domain (no proto, no SDK types):
//! - `domain`: checked values (ARN, token, reason, principal), how a caller was proven,
//!   statuses, outcomes, actions.
//! - `holding`: what a Callback or Lambda step holding a stop means, in words (the service and
//!   the command line both say it).
//! - `auth`: who a caller is (bearer token, client certificate, and what the platform proves:
//!   a JWT of a configured issuer, whose key sets it fetches and caches, a signed
//!   sts:GetCallerIdentity that STS answers, or a trusted mesh proxy's header) and how it was
//!   proven, and what the policy allows; token, policy and identity files reloaded on SIGHUP.
//! - `caller_identity`: the signed sts:GetCallerIdentity an IAM caller presents, as the
//!   service and the command line both spell it.
//! - `stop`: StopExecution and GetStopRequest, the idempotency contract: claiming, carrying
//!   out, waiting for duplicates, completing abandoned requests; `stop::force`: forcing a stuck
//!   stop when its `force_after` deadline comes.
//! - `history`: ListStopRequests: who stopped what, newest first, in keyset pages, with the
//!   policy's `audit` lists.
//! - `watch`: WatchExecution's shared pollers and streams of domain events; `watch::feed`: the
//!   poller of a replica that shares reading with the others on one Postgres (holder,
//!   follower, or alone: `watch::role`).
//! - `events`: push from EventBridge: the SQS queues whose events wake pollers up;
//!   `events::push`: whether events flow, per account and region, which pollers read.
//! - `batch`: StopExecutions: a pipeline's Executing executions selected, recorded and
//!   stopped a few at a time, each as StopExecution would.
//! - `reads`: GetExecution's reads of SageMaker, shared: answered from the last read when it
//!   is younger than the poll interval (a poller's or another GetExecution's), else coalesced
//!   with a read in flight.
//! - `rate`: each principal's rates: StopExecution's, which StopExecutions spends too, and the
//!   reads of SageMaker.
//! - `audit`: write-behind of audit events that change no record (replays).
//!
//! The edges:
//! - [`store`]: the stop-request store: one implementation over Postgres and SQLite (a small
//!   dialect for placeholders, the database's clock and times), its metrics measured in one
//!   place, and `store::fleet`, the shared watching rows and notifications of Postgres.
//! - `estate`: every account and region served: the accounts file (reloaded on SIGHUP), the
//!   refusal of what it does not list, and the cached SageMaker client of each (account,
//!   region), with roles assumed through STS.
//! - `sagemaker`: the only code that calls SageMaker through the AWS SDK, one client per
//!   (account, region), its attempts and the sorting of its failures.
//! - `pace`: the pace of the calls to each (account, region), one lane per operation, that
//!   slows down when SageMaker throttles and grows back while it answers.
//! - `recent`: what this process lately read of executions and changed (stops, answered
//!   callbacks): the last read of each, which answers while younger than the poll interval,
//!   and never once the service changed the execution after the read began.
//! - `files`: reading the TOML settings files (tokens, policy, accounts) with one-line errors.
//! - [`telemetry`]: logging, as text or JSON, and traces exported over OTLP/gRPC.
//! - `metrics`: the registry of one running service and its metrics; `metrics::server`:
//!   `GET /metrics` on a port of its own.
//! - `jitter`: spreading retries and polls.
//! - `visible`: text from callers and from SageMaker made visible and harmless (control,
//!   bidirectional and invisible characters as escapes) wherever people see it.
//! - `hooks`: named points that tests can pause or fail (compiled out of release builds).
//!
//! The command line for people:
//! - [`client`]: `stop`, `get`, `watch` and `history`, clients of a running service through
//!   the generated client of the contract ([`pb`]), with a live view on a terminal.
//!
//! Imports point one way, downwards: `app` → `grpc`/`console` → the domain → the edges → `domain` and
//! `error`; the command line imports only `pb` and small shared vocabulary. No module imports
//! one that imports it back: `scripts/check-imports` (run by `scripts/test`) fails if one does.

pub mod app;
mod audit;
mod auth;
mod background;
mod batch;
mod caller_identity;
pub mod client;
pub mod config;
mod console;
mod demo;
mod domain;
mod error;
mod estate;
mod events;
mod files;
pub mod grpc;
mod history;
mod holding;
mod hooks;
mod jitter;
mod metrics;
mod pace;
pub mod pb;
mod rate;
mod reads;
mod recent;
mod sagemaker;
pub mod shutdown;
mod stop;
pub mod store;
pub mod telemetry;
mod visible;
mod watch;

pub use error::ERROR_DOMAIN;
