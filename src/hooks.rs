//! Named hooks on the paths whose timing and failure handling matter: tests use them to hold a
//! call in flight, or to abandon work at a precise point, and check what the service does.
//!
//! Built on the `fail` crate: a hook is a `fail_point!`, which compiles to nothing unless this
//! crate's `test-hooks` feature (and so `fail/failpoints`) is on. Only scripts/test turns it on.

use std::time::Duration;

use crate::error::Error;

/// Reached as each gRPC handler of ours starts: a test configures a callback to learn that a
/// call is in flight.
pub(crate) const HANDLER_ENTERED: &str = "grpc::handler_entered";

/// Right after [`HANDLER_ENTERED`]: a test configures it with `return(<ms>)` to keep the call
/// in flight for that long.
pub(crate) const HANDLER_PAUSE: &str = "grpc::handler_pause";

/// After a stop request is claimed, before SageMaker is called.
pub(crate) const STOP_AFTER_CLAIM: &str = "stop::after_claim";
/// After SageMaker answered a stop, before the outcome is recorded.
pub(crate) const STOP_AFTER_UPSTREAM: &str = "stop::after_upstream";
/// After the outcome is recorded, before the caller is answered.
pub(crate) const STOP_AFTER_RECORD: &str = "stop::after_record";
/// Before a shared poller that holds its lease gives it up (its watchers left, or shutdown):
/// a test configures `return(<ms>)` to make the release late.
pub(crate) const WATCH_BEFORE_RELEASE: &str = "watch::before_release";
/// Before a shared poller that holds its lease publishes what it read (its own watchers have
/// it already): a test configures `return(<ms>)` to make the publication late.
pub(crate) const WATCH_BEFORE_PUBLISH: &str = "watch::before_publish";
/// After a forced stop answered a Callback step upstream, before the release is recorded.
pub(crate) const FORCE_AFTER_RELEASE: &str = "force::after_release";

/// Abandons the work in hand, as a crash would (the lease is left to run out), when a test
/// configured hook `name` with `return`.
pub(crate) fn abandon_if_set(name: &'static str) -> Result<(), Error> {
    let _ = name; // unused when hooks are compiled out
    fail::fail_point!(name, |_| Err(Error::Abandoned(name)));
    Ok(())
}

/// Runs whatever a test configured at hook `name` (typically a callback); nothing otherwise.
pub(crate) fn reached(name: &'static str) {
    let _ = name; // unused when hooks are compiled out
    fail::fail_point!(name);
}

/// Waits for as long as a test configured hook `name` to (`return(<milliseconds>)`); nothing
/// otherwise.
pub(crate) async fn pause(name: &'static str) {
    if let Some(delay) = configured_delay(name) {
        tokio::time::sleep(delay).await;
    }
}

fn configured_delay(name: &'static str) -> Option<Duration> {
    let _ = name; // unused when hooks are compiled out
    fail::fail_point!(name, |arg: Option<String>| {
        arg.and_then(|ms| ms.trim().parse::<u64>().ok())
            .map(Duration::from_millis)
    });
    None
}

/// The hooks every gRPC handler of ours passes as it starts.
pub(crate) async fn handler_entry() {
    reached(HANDLER_ENTERED);
    pause(HANDLER_PAUSE).await;
}
