//! The store, written once for both databases (what differs between them is in `dialect`):
//! each operation is its SQL, its arguments and one of a few ways to run a statement, and runs
//! through [`SqlStore::run`], which measures it.

use std::{borrow::Cow, sync::Arc, time::Duration};

use async_trait::async_trait;
use sqlx::{
    Database, Encode, FromRow, SqlSafeStr, Type,
    postgres::PgRow,
    query::{Query, QueryAs},
    sqlite::SqliteRow,
};

use super::{
    AuditEvent, AuditKind, AuthMethod, Backend, Completion, ListQuery, NewBatch, NewStopRequest,
    Proof, RecordState, RecordedError, Release, RequestKey, Settings, StopOutcome, StopRecord,
    Store, StoreError, StoredBatch,
    dialect::{Arg, Breaks, Pool, Time, args, on_pool},
    fleet::{Fleet, PostgresFleet},
    meter::Meter,
};
use crate::{domain::ExecutionArn, metrics::Metrics};

/// Audit events per INSERT statement.
const AUDIT_ROWS_PER_STATEMENT: usize = 500;

/// The columns of an audit row about a record.
const AUDIT_COLUMNS: &str = "principal, client_token, pipeline_execution_arn, reason, event, \
                             outcome, error_code, epoch, worker, detail, auth_method, \
                             auth_session";

/// The store on a Postgres or an SQLite pool.
#[derive(Debug, Clone)]
pub(crate) struct SqlStore {
    pool: Pool,
    meter: Meter,
}

