//! The stop-request store: where idempotency records and the audit trail live.
//!
//! One trait, [`Store`], and one implementation of it (`sql`) over either database: Postgres
//! for production (several replicas share it) or an embedded SQLite file for a single
//! process. Each operation is written once; what differs between the two databases
//! (placeholders, the database's clock, how a time is stored, how each connects and migrates)
//! is in `dialect`; each operation is measured in `meter`. [`connect`] picks the database from
//! its URL. The migrations
//! (`migrations/postgres`, `migrations/sqlite`) are embedded in the binary. On Postgres the
//! store also offers the shared watching of [`fleet`].

mod dialect;
pub(crate) mod fleet;
mod meter;
mod sql;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

pub use crate::domain::{
    AuthMethod, ExecutionArn, ExecutionStatus, Proof, RecordedError, StopOutcome,
};
use crate::metrics::Metrics;
use fleet::Fleet;
use sql::SqlStore;

/// How to reach the database (made from the command line's settings by `config`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// `postgres://user:password@host/db` for Postgres; `sqlite://path`, or a plain file path,
    /// for an SQLite file (created if missing).
    pub url: String,
    /// The most connections open at once.
    pub max_connections: u32,
    /// How long to wait for a connection (at start and per query) before giving up.
    pub timeout: Duration,
}

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
    /// A row holds a value this version does not know (written by a newer version, or by
    /// hand): a bug or a downgrade to look at, never something to guess at.
    #[error("stop_requests.{column} holds {value:?}, which this version does not know")]
    Decode { column: &'static str, value: String },
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
    pub pipeline_execution_arn: ExecutionArn,
    pub reason: String,
    /// SageMaker's ClientRequestToken for this key.
    pub upstream_token: String,
    /// `force_after`: how long after the claim Callback steps that still hold the execution
    /// are to be answered with a failure.
    pub force_after: Option<Duration>,
    /// How the principal was proven (not part of the key nor of the fingerprint: a caller
    /// proven another way replays its own requests).
    pub proof: Proof,
}

/// How a request ended: what every retry of its key replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The stop succeeded: its outcome, and the execution's status right after it.
    Stopped {
        outcome: StopOutcome,
        status: ExecutionStatus,
    },
    /// A final error, and the execution's status when it tells why (an execution already
    /// terminal).
    Refused {
        error: RecordedError,
        status: Option<ExecutionStatus>,
    },
}

impl Completion {
    /// The success outcome, if it is one.
    pub fn outcome(&self) -> Option<StopOutcome> {
        match self {
            Self::Stopped { outcome, .. } => Some(*outcome),
            Self::Refused { .. } => None,
        }
    }

    /// The recorded error, if it is one.
    pub fn error(&self) -> Option<RecordedError> {
        match self {
            Self::Stopped { .. } => None,
            Self::Refused { error, .. } => Some(*error),
        }
    }

    /// The execution status recorded with it.
    pub fn status(&self) -> Option<&ExecutionStatus> {
        match self {
            Self::Stopped { status, .. } => Some(status),
            Self::Refused { status, .. } => status.as_ref(),
        }
    }

    /// The `(outcome, error_code, execution_status)` columns.
    pub(crate) fn columns(&self) -> (Option<&'static str>, Option<&'static str>, Option<&str>) {
        (
            self.outcome().map(StopOutcome::as_str),
            self.error().map(RecordedError::as_str),
            self.status().map(ExecutionStatus::as_str),
        )
    }
}

/// Where a recorded request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed, not finished.
    Pending,
    /// Finished with an outcome or a final error.
    Completed(Completion),
}

impl RecordState {
    /// Read from the `state`, `outcome`, `error_code` and `execution_status` columns. A value
    /// this version does not know, or columns that disagree, are a decode error: never
    /// guessed at, since a guess would be replayed to callers for the record's lifetime.
    pub(crate) fn decode(
        state: &str,
        outcome: Option<&str>,
        error_code: Option<&str>,
        status: Option<&str>,
    ) -> Result<Self, StoreError> {
        let unknown = |column: &'static str, value: &str| StoreError::Decode {
            column,
            value: value.to_string(),
        };
        let status = status
            .map(|s| ExecutionStatus::known(s).ok_or_else(|| unknown("execution_status", s)))
            .transpose()?;
        match (state, outcome, error_code) {
            ("pending", None, None) => Ok(Self::Pending),
            ("completed", Some(outcome), None) => Ok(Self::Completed(Completion::Stopped {
                outcome: StopOutcome::parse(outcome).ok_or_else(|| unknown("outcome", outcome))?,
                status: status.ok_or_else(|| unknown("execution_status", "(none)"))?,
            })),
            ("completed", None, Some(code)) => Ok(Self::Completed(Completion::Refused {
                error: RecordedError::parse(code).ok_or_else(|| unknown("error_code", code))?,
                status,
            })),
            ("pending" | "completed", _, _) => Err(unknown(
                "outcome",
                "(an outcome and an error, or a pending row with either)",
            )),
            (other, _, _) => Err(unknown("state", other)),
        }
    }

    /// The completion, once completed.
    pub fn completion(&self) -> Option<&Completion> {
        match self {
            Self::Pending => None,
            Self::Completed(completion) => Some(completion),
        }
    }

    pub fn is_pending(&self) -> bool {
        matches!(self, Self::Pending)
    }
}

