//! Named hooks on the paths whose timing and failure handling matter: tests use them to hold a
//! call in flight, or to abandon work at a precise point, and check what the service does.
//!
//! Built on the `fail` crate: a hook is a `fail_point!`, which compiles to nothing unless the
//! crate's `failpoints` feature is on. Only the test build turns it on (see Cargo.toml).

use std::time::Duration;

/// Held while a gRPC handler of ours starts: a test configures it with `return(<ms>)` to keep
/// a call in flight for that long.
pub(crate) const HANDLER_ENTRY: &str = "grpc::handler_entry";

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