impl SqlStore {
    pub(crate) async fn connect(
        settings: &Settings,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Self, StoreError> {
        let breaks = Arc::new(Breaks::new());
        let pool = Pool::connect(settings, &breaks).await?;
        let meter = Meter::new(pool.backend(), metrics, breaks);
        Ok(Self { pool, meter })
    }

    /// The first row `statement` returns, if any.
    async fn optional<O: Decoded>(
        &self,
        statement: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<O>, StoreError> {
        let statement = self.pool.sql(statement);
        Ok(on_pool!(&self.pool, |pool| {
            bind_as(statement, args).fetch_optional(pool).await?
        }))
    }

    /// The rows `statement` returns.
    async fn all<O: Decoded>(
        &self,
        statement: impl Into<Cow<'static, str>>,
        args: &[Arg<'_>],
    ) -> Result<Vec<O>, StoreError> {
        let statement = self.pool.sql(statement);
        Ok(on_pool!(&self.pool, |pool| {
            bind_as(statement, args).fetch_all(pool).await?
        }))
    }

    /// How many rows `statement` changed.
    async fn execute(&self, statement: &'static str, args: &[Arg<'_>]) -> Result<u64, StoreError> {
        let statement = self.pool.sql(statement);
        Ok(on_pool!(&self.pool, |pool| {
            bind(statement, args).execute(pool).await?.rows_affected()
        }))
    }

    /// The record `statement` returns, if any.
    async fn record(
        &self,
        statement: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Option<StopRecord>, StoreError> {
        let row: Option<StopRow> = self.optional(statement, args).await?;
        row.map(StopRecord::try_from).transpose()
    }

    /// The keys `statement` returns (`principal`, `client_token`).
    async fn keys(
        &self,
        statement: &'static str,
        args: &[Arg<'_>],
    ) -> Result<Vec<RequestKey>, StoreError> {
        let rows: Vec<(String, String)> = self.all(statement, args).await?;
        Ok(rows
            .into_iter()
            .map(|(principal, token)| RequestKey { principal, token })
            .collect())
    }

    /// Changes a record with `statement` (an INSERT, UPDATE or DELETE of `stop_requests`,
    /// `... RETURNING *`) and writes `audit` about it, atomically: the record as the change
    /// left it, or `None` when nothing matched (and no audit row is written).
    async fn change(
        &self,
        statement: &'static str,
        args: &[Arg<'_>],
        audit: Audit<'_>,
    ) -> Result<Option<StopRecord>, StoreError> {
        let row: Option<StopRow> = match &self.pool {
            // One statement: one round trip, one implicit transaction.
            Pool::Postgres(pool) => {
                let n = args.len();
                let statement = format!(
                    "WITH changed AS ({statement}),
                     audited AS (
                         INSERT INTO stop_audit ({AUDIT_COLUMNS})
                         SELECT principal, client_token, pipeline_execution_arn, reason, ${},
                             outcome, COALESCE(${}, error_code), epoch, ${}, ${},
                             COALESCE(${}, auth_method), ${}
                         FROM changed)
                     SELECT * FROM changed",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5,
                    n + 6
                );
                let audit = args![
                    audit.kind.as_str(),
                    audit.error,
                    audit.worker,
                    audit.detail,
                    audit.by.map(|by| by.method.as_str()),
                    audit.session(),
                ];
                bind_as(self.pool.sql(statement), &[args, &audit[..]].concat())
                    .fetch_optional(pool)
                    .await?
            }
            // SQLite writes nothing in a WITH clause: a transaction of two statements.
            Pool::Sqlite(pool) => {
                let mut tx = pool.begin_with(self.pool.begin_write()).await?;
                let row: Option<StopRow> = bind_as(self.pool.sql(statement), args)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(row) = &row {
                    bind(self.pool.sql(AUDIT_ROW), &audit.about(row))
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                row
            }
        };
        row.map(StopRecord::try_from).transpose()
    }

    /// The live batch under `key`.
    async fn live_batch(&self, key: &RequestKey) -> Result<Option<StoredBatch>, StoreError> {
        let select = "SELECT fingerprint, selected, truncated FROM stop_batches
             WHERE principal = $1 AND client_token = $2 AND expires_at > now()";
        let row = self
            .optional(select, &args![&key.principal, &key.token])
            .await?;
        Ok(row.map(|row| stored_batch(row, false)))
    }
}

/// What a row decodes into, from either database.
trait Decoded: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin {}

impl<T> Decoded for T where
    T: for<'r> FromRow<'r, PgRow> + for<'r> FromRow<'r, SqliteRow> + Send + Unpin
{
}

/// `statement` with `args` bound, `$1` first.
fn bind<'q, DB: Database>(
    statement: impl SqlSafeStr,
    args: &[Arg<'q>],
) -> Query<'q, DB, DB::Arguments>
where
    Arg<'q>: Encode<'q, DB> + Type<DB>,
{
    args.iter()
        .fold(sqlx::query(statement), |query, arg| query.bind(*arg))
}

/// [`bind`], for rows decoded as `O`.
fn bind_as<'q, DB: Database, O>(
    statement: impl SqlSafeStr,
    args: &[Arg<'q>],
) -> QueryAs<'q, DB, O, DB::Arguments>
where
    Arg<'q>: Encode<'q, DB> + Type<DB>,
    O: for<'r> FromRow<'r, DB::Row>,
{
    args.iter()
        .fold(sqlx::query_as(statement), |query, arg| query.bind(*arg))
}

/// The audit row a change of a record writes with it.
struct Audit<'a> {
    kind: AuditKind,
    /// The worker that made the change.
    worker: &'a str,
    /// The error code, when it is not the record's own (why an attempt was discarded).
    error: Option<&'a str>,
    /// What the event is about beyond the record (the released callback, what a force could
    /// not do).
    detail: Option<&'a str>,
    /// How the caller whose call made the change was proven (the one that made the record, a
    /// retry that takes a record over); `None` when no caller did (the completer): the row
    /// carries the record's method, and no session.
    by: Option<&'a Proof>,
}

/// One audit row about a record (see [`Audit::about`]).
const AUDIT_ROW: &str = "INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn,
         reason, event, outcome, error_code, epoch, worker, detail, auth_method, auth_session)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

impl<'a> Audit<'a> {
    fn of(kind: AuditKind, worker: &'a str) -> Self {
        Self {
            kind,
            worker,
            error: None,
            detail: None,
            by: None,
        }
    }

    /// The session name of the caller whose call made the change, if it has one.
    fn session(&self) -> Option<&'a str> {
        self.by.and_then(|by| by.session.as_deref())
    }

    /// The arguments of [`AUDIT_ROW`] about `row`.
    fn about(&self, row: &'a StopRow) -> [Arg<'a>; 12] {
        args![
            &row.principal,
            &row.client_token,
            &row.pipeline_execution_arn,
            &row.reason,
            self.kind.as_str(),
            row.outcome.as_deref(),
            self.error.or(row.error_code.as_deref()),
            row.epoch,
            self.worker,
            self.detail,
            self.by
                .map(|by| by.method.as_str())
                .or(row.auth_method.as_deref()),
            self.session(),
        ]
    }
}

/// A `stop_requests` row, as either database returns it.
#[derive(Debug, FromRow)]
struct StopRow {
    principal: String,
    /// NULL in rows recorded before the method was kept.
    auth_method: Option<String>,
    client_token: String,
    fingerprint: String,
    method: String,
    pipeline_execution_arn: String,
    reason: String,
    upstream_token: String,
    state: String,
    outcome: Option<String>,
    error_code: Option<String>,
    execution_status: Option<String>,
    lease_owner: Option<String>,
    lease_expires_at: Option<Time>,
    epoch: i64,
    attempts: i32,
    last_error: Option<String>,
    created_at: Time,
    updated_at: Time,
    completed_at: Option<Time>,
    expires_at: Time,
    force_at: Option<Time>,
    forced_at: Option<Time>,
    force_note: Option<String>,
}

impl TryFrom<StopRow> for StopRecord {
    type Error = StoreError;

    fn try_from(row: StopRow) -> Result<Self, StoreError> {
        let state = RecordState::decode(
            &row.state,
            row.outcome.as_deref(),
            row.error_code.as_deref(),
            row.execution_status.as_deref(),
        )?;
        let pipeline_execution_arn =
            ExecutionArn::parse(&row.pipeline_execution_arn).map_err(|_| StoreError::Decode {
                column: "pipeline_execution_arn",
                value: row.pipeline_execution_arn.clone(),
            })?;
        let auth_method = row
            .auth_method
            .map(|method| {
                AuthMethod::parse(&method).ok_or(StoreError::Decode {
                    column: "auth_method",
                    value: method,
                })
            })
            .transpose()?;
        let time = |time: Option<Time>| time.map(|Time(time)| time);
        Ok(Self {
            key: RequestKey {
                principal: row.principal,
                token: row.client_token,
            },
            auth_method,
            fingerprint: row.fingerprint,
            method: row.method,
            pipeline_execution_arn,
            reason: row.reason,
            upstream_token: row.upstream_token,
            state,
            lease_owner: row.lease_owner,
            lease_expires_at: time(row.lease_expires_at),
            epoch: row.epoch,
            attempts: i64::from(row.attempts),
            last_error: row.last_error,
            created_at: row.created_at.0,
            updated_at: row.updated_at.0,
            completed_at: time(row.completed_at),
            expires_at: row.expires_at.0,
            force_at: time(row.force_at),
            forced_at: time(row.forced_at),
            force_note: row.force_note,
        })
    }
}

/// A `stop_batches` row (`fingerprint`, `selected`, `truncated`).
fn stored_batch(
    (fingerprint, selected, truncated): (String, String, bool),
    inserted: bool,
) -> StoredBatch {
    StoredBatch {
        fingerprint,
        selected: selected.lines().map(str::to_string).collect(),
        truncated,
        inserted,
    }
}

#[async_trait]
impl Store for SqlStore {
    fn backend(&self) -> Backend {
        self.pool.backend()
    }

    fn fleet(&self) -> Option<Arc<dyn Fleet>> {
        match &self.pool {
            Pool::Postgres(pool) => Some(Arc::new(PostgresFleet::new(
                pool.clone(),
                self.meter.clone(),
            ))),
            Pool::Sqlite(_) => None,
        }
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.pool.migrate().await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.meter
            .run("ping", self.execute("SELECT 1", &[]))
            .await
            .map(drop)
    }

    async fn close(&self) {
        on_pool!(&self.pool, |pool| pool.close().await);
    }

    async fn insert_new(
        &self,
        request: &NewStopRequest,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        let (key, arn) = (&request.key, &request.pipeline_execution_arn);
        // A new row, or a fresh start in place of an expired one (its epoch keeps rising, so a
        // worker of the old incarnation stays fenced off).
        let insert = "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
                 pipeline_execution_arn, pipeline_arn, reason, upstream_token, state,
                 lease_owner, lease_expires_at, epoch, attempts, expires_at, force_at,
                 auth_method)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, now() + $10, 1, 1,
                 now() + $11, now() + $12, $13)
             ON CONFLICT (principal, client_token) DO UPDATE SET
                 fingerprint = EXCLUDED.fingerprint, method = EXCLUDED.method,
                 pipeline_execution_arn = EXCLUDED.pipeline_execution_arn,
                 pipeline_arn = EXCLUDED.pipeline_arn,
                 reason = EXCLUDED.reason, upstream_token = EXCLUDED.upstream_token,
                 state = 'pending', lease_owner = EXCLUDED.lease_owner,
                 lease_expires_at = EXCLUDED.lease_expires_at, epoch = stop_requests.epoch + 1,
                 attempts = 1, outcome = NULL, error_code = NULL, execution_status = NULL,
                 last_error = NULL, created_at = now(), updated_at = now(), completed_at = NULL,
                 expires_at = EXCLUDED.expires_at, force_at = EXCLUDED.force_at,
                 forced_at = NULL, force_note = NULL, auth_method = EXCLUDED.auth_method
             WHERE stop_requests.expires_at <= now()
             RETURNING *";
        let args = args![
            &key.principal,
            &key.token,
            &request.fingerprint,
            &request.method,
            arn,
            arn.pipeline(),
            &request.reason,
            &request.upstream_token,
            owner,
            lease,
            retention,
            request.force_after,
            request.proof.method.as_str(),
        ];
        let audit = Audit {
            by: Some(&request.proof),
            ..Audit::of(AuditKind::Received, owner)
        };
        self.meter
            .run("insert_new", self.change(insert, &args, audit))
            .await
    }

    async fn take_over(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
        by: Option<&Proof>,
    ) -> Result<Option<StopRecord>, StoreError> {
        let update = "UPDATE stop_requests
             SET lease_owner = $3, lease_expires_at = now() + $4,
                 epoch = epoch + 1, attempts = attempts + 1, updated_at = now()
             WHERE principal = $1 AND client_token = $2 AND state = 'pending'
               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
               AND expires_at > now()
             RETURNING *";
        let args = args![&key.principal, &key.token, owner, lease];
        let audit = Audit {
            by,
            ..Audit::of(AuditKind::TakenOver, owner)
        };
        self.meter
            .run("take_over", self.change(update, &args, audit))
            .await
    }

    async fn complete(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        completion: &Completion,
    ) -> Result<Option<StopRecord>, StoreError> {
        let (outcome, error_code, status) = completion.columns();
        let update = "UPDATE stop_requests
             SET state = 'completed', outcome = $4, error_code = $5, execution_status = $6,
                 completed_at = now(), updated_at = now(), lease_owner = NULL,
                 lease_expires_at = NULL,
                 -- Only a stop that left the execution Stopping can need forcing.
                 force_at = CASE WHEN $4 IN ('STOP_REQUESTED', 'ALREADY_STOPPING')
                     THEN force_at END
             WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND state = 'pending'
             RETURNING *";
        let args = args![
            &key.principal,
            &key.token,
            epoch,
            outcome,
            error_code,
            status
        ];
        let audit = Audit::of(AuditKind::Completed, owner);
        self.meter
            .run("complete", self.change(update, &args, audit))
            .await
    }

    async fn release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let update = "UPDATE stop_requests
             SET lease_owner = NULL, lease_expires_at = now(), last_error = $4, updated_at = now()
             WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND state = 'pending'
             RETURNING *";
        let args = args![&key.principal, &key.token, epoch, error];
        let audit = Audit::of(AuditKind::FailedTransient, owner);
        let changed = self.meter.run("release", self.change(update, &args, audit));
        Ok(changed.await?.is_some())
    }