/// A recorded stop request (one row of `stop_requests`).
#[derive(Debug, Clone, PartialEq)]
pub struct StopRecord {
    pub key: RequestKey,
    /// How the principal was proven when the request was recorded; `None` for a record made
    /// before this was kept.
    pub auth_method: Option<AuthMethod>,
    pub fingerprint: String,
    pub method: String,
    pub pipeline_execution_arn: ExecutionArn,
    pub reason: String,
    pub upstream_token: String,
    pub state: RecordState,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Fencing epoch: bumped by every claim; writes by older epochs are refused.
    pub epoch: i64,
    /// How many times the request was claimed to be carried out.
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub expires_at: DateTime<Utc>,
    /// When the stop is to be forced (`force_after` after the claim), if it asked to be.
    pub force_at: Option<DateTime<Utc>>,
    /// When the forcing was carried out.
    pub forced_at: Option<DateTime<Utc>>,
    /// What the forcing could not do (a Lambda step), for people.
    pub force_note: Option<String>,
}

/// A callback a forced stop released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub step_name: String,
    pub callback_token: String,
    pub released_at: DateTime<Utc>,
}

/// What happened to a request, as the audit trail names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditKind {
    /// A new request was claimed.
    Received,
    /// A lease that ran out was taken over.
    TakenOver,
    /// The request completed.
    Completed,
    /// An attempt failed transiently and gave its lease back.
    FailedTransient,
    /// A retry was answered from the record.
    Replayed,
    /// The key came again with another request.
    KeyReused,
    /// An attempt ended in an answer that is not recorded (the request can be made afresh):
    /// the pending record was deleted.
    Discarded,
    /// A forced stop answered a Callback step with a failure.
    Released,
    /// A forced stop's deadline was carried out.
    Forced,
}

impl AuditKind {
    /// The `event` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Received => "received",
            Self::TakenOver => "taken_over",
            Self::Completed => "completed",
            Self::FailedTransient => "failed_transient",
            Self::Replayed => "replayed",
            Self::KeyReused => "key_reused",
            Self::Discarded => "discarded",
            Self::Released => "callback_released",
            Self::Forced => "forced",
        }
    }
}

