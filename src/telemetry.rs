//! Logging: tracing to standard output, readable lines by default or one JSON object a line.
//! Standard error is kept for the one-line fatal error `main` prints.

use std::io::IsTerminal as _;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber. An invalid filter falls back to `info` with a warning
/// rather than refusing to start.
pub fn init(format: LogFormat, filter: &str) {
    let (filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(filter) => (filter, None),
        Err(error) => (EnvFilter::new("info"), Some(error)),
    };
    let builder = fmt()
        .with_env_filter(filter)
        .with_target(true)
        // Colours only for a person at a terminal, never in files or pipes.
        .with_ansi(std::io::stdout().is_terminal());
    let installed = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if let (Ok(()), Some(error)) = (installed, bad_filter) {
        tracing::warn!(%error, "invalid log filter; logging at info");
    }
}