    async fn discard(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let delete = "DELETE FROM stop_requests
             WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND state = 'pending'
             RETURNING *";
        let args = args![&key.principal, &key.token, epoch];
        let audit = Audit {
            error: Some(reason),
            ..Audit::of(AuditKind::Discarded, owner)
        };
        let changed = self.meter.run("discard", self.change(delete, &args, audit));
        Ok(changed.await?.is_some())
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<StopRecord>, StoreError> {
        let select = "SELECT * FROM stop_requests
             WHERE principal = $1 AND client_token = $2 AND expires_at > now()";
        self.meter
            .run(
                "get",
                self.record(select, &args![&key.principal, &key.token]),
            )
            .await
    }

    async fn claim_batch(
        &self,
        batch: &NewBatch,
        retention: Duration,
    ) -> Result<StoredBatch, StoreError> {
        let insert = "INSERT INTO stop_batches (principal, client_token, fingerprint,
                 pipeline_arn, selected, truncated, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, now() + $7)
             ON CONFLICT (principal, client_token) DO UPDATE SET
                 fingerprint = EXCLUDED.fingerprint, pipeline_arn = EXCLUDED.pipeline_arn,
                 selected = EXCLUDED.selected, truncated = EXCLUDED.truncated,
                 created_at = now(), expires_at = EXCLUDED.expires_at
             WHERE stop_batches.expires_at <= now()
             RETURNING fingerprint, selected, truncated";
        let selected = batch.selected.join("\n");
        let args = args![
            &batch.key.principal,
            &batch.key.token,
            &batch.fingerprint,
            &batch.pipeline_arn,
            &selected,
            batch.truncated,
            retention,
        ];
        self.meter
            .run("claim_batch", async {
                match self.optional(insert, &args).await? {
                    Some(row) => Ok(stored_batch(row, true)),
                    // A live batch stands under the key: an earlier attempt's. (Gone meanwhile
                    // only if it expired and was swept in between; a retry then starts afresh.)
                    None => self
                        .live_batch(&batch.key)
                        .await?
                        .ok_or(StoreError::Unavailable(sqlx::Error::RowNotFound)),
                }
            })
            .await
    }