/// The operations the service needs from its database: plain operations on rows. What to do
/// with them (claim, take over, wait) is the stop module's business.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Applies pending migrations. Harmless when there are none, and safe when several
    /// processes start at once (Postgres serializes them with an advisory lock).
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Checks that the database answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// What only a database shared by replicas offers: watching shared across them (see
    /// [`fleet`]), measured with the store's operations. `None` on SQLite.
    fn fleet(&self) -> Option<Arc<dyn Fleet>>;

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

    /// Takes over a pending record whose lease ran out (a new epoch, one more attempt), or
    /// `None` if it is not pending, still leased, or gone. `by`: how the caller that takes it
    /// over (a retry) was proven, for the audit row; `None` when no caller does (the
    /// completer), and the row carries the record's.
    async fn take_over(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
        by: Option<&Proof>,
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

    /// Deletes the pending record if `epoch` still holds it, with a `discarded` audit row that
    /// carries `reason` (an ErrorInfo reason): the attempt ended in an answer that is not
    /// recorded, and a retry with the same key starts afresh. `false` if fenced or gone.
    async fn discard(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// The live record under `key` (`None` if absent or past its expiry).
    async fn get(&self, key: &RequestKey) -> Result<Option<StopRecord>, StoreError>;

    /// Records a batch's selection unless its key has a live one; returns the one that stands
    /// (an expired one is replaced).
    async fn claim_batch(
        &self,
        batch: &NewBatch,
        retention: Duration,
    ) -> Result<StoredBatch, StoreError>;

    /// The live batch under `key` (`inserted` is `false`).
    async fn batch(&self, key: &RequestKey) -> Result<Option<StoredBatch>, StoreError>;

    /// Live records as `query` asks, newest first (see [`ListQuery`]).
    async fn list(&self, query: &ListQuery) -> Result<Vec<StopRecord>, StoreError>;

    /// Keys of completed stops whose force deadline has come and has not been carried out
    /// (and whose force lease, if any, ran out), earliest first.
    async fn due_forces(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError>;

    /// Claims a due force for `owner` (a new epoch, a lease), or `None` if it is not due,
    /// done, or held by a live lease.
    async fn claim_force(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError>;

    /// Records a released callback, with its audit row, if `epoch` still holds the record;
    /// `false` if fenced.
    async fn record_release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        step_name: &str,
        callback_token: &str,
    ) -> Result<bool, StoreError>;

    /// Marks the force carried out (with what it could not do), with its audit row, if
    /// `epoch` still holds the record; `false` if fenced.
    async fn finish_force(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        note: Option<&str>,
    ) -> Result<bool, StoreError>;

    /// The callbacks released for the record under `key`, oldest first.
    async fn releases(&self, key: &RequestKey) -> Result<Vec<Release>, StoreError>;

    /// Keys of pending records whose lease ran out, oldest first.
    async fn expired_leases(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError>;

    /// Deletes up to `limit` records past their expiry, up to `limit` batches and up to
    /// `limit` releases of records that are gone; returns the most any of the three deleted
    /// (`limit`: there may be more).
    async fn delete_expired(&self, limit: u32) -> Result<u64, StoreError>;

    /// Deletes up to `limit` audit rows older than `retention` (by the database clock), oldest
    /// first; returns how many.
    async fn delete_old_audit(&self, retention: Duration, limit: u32) -> Result<u64, StoreError>;

    /// Appends events that change no record (replays, reused keys) to the audit trail, in one
    /// statement. They do not wait for the disk: losing the last few in a crash is acceptable,
    /// slowing every replay is not.
    async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
}

/// A StopExecutions batch to record: which executions it selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewBatch {
    pub key: RequestKey,
    /// Hex SHA-256 of the canonical batch request.
    pub fingerprint: String,
    pub pipeline_arn: String,
    /// Execution ARNs, newest first.
    pub selected: Vec<String>,
    /// More were Executing than the batch's limit.
    pub truncated: bool,
}

/// A recorded batch: this attempt's, or an earlier attempt's of the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBatch {
    pub fingerprint: String,
    pub selected: Vec<String>,
    pub truncated: bool,
    /// Recorded by this call (`false`: an earlier attempt's).
    pub inserted: bool,
}

/// Which stop requests to list, newest first: the order is (creation time, principal, client
/// token), descending, and a page continues after the last record of the previous one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// One principal's requests; every principal's with `None`.
    pub principal: Option<String>,
    /// Only this pipeline's executions.
    pub pipeline_arn: Option<String>,
    /// Only this execution.
    pub execution_arn: Option<String>,
    /// Only records after this one in the order.
    pub after: Option<ListCursor>,
    pub limit: u32,
}

/// A record's place in the listing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: DateTime<Utc>,
    pub principal: String,
    pub token: String,
}

impl ListCursor {
    pub fn of(record: &StopRecord) -> Self {
        Self {
            created_at: record.created_at,
            principal: record.key.principal.clone(),
            token: record.key.token.clone(),
        }
    }
}

/// One audit-trail row written outside a record's own transactions.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub at: DateTime<Utc>,
    pub principal: String,
    /// How the caller whose call it records was proven (a replay's own caller, not the
    /// record's).
    pub proof: Proof,
    pub token: String,
    pub pipeline_execution_arn: String,
    pub reason: String,
    pub kind: AuditKind,
    pub outcome: Option<StopOutcome>,
    pub error: Option<RecordedError>,
    pub epoch: i64,
    pub worker: String,
}

impl AuditEvent {
    /// `kind` about `record`, now, by `worker`, in a call of a caller proven `by`.
    pub fn about(record: &StopRecord, kind: AuditKind, by: &Proof, worker: &str) -> Self {
        let completion = record.state.completion();
        Self {
            at: Utc::now(),
            principal: record.key.principal.clone(),
            proof: by.clone(),
            token: record.key.token.clone(),
            pipeline_execution_arn: record.pipeline_execution_arn.to_string(),
            reason: record.reason.clone(),
            kind,
            outcome: completion.and_then(Completion::outcome),
            error: completion.and_then(Completion::error),
            epoch: record.epoch,
            worker: worker.to_string(),
        }
    }
}

/// Connects to the database `settings.url` names: `postgres://` or `postgresql://` for
/// Postgres, `sqlite:` or a plain file path for SQLite (the file is created if missing).
pub async fn connect(settings: &Settings) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqlStore::connect(settings, None).await?))
}

/// [`connect`], with each operation measured into `metrics`.
pub(crate) async fn connect_measured(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(Arc::new(SqlStore::connect(settings, Some(metrics)).await?))
}
