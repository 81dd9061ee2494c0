//! The integration tests: the real server on port 0, real databases (Postgres and SQLite), the
//! emulator, and real clients. One binary, one module per surface, so the tree links once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod auth;
mod batch;
mod browser;
mod cli;
mod client;
mod console;
mod estate;
mod executions;
mod failover;
mod fleet;
mod force;
mod history;
mod hostile;
mod iam;
mod identity;
mod input;
mod irsa;
mod metrics;
mod quotas;
mod reads;
mod server;
mod stop;
mod store;
mod telemetry;
mod watch;