    async fn batch(&self, key: &RequestKey) -> Result<Option<StoredBatch>, StoreError> {
        self.meter.run("batch", self.live_batch(key)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<StopRecord>, StoreError> {
        // Only the conditions asked for, so that the planner sees which index serves them.
        let mut select = String::from("SELECT * FROM stop_requests WHERE expires_at > now()");
        let mut args = Vec::new();
        for (column, value) in [
            ("principal", query.principal.as_deref()),
            ("pipeline_arn", query.pipeline_arn.as_deref()),
            ("pipeline_execution_arn", query.execution_arn.as_deref()),
        ] {
            if let Some(value) = value {
                args.push(Arg::from(value));
                select.push_str(&format!(" AND {column} = ${}", args.len()));
            }
        }
        if let Some(after) = &query.after {
            args.extend(args![after.created_at, &after.principal, &after.token]);
            let n = args.len();
            select.push_str(&format!(
                " AND (created_at, principal, client_token) < (${}, ${}, ${n})",
                n - 2,
                n - 1,
            ));
        }
        select.push_str(&format!(
            " ORDER BY created_at DESC, principal DESC, client_token DESC LIMIT {}",
            query.limit
        ));
        self.meter
            .run("list", async {
                let rows: Vec<StopRow> = self.all(select, &args).await?;
                rows.into_iter().map(StopRecord::try_from).collect()
            })
            .await
    }

    async fn due_forces(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        let select = "SELECT principal, client_token FROM stop_requests
             WHERE force_at IS NOT NULL AND forced_at IS NULL AND force_at <= now()
               AND state = 'completed' AND outcome IN ('STOP_REQUESTED', 'ALREADY_STOPPING')
               AND expires_at > now()
               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
             ORDER BY force_at
             LIMIT $1";
        self.meter
            .run("due_forces", self.keys(select, &args![limit]))
            .await
    }

    async fn claim_force(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        let update = "UPDATE stop_requests
             SET lease_owner = $3, lease_expires_at = now() + $4, epoch = epoch + 1,
                 updated_at = now()
             WHERE principal = $1 AND client_token = $2 AND force_at IS NOT NULL
               AND forced_at IS NULL AND force_at <= now() AND state = 'completed'
               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
             RETURNING *";
        let args = args![&key.principal, &key.token, owner, lease];
        self.meter
            .run("claim_force", self.record(update, &args))
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
        let detail = format!("step {step_name}, callback token {callback_token}");
        let audit = Audit {
            detail: Some(&detail),
            ..Audit::of(AuditKind::Released, owner)
        };
        // The record stays locked until the end, so that a newer epoch's claim waits.
        let held = self.pool.sql(
            "SELECT * FROM stop_requests
             WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND lease_owner = $4
             FOR UPDATE",
        );
        let insert = self.pool.sql(
            "INSERT INTO stop_releases (principal, client_token, callback_token, step_name,
                 epoch, worker)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT DO NOTHING",
        );
        let held_args = args![&key.principal, &key.token, epoch, owner];
        let insert_args = args![
            &key.principal,
            &key.token,
            callback_token,
            step_name,
            epoch,
            owner
        ];
        self.meter
            .run("record_release", async {
                on_pool!(&self.pool, |pool| {
                    let mut tx = pool.begin_with(self.pool.begin_write()).await?;
                    let held: Option<StopRow> =
                        bind_as(held, &held_args).fetch_optional(&mut *tx).await?;
                    let Some(held) = held else {
                        return Ok(false);
                    };
                    let released = bind(insert, &insert_args).execute(&mut *tx).await?;
                    // Once per release: a later epoch that finds it recorded writes no second
                    // audit row.
                    if released.rows_affected() > 0 {
                        bind(self.pool.sql(AUDIT_ROW), &audit.about(&held))
                            .execute(&mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                    Ok(true)
                })
            })
            .await
    }

    async fn finish_force(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let update = "UPDATE stop_requests
             SET forced_at = now(), force_note = $5, lease_owner = NULL, lease_expires_at = NULL,
                 updated_at = now()
             WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND lease_owner = $4
               AND forced_at IS NULL
             RETURNING *";
        let args = args![&key.principal, &key.token, epoch, owner, note];
        let audit = Audit {
            detail: note,
            ..Audit::of(AuditKind::Forced, owner)
        };
        let changed = self
            .meter
            .run("finish_force", self.change(update, &args, audit));
        Ok(changed.await?.is_some())
    }

    async fn releases(&self, key: &RequestKey) -> Result<Vec<Release>, StoreError> {
        let select = "SELECT r.step_name, r.callback_token, r.released_at
             FROM stop_releases r JOIN stop_requests q
               ON q.principal = r.principal AND q.client_token = r.client_token
             WHERE r.principal = $1 AND r.client_token = $2 AND r.released_at >= q.created_at
             ORDER BY r.released_at, r.callback_token";
        self.meter
            .run("releases", async {
                let rows: Vec<(String, String, Time)> =
                    self.all(select, &args![&key.principal, &key.token]).await?;
                Ok(rows
                    .into_iter()
                    .map(|(step_name, callback_token, Time(released_at))| Release {
                        step_name,
                        callback_token,
                        released_at,
                    })
                    .collect())
            })
            .await
    }

    async fn expired_leases(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        let select = "SELECT principal, client_token FROM stop_requests
             WHERE state = 'pending' AND lease_expires_at <= now() AND expires_at > now()
             ORDER BY lease_expires_at
             LIMIT $1";
        self.meter
            .run("expired_leases", self.keys(select, &args![limit]))
            .await
    }

    async fn delete_expired(&self, limit: u32) -> Result<u64, StoreError> {
        let deletes = [
            "DELETE FROM stop_requests WHERE (principal, client_token) IN (
                 SELECT principal, client_token FROM stop_requests
                 WHERE expires_at <= now() ORDER BY expires_at LIMIT $1)",
            "DELETE FROM stop_batches WHERE (principal, client_token) IN (
                 SELECT principal, client_token FROM stop_batches
                 WHERE expires_at <= now() ORDER BY expires_at LIMIT $1)",
            // The releases of records that are gone or expired.
            "DELETE FROM stop_releases WHERE (principal, client_token, callback_token) IN (
                 SELECT r.principal, r.client_token, r.callback_token
                 FROM stop_releases r LEFT JOIN stop_requests q
                   ON q.principal = r.principal AND q.client_token = r.client_token
                 WHERE q.principal IS NULL OR q.expires_at <= now() LIMIT $1)",
        ];
        self.meter
            .run("delete_expired", async {
                // The largest: a table whose batch came back full has more to delete.
                let mut most = 0;
                for delete in deletes {
                    most = most.max(self.execute(delete, &args![limit]).await?);
                }
                Ok(most)
            })
            .await
    }

