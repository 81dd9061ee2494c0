//! pipeline-control: a gRPC service that stops Amazon SageMaker pipeline executions safely.
//!
//! # Layout
//!
//! - [`config`]: the command line; every setting is a flag with an environment variable.
//! - [`app`]: builds the service (store migrated, port bound) and runs it until shutdown.
//! - [`shutdown`]: the signals that start a shutdown, and connections cut off after its grace.
//! - `grpc`: the `pipelinecontrol.v1.PipelineControl` service, one method per RPC, the
//!   generated contract ([`grpc::pb`]) and its codec (a request that does not decode is
//!   INVALID_ARGUMENT).
//! - `grpc::guard`: in front of the service: authentication, rate and concurrency limits,
//!   message size, request timeout.
//! - `auth`: who a caller is (bearer token, client certificate) and what the policy allows;
//!   token and policy files reloaded on SIGHUP.
//! - `error`: the service's errors and the only conversion to `tonic::Status`.
//! - `audit`: write-behind of audit events that change no record (replays).
//! - `stop`: StopExecution and GetStopRequest, the idempotency contract.
//! - `domain`: checked values (ARN, token, reason) and statuses, free of SDK and proto types.
//! - [`store`]: the stop-request store, one trait over Postgres and SQLite pools.
//! - `sagemaker`: the only code that touches the AWS SDK.
//! - `watch`: WatchExecution's shared pollers and streams.
//! - [`telemetry`]: logging, as text or JSON.
//!
//! - `demo`: `serve --emulator`, the emulator in-process with demo executions.
//! - `jitter`: spreading retries and polls.
//! - `hooks`: named points that tests can pause or fail (compiled out of release builds).

pub mod app;
mod audit;
mod auth;
mod background;
pub mod config;
mod demo;
mod domain;
mod error;
pub mod grpc;
mod hooks;
mod jitter;
mod sagemaker;
pub mod shutdown;
mod stop;
pub mod store;
pub mod telemetry;
mod watch;

pub use error::ERROR_DOMAIN;
