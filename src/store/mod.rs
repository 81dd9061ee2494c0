//! The stop-request store: where idempotency records and the audit trail live.
//!
//! One trait, [`Store`], with two implementations over concrete sqlx pools: [`PostgresStore`]
//! for production (several replicas share it) and [`SqliteStore`], an embedded file for a
//! single process. [`connect`] picks one from the database URL. Each implementation owns its
//! SQL and its migrations (`migrations/postgres`, `migrations/sqlite`), embedded in the binary.

mod postgres;
mod sqlite;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::DatabaseArgs;

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// Which database a store uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A Postgres server.
    Postgres,
    /// An embedded SQLite file.
    Sqlite,
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL cannot be used at all.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The database could not be reached when connecting.
    #[error("cannot connect to {target}: {source}")]
    Connect {
        /// Where we tried to connect, without credentials.
        target: String,
        /// What went wrong.
        #[source]
        source: sqlx::Error,
    },
    /// A migration failed.
    #[error("cannot migrate the database: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database failed while serving a query (unreachable, timed out, shutting down...).
    #[error("database error: {0}")]
    Unavailable(#[from] sqlx::Error),
}

/// An idempotency key: who asked, with which token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestKey {
    /// The authenticated principal (`anonymous` without authentication).
    pub principal: String,
    /// The client's token.
    pub token: String,
}

/// A stop request about to be claimed.
#[derive(Debug, Clone)]
pub struct NewStopRequest {
    pub key: RequestKey,
    /// Hex SHA-256 of the canonical request.
    pub fingerprint: String,
    /// The RPC (`StopExecution`).
    pub method: String,
    pub pipeline_execution_arn: String,
    pub reason: String,
    /// SageMaker's ClientRequestToken for this key.
    pub upstream_token: String,
}

/// Where a recorded request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed, not finished.
    Pending,
    /// Finished with an outcome or a final error.
    Completed,
}

impl RecordState {
    fn parse(value: &str) -> Self {
        if value == "completed" {
            Self::Completed
        } else {
            Self::Pending
        }
    }
}

/// A recorded stop request (one row of `stop_requests`).
#[derive(Debug, Clone, PartialEq)]
pub struct StopRecord {
    pub key: RequestKey,
    pub fingerprint: String,
    pub method: String,
    pub pipeline_execution_arn: String,
    pub reason: String,
    pub upstream_token: String,
    pub state: RecordState,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Fencing epoch: bumped by every claim; writes by older epochs are refused.
    pub epoch: i64,
    /// How many times the request was claimed to be carried out.
    pub attempts: i64,
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub execution_status: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
}

/// What claiming a key found.
#[derive(Debug, Clone, PartialEq)]
pub enum Claim {
    /// The caller now holds the lease at `record.epoch`: new, or taken over from a lease that
    /// ran out.
    Acquired(StopRecord),
    /// Someone else's record: completed, in progress under a live lease, or made by a
    /// different request (compare fingerprints).
    Existing(StopRecord),
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// A success: STOP_REQUESTED, ALREADY_STOPPING or ALREADY_STOPPED.
    pub outcome: Option<String>,
    /// A final error: its ErrorInfo reason.
    pub error_code: Option<String>,
    /// The execution status known at completion (SageMaker's spelling).
    pub execution_status: Option<String>,
}

