//! A [`Store`] that measures another: each operation counted by result and timed (waiting for
//! a connection included), inside a client span named after it, under the call's span.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use async_trait::async_trait;
use tracing::Instrument as _;

use super::{
    AuditEvent, Backend, Completion, ListQuery, NewBatch, NewStopRequest, Release, RequestKey,
    StopRecord, Store, StoreError, StoredBatch,
};
use crate::metrics::Metrics;

/// `inner`, measured into `metrics`.
pub(crate) fn metered(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Arc<dyn Store> {
    Arc::new(Metered { inner, metrics })
}

#[derive(Debug)]
struct Metered {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl Metered {
    async fn measure<T>(
        &self,
        operation: &'static str,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let system = match self.inner.backend() {
            Backend::Postgres => "postgresql",
            Backend::Sqlite => "sqlite",
        };
        // The health checker's pings would be a trace every few seconds: measured, not traced.
        let span = if operation == "ping" {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "store",
                otel.name = format!("store {operation}"),
                otel.kind = "client",
                db.system.name = system,
                db.operation.name = operation,
                otel.status_code = tracing::field::Empty,
            )
        };
        let started = Instant::now();
        let result = work.instrument(span.clone()).await;
        self.metrics
            .store(operation, result.is_ok(), started.elapsed());
        if result.is_err() {
            span.record("otel.status_code", "ERROR");
        }
        result
    }
}

#[async_trait]
impl Store for Metered {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn postgres_pool(&self) -> Option<sqlx::PgPool> {
        self.inner.postgres_pool()
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.measure("ping", self.inner.ping()).await
    }

    async fn close(&self) {
        self.inner.close().await;
    }

    async fn insert_new(
        &self,
        request: &NewStopRequest,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        self.measure(
            "insert_new",
            self.inner.insert_new(request, owner, lease, retention),
        )
        .await
    }

    async fn take_over(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        self.measure("take_over", self.inner.take_over(key, owner, lease))
            .await
    }

    async fn complete(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        completion: &Completion,
    ) -> Result<Option<StopRecord>, StoreError> {
        self.measure(
            "complete",
            self.inner.complete(key, epoch, owner, completion),
        )
        .await
    }

    async fn release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        self.measure("release", self.inner.release(key, epoch, owner, error))
            .await
    }

    async fn discard(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.measure("discard", self.inner.discard(key, epoch, owner, reason))
            .await
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<StopRecord>, StoreError> {
        self.measure("get", self.inner.get(key)).await
    }

    async fn claim_batch(
        &self,
        batch: &NewBatch,
        retention: Duration,
    ) -> Result<StoredBatch, StoreError> {
        self.measure("claim_batch", self.inner.claim_batch(batch, retention))
            .await
    }

    async fn batch(&self, key: &RequestKey) -> Result<Option<StoredBatch>, StoreError> {
        self.measure("batch", self.inner.batch(key)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<StopRecord>, StoreError> {
        self.measure("list", self.inner.list(query)).await
    }

    async fn due_forces(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        self.measure("due_forces", self.inner.due_forces(limit))
            .await
    }

    async fn claim_force(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        self.measure("claim_force", self.inner.claim_force(key, owner, lease))
            .await
    }

    async fn record_release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        step_name: &str,
        callback_token: &str,
    ) -> Result<bool, StoreError> {
        self.measure(
            "record_release",
            self.inner
                .record_release(key, epoch, owner, step_name, callback_token),
        )
        .await
    }

    async fn finish_force(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.measure(
            "finish_force",
            self.inner.finish_force(key, epoch, owner, note),
        )
        .await
    }

    async fn releases(&self, key: &RequestKey) -> Result<Vec<Release>, StoreError> {
        self.measure("releases", self.inner.releases(key)).await
    }

    async fn expired_leases(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        self.measure("expired_leases", self.inner.expired_leases(limit))
            .await
    }

    async fn delete_expired(&self, limit: u32) -> Result<u64, StoreError> {
        self.measure("delete_expired", self.inner.delete_expired(limit))
            .await
    }

    async fn delete_old_audit(&self, retention: Duration, limit: u32) -> Result<u64, StoreError> {
        self.measure(
            "delete_old_audit",
            self.inner.delete_old_audit(retention, limit),
        )
        .await
    }

    async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.measure("audit", self.inner.audit(events)).await
    }
}