    async fn delete_old_audit(&self, retention: Duration, limit: u32) -> Result<u64, StoreError> {
        let delete = "DELETE FROM stop_audit WHERE id IN (
                 SELECT id FROM stop_audit WHERE at < now() - $1 ORDER BY at LIMIT $2)";
        self.meter
            .run(
                "delete_old_audit",
                self.execute(delete, &args![retention, limit]),
            )
            .await
    }

    async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        self.meter
            .run("audit", async {
                for chunk in events.chunks(AUDIT_ROWS_PER_STATEMENT) {
                    let mut insert = String::from(
                    "INSERT INTO stop_audit (at, principal, client_token, pipeline_execution_arn,
                         reason, event, outcome, error_code, epoch, worker, auth_method,
                         auth_session) VALUES ",
                );
                    let mut args = Vec::new();
                    for event in chunk {
                        let first = args.len() + 1;
                        args.extend(args![
                            event.at,
                            &event.principal,
                            &event.token,
                            &event.pipeline_execution_arn,
                            &event.reason,
                            event.kind.as_str(),
                            event.outcome.map(StopOutcome::as_str),
                            event.error.map(RecordedError::as_str),
                            event.epoch,
                            &event.worker,
                            event.proof.method.as_str(),
                            event.proof.session.as_deref(),
                        ]);
                        let row: Vec<String> =
                            (first..=args.len()).map(|n| format!("${n}")).collect();
                        if first > 1 {
                            insert.push_str(", ");
                        }
                        insert.push_str(&format!("({})", row.join(", ")));
                    }
                    match &self.pool {
                        // Not waiting for the disk (see the trait).
                        Pool::Postgres(pool) => {
                            let mut tx = pool.begin().await?;
                            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                                .execute(&mut *tx)
                                .await?;
                            bind(self.pool.sql(insert), &args).execute(&mut *tx).await?;
                            tx.commit().await?;
                        }
                        // SQLite's commits never wait for the disk (see `dialect`).
                        Pool::Sqlite(pool) => {
                            bind(self.pool.sql(insert), &args).execute(pool).await?;
                        }
                    }
                }
                Ok(())
            })
            .await
    }
}