/// The operations the service needs from its database.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Applies pending migrations. Harmless when there are none, and safe when several
    /// processes start at once (Postgres serializes them with an advisory lock).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Closes the pool, waiting for connections in use to be returned.
    async fn close(&self);

    /// Records a new request as pending under a lease held by `owner` (its first attempt),
    /// with the `received` audit event, unless the key has a live record (`None`). A record
    /// past its expiry counts as absent: it is replaced, with a higher epoch.
    async fn insert_new(
        &self,
        request: &NewStopRequest,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<Option<StopRecord>, StoreError>;

    /// Claims a request: records it when new, takes over a pending record of the same request
    /// whose lease ran out, or returns the record that stands.
    async fn claim(
        &self,
        request: &NewStopRequest,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<Claim, StoreError> {
        // Twice at most: a record can vanish between the insert and the read only by being
        // swept after its expiry, and then the next insert succeeds.
        for _ in 0..2 {
            if let Some(record) = self.insert_new(request, owner, lease, retention).await? {
                return Ok(Claim::Acquired(record));
            }
            let Some(existing) = self.get(&request.key).await? else {
                continue;
            };
            if existing.state == RecordState::Pending && existing.fingerprint == request.fingerprint
            {
                // Conditional on the lease having run out; a live lease is left alone.
                if let Some(record) = self.take_over(&request.key, owner, lease).await? {
                    return Ok(Claim::Acquired(record));
                }
            }
            return Ok(Claim::Existing(existing));
        }
        Err(StoreError::Unavailable(sqlx::Error::RowNotFound))
    }

    /// Takes over a pending record whose lease ran out (a new epoch, one more attempt), or
    /// `None` if it is not pending, still leased, or gone.
    async fn take_over(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError>;

    /// Completes the record if `epoch` still holds it; `None` if a newer epoch does (fenced)
    /// or it is no longer pending.
    async fn complete(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        completion: &Completion,
    ) -> Result<Option<StopRecord>, StoreError>;

    /// Gives up the lease after a transient failure, so that the next retry (or the
    /// background completer) resumes at once. `false` if `epoch` no longer holds it.
    async fn release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        error: &str,
    ) -> Result<bool, StoreError>;

    /// The live record under `key` (`None` if absent or past its expiry).
    async fn get(&self, key: &RequestKey) -> Result<Option<StopRecord>, StoreError>;

    /// Keys of pending records whose lease ran out, oldest first.
    async fn expired_leases(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError>;

    /// Deletes up to `limit` records past their expiry; returns how many.
    async fn delete_expired(&self, limit: u32) -> Result<u64, StoreError>;

    /// Appends events that change no record (replays, reused keys) to the audit trail, in one
    /// statement. They do not wait for the disk: losing the last few in a crash is acceptable,
    /// slowing every replay is not.
    async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
}

/// One audit-trail row written outside a record's own transactions.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub principal: String,
    pub token: String,
    pub pipeline_execution_arn: String,
    pub reason: String,
    pub event: String,
    pub outcome: Option<String>,
    pub error_code: Option<String>,
    pub epoch: i64,
    pub worker: String,
}

impl AuditEvent {
    /// `event` about `record`, now, by `worker`.
    pub fn about(record: &StopRecord, event: &str, worker: &str) -> Self {
        Self {
            at: Utc::now(),
            principal: record.key.principal.clone(),
            token: record.key.token.clone(),
            pipeline_execution_arn: record.pipeline_execution_arn.clone(),
            reason: record.reason.clone(),
            event: event.to_string(),
            outcome: record.outcome.clone(),
            error_code: record.error_code.clone(),
            epoch: record.epoch,
            worker: worker.to_string(),
        }
    }
}

/// Audit events per INSERT statement.
const AUDIT_ROWS_PER_STATEMENT: usize = 500;

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Connects to the database the URL names: `postgres://` or `postgresql://` for Postgres,
/// `sqlite:` or a plain file path for SQLite (the file is created if missing).
pub async fn connect(args: &DatabaseArgs) -> Result<Arc<dyn Store>, StoreError> {
    let url = args.database_url.trim();
    if url.is_empty() {
        return Err(StoreError::InvalidUrl("the database URL is empty".into()));
    }
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("postgres" | "postgresql") => Ok(Arc::new(PostgresStore::connect(url, args).await?)),
        Some("sqlite") => Ok(Arc::new(SqliteStore::connect(url, args).await?)),
        Some(other) => Err(StoreError::InvalidUrl(format!(
            "unsupported scheme `{other}://`; use postgres://, sqlite:// or a file path"
        ))),
        None if url.starts_with("sqlite:") => Ok(Arc::new(SqliteStore::connect(url, args).await?)),
        None => Ok(Arc::new(SqliteStore::connect_file(url, args).await?)),
    }
}
