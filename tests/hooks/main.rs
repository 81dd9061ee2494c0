//! The tests that drive the code through its test hooks (`--features test-hooks`): crashes at
//! each step of a stop, and shutdown while calls are paused in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

#[path = "../common/mod.rs"]
#[macro_use]
mod common;

mod crash;
mod force;
mod shutdown;
mod watch;
