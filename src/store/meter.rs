//! Every store operation measured in one place: counted by result and timed (waiting for a
//! connection included), inside a client span named after it, under the caller's span.

use std::{sync::Arc, time::Instant};

use tracing::Instrument as _;

use super::{Backend, StoreError, dialect::Breaks};
use crate::metrics::Metrics;

/// Where the operations of one store are measured.
#[derive(Debug, Clone)]
pub(super) struct Meter {
    backend: Backend,
    /// `None`: counted nowhere (tools, tests), only traced.
    metrics: Option<Arc<Metrics>>,
    breaks: Arc<Breaks>,
}

impl Meter {
    pub(super) fn new(
        backend: Backend,
        metrics: Option<Arc<Metrics>>,
        breaks: Arc<Breaks>,
    ) -> Self {
        Self {
            backend,
            metrics,
            breaks,
        }
    }

    /// Runs `work` as the store operation `operation` (as the metrics name it).
    pub(super) async fn run<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // What runs every few seconds whatever callers do (the health checker's pings, the
        // leases of shared watching) would be a trace each time: measured, not traced.
        let span = if operation == "ping" || operation.starts_with("fleet_") {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "store",
                otel.name = format!("store {operation}"),
                otel.kind = "client",
                db.system.name = match self.backend {
                    Backend::Postgres => "postgresql",
                    Backend::Sqlite => "sqlite",
                },
                db.operation.name = operation,
                otel.status_code = tracing::field::Empty,
            )
        };
        let started = Instant::now();
        let result = work.instrument(span.clone()).await;
        if let Some(metrics) = &self.metrics {
            metrics.store(operation, result.is_ok(), started.elapsed());
        }
        if let Err(error) = &result {
            // A connection that failed marks the ones idle since as suspect (see `dialect`).
            if let StoreError::Unavailable(error) = error {
                self.breaks.note(error);
            }
            span.record("otel.status_code", "ERROR");
        }
        result
    }
}
