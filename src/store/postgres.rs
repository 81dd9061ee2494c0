//! The Postgres store: production, shared by every replica. Uses the database clock for leases
//! and expiry; migrations are serialized across replicas by sqlx's advisory lock.

use std::{
    str::FromStr,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use sqlx::{
    PgPool, Row as _,
    postgres::{PgConnectOptions, PgPoolOptions, PgRow},
};

use super::{
    AUDIT_ROWS_PER_STATEMENT, AuditEvent, AuditKind, Backend, Completion, ListQuery, NewBatch,
    NewStopRequest, RecordState, RecordedError, Release, RequestKey, Settings, StopOutcome,
    StopRecord, Store, StoreError, StoredBatch, seconds,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A store on a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    /// When a statement last failed for its connection's sake (the database restarted, the
    /// network dropped): milliseconds since `epoch`, 0 for never.
    broken_at: Arc<AtomicU64>,
    epoch: Instant,
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL), failing within the configured timeout.
    pub async fn connect(url: &str, settings: &Settings) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(format!("{e}")))?;
        Self::connect_with(options, settings).await
    }

    /// Connects with parsed options (tests use this to pick a fresh database).
    pub async fn connect_with(
        options: PgConnectOptions,
        settings: &Settings,
    ) -> Result<Self, StoreError> {
        let target = describe(&options);
        let epoch = Instant::now();
        let broken_at = Arc::new(AtomicU64::new(0));
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            // No ping before each use: a round trip before every statement (sqlx still pings a
            // connection when it is given back, off the caller's path). A connection that
            // died fails its next statement instead (STORE_UNAVAILABLE, which callers retry;
            // every write is one atomic statement) and is discarded; the health checker
            // notices an outage within its interval. A stop whose outcome could not be
            // recorded then waits for its lease to run out before a retry or the completer
            // finishes it.
            .test_before_acquire(false)
            // Those that sat idle since a statement failed for its connection are very likely
            // dead too (a restart or an outage takes them all): they are closed when next
            // lent instead of failing one more caller each, at no cost in normal running.
            .before_acquire({
                let broken_at = broken_at.clone();
                move |_conn, meta| {
                    let broken_at = broken_at.load(Ordering::Relaxed);
                    let since_break = epoch
                        .elapsed()
                        .saturating_sub(Duration::from_millis(broken_at));
                    let keep = broken_at == 0 || meta.idle_for < since_break;
                    Box::pin(async move { Ok(keep) })
                }
            })
            .acquire_timeout(settings.timeout)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect { target, source })?;
        Ok(Self {
            pool,
            broken_at,
            epoch,
        })
    }

    /// A failed statement as a store error, noting when the failure was the connection's.
    fn failed(&self, error: sqlx::Error) -> StoreError {
        if matches!(
            error,
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
        ) {
            let at = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.broken_at.store(at.max(1), Ordering::Relaxed);
        }
        StoreError::Unavailable(error)
    }

    /// The pool, for tests and tools that inspect the rows.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Names the database without its password, for error messages and logs.
fn describe(options: &PgConnectOptions) -> String {
    let database = options.get_database().unwrap_or("(default)");
    match options.get_socket() {
        Some(socket) => format!(
            "postgres database `{database}` on socket {} as `{}`",
            socket.display(),
            options.get_username()
        ),
        None => format!(
            "postgres database `{database}` at {}:{} as `{}`",
            options.get_host(),
            options.get_port(),
            options.get_username()
        ),
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn postgres_pool(&self) -> Option<PgPool> {
        Some(self.pool.clone())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    async fn close(&self) {
        self.pool.close().await;
    }

    async fn insert_new(
        &self,
        request: &NewStopRequest,
        owner: &str,
        lease: Duration,
        retention: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        let key = &request.key;
        // One statement, with its audit row: a new row, or a fresh start in place of an expired
        // one (its epoch keeps rising, so a worker of the old incarnation stays fenced off).
        static INSERT: LazyLock<String> = LazyLock::new(|| {
            with_audit(
                "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
                 pipeline_execution_arn, pipeline_arn, reason, upstream_token, state,
                 lease_owner, lease_expires_at, epoch, attempts, expires_at, force_at)
             VALUES ($1, $2, $3, $4, $5, split_part($5, '/execution/', 1), $6, $7, 'pending',
                 $8, now() + make_interval(secs => $9), 1, 1,
                 now() + make_interval(secs => $10), now() + make_interval(secs => $11))
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
                 forced_at = NULL, force_note = NULL
             WHERE stop_requests.expires_at <= now()
             RETURNING *",
                AuditKind::Received,
                8,
            )
        });
        let inserted = sqlx::query(sqlx::AssertSqlSafe(INSERT.as_str()))
            .bind(&key.principal)
            .bind(&key.token)
            .bind(&request.fingerprint)
            .bind(&request.method)
            .bind(&request.pipeline_execution_arn)
            .bind(&request.reason)
            .bind(&request.upstream_token)
            .bind(owner)
            .bind(seconds(lease))
            .bind(seconds(retention))
            .bind(request.force_after.map(seconds))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(inserted.as_ref().map(record).transpose()?)
    }

    async fn take_over(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        static TAKE_OVER: LazyLock<String> = LazyLock::new(|| {
            with_audit(
                "UPDATE stop_requests
                 SET lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4),
                     epoch = epoch + 1, attempts = attempts + 1, updated_at = now()
                 WHERE principal = $1 AND client_token = $2 AND state = 'pending'
                   AND (lease_expires_at IS NULL OR lease_expires_at <= now())
                   AND expires_at > now()
                 RETURNING *",
                AuditKind::TakenOver,
                3,
            )
        });
        let row = sqlx::query(sqlx::AssertSqlSafe(TAKE_OVER.as_str()))
            .bind(&key.principal)
            .bind(&key.token)
            .bind(owner)
            .bind(seconds(lease))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(row.as_ref().map(record).transpose()?)
    }

    async fn complete(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        completion: &Completion,
    ) -> Result<Option<StopRecord>, StoreError> {
        let (outcome, error_code, status) = completion.columns();
        static COMPLETE: LazyLock<String> = LazyLock::new(|| {
            with_audit(
                "UPDATE stop_requests
                 SET state = 'completed', outcome = $4, error_code = $5, execution_status = $6,
                     completed_at = now(), updated_at = now(), lease_owner = NULL,
                     lease_expires_at = NULL,
                     -- Only a stop that left the execution Stopping can need forcing.
                     force_at = CASE WHEN $4 IN ('STOP_REQUESTED', 'ALREADY_STOPPING')
                         THEN force_at END
                 WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND state = 'pending'
                 RETURNING *",
                AuditKind::Completed,
                7,
            )
        });
        let row = sqlx::query(sqlx::AssertSqlSafe(COMPLETE.as_str()))
            .bind(&key.principal)
            .bind(&key.token)
            .bind(epoch)
            .bind(outcome)
            .bind(error_code)
            .bind(status)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(row.as_ref().map(record).transpose()?)
    }

    async fn release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        static RELEASE: LazyLock<String> = LazyLock::new(|| {
            with_audit(
                "UPDATE stop_requests
                 SET lease_owner = NULL, lease_expires_at = now(), last_error = $4,
                     updated_at = now()
                 WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND state = 'pending'
                 RETURNING *",
                AuditKind::FailedTransient,
                5,
            )
        });
        let row = sqlx::query(sqlx::AssertSqlSafe(RELEASE.as_str()))
            .bind(&key.principal)
            .bind(&key.token)
            .bind(epoch)
            .bind(error)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(row.is_some())
    }

    async fn discard(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "WITH discarded AS (
                 DELETE FROM stop_requests
                 WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND state = 'pending'
                 RETURNING *),
             audited AS (
                 INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason,
                     event, error_code, epoch, worker)
                 SELECT principal, client_token, pipeline_execution_arn, reason, 'discarded', $5,
                     epoch, $4
                 FROM discarded)
             SELECT epoch FROM discarded",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .bind(owner)
        .bind(reason)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(row.is_some())
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<StopRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT * FROM stop_requests
             WHERE principal = $1 AND client_token = $2 AND expires_at > now()",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(row.as_ref().map(record).transpose()?)
    }

    async fn claim_batch(
        &self,
        batch: &NewBatch,
        retention: Duration,
    ) -> Result<StoredBatch, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO stop_batches (principal, client_token, fingerprint, pipeline_arn,
                 selected, truncated, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))
             ON CONFLICT (principal, client_token) DO UPDATE SET
                 fingerprint = EXCLUDED.fingerprint, pipeline_arn = EXCLUDED.pipeline_arn,
                 selected = EXCLUDED.selected, truncated = EXCLUDED.truncated,
                 created_at = now(), expires_at = EXCLUDED.expires_at
             WHERE stop_batches.expires_at <= now()
             RETURNING fingerprint, selected, truncated",
        )
        .bind(&batch.key.principal)
        .bind(&batch.key.token)
        .bind(&batch.fingerprint)
        .bind(&batch.pipeline_arn)
        .bind(batch.selected.join("\n"))
        .bind(batch.truncated)
        .bind(seconds(retention))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        match inserted {
            Some(row) => stored_batch(&row, true),
            // A live batch stands under the key: an earlier attempt's. (Gone meanwhile only
            // if it expired and was swept in between; a retry then starts afresh.)
            None => self
                .batch(&batch.key)
                .await?
                .ok_or(StoreError::Unavailable(sqlx::Error::RowNotFound)),
        }
    }

    async fn batch(&self, key: &RequestKey) -> Result<Option<StoredBatch>, StoreError> {
        let row = sqlx::query(
            "SELECT fingerprint, selected, truncated FROM stop_batches
             WHERE principal = $1 AND client_token = $2 AND expires_at > now()",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        row.as_ref().map(|row| stored_batch(row, false)).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<StopRecord>, StoreError> {
        // Only the conditions asked for, so that the planner sees which index serves them.
        let mut sql = String::from("SELECT * FROM stop_requests WHERE expires_at > now()");
        let mut texts: Vec<&str> = Vec::new();
        for (column, value) in [
            ("principal", query.principal.as_deref()),
            ("pipeline_arn", query.pipeline_arn.as_deref()),
            ("pipeline_execution_arn", query.execution_arn.as_deref()),
        ] {
            if let Some(value) = value {
                texts.push(value);
                sql.push_str(&format!(" AND {column} = ${}", texts.len()));
            }
        }
        let after = query.after.as_ref();
        if after.is_some() {
            let n = texts.len();
            sql.push_str(&format!(
                " AND (created_at, principal, client_token) < (${}, ${}, ${})",
                n + 1,
                n + 2,
                n + 3
            ));
        }
        sql.push_str(&format!(
            " ORDER BY created_at DESC, principal DESC, client_token DESC LIMIT {}",
            query.limit
        ));
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        for text in texts {
            statement = statement.bind(text);
        }
        if let Some(after) = after {
            statement = statement
                .bind(after.created_at)
                .bind(&after.principal)
                .bind(&after.token);
        }
        let rows = statement
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.failed(e))?;
        rows.iter().map(record).collect()
    }

    async fn due_forces(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT principal, client_token FROM stop_requests
             WHERE force_at IS NOT NULL AND forced_at IS NULL AND force_at <= now()
               AND state = 'completed' AND outcome IN ('STOP_REQUESTED', 'ALREADY_STOPPING')
               AND expires_at > now()
               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
             ORDER BY force_at
             LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        keys(&rows)
    }

    async fn claim_force(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        let row = sqlx::query(
            "UPDATE stop_requests
             SET lease_owner = $3, lease_expires_at = now() + make_interval(secs => $4),
                 epoch = epoch + 1, updated_at = now()
             WHERE principal = $1 AND client_token = $2 AND force_at IS NOT NULL
               AND forced_at IS NULL AND force_at <= now() AND state = 'completed'
               AND (lease_expires_at IS NULL OR lease_expires_at <= now())
             RETURNING *",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .bind(owner)
        .bind(seconds(lease))
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(row.as_ref().map(record).transpose()?)
    }

    async fn record_release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        step_name: &str,
        callback_token: &str,
    ) -> Result<bool, StoreError> {
        let held: i64 = sqlx::query_scalar(
            "WITH held AS (
                 SELECT principal, client_token, pipeline_execution_arn, reason, epoch
                 FROM stop_requests
                 WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND lease_owner = $4
                 FOR UPDATE),
             released AS (
                 INSERT INTO stop_releases (principal, client_token, callback_token, step_name,
                     epoch, worker)
                 SELECT principal, client_token, $6, $5, epoch, $4 FROM held
                 ON CONFLICT DO NOTHING RETURNING 1),
             audited AS (
                 INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason,
                     event, epoch, worker, detail)
                 SELECT principal, client_token, pipeline_execution_arn, reason,
                     'callback_released', epoch, $4, 'step ' || $5 || ', callback token ' || $6
                 FROM held WHERE EXISTS (SELECT 1 FROM released))
             SELECT count(*) FROM held",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .bind(owner)
        .bind(step_name)
        .bind(callback_token)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(held > 0)
    }

    async fn finish_force(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let changed: i64 = sqlx::query_scalar(
            "WITH changed AS (
                 UPDATE stop_requests
                 SET forced_at = now(), force_note = $5, lease_owner = NULL,
                     lease_expires_at = NULL, updated_at = now()
                 WHERE principal = $1 AND client_token = $2 AND epoch = $3 AND lease_owner = $4
                   AND forced_at IS NULL
                 RETURNING *),
             audited AS (
                 INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason,
                     event, outcome, error_code, epoch, worker, detail)
                 SELECT principal, client_token, pipeline_execution_arn, reason, 'forced',
                     outcome, error_code, epoch, $4, $5
                 FROM changed)
             SELECT count(*) FROM changed",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .bind(owner)
        .bind(note)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(changed > 0)
    }

    async fn releases(&self, key: &RequestKey) -> Result<Vec<Release>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.step_name, r.callback_token, r.released_at
             FROM stop_releases r JOIN stop_requests q
               ON q.principal = r.principal AND q.client_token = r.client_token
             WHERE r.principal = $1 AND r.client_token = $2 AND r.released_at >= q.created_at
             ORDER BY r.released_at, r.callback_token",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        rows.iter()
            .map(|row| {
                Ok(Release {
                    step_name: row.try_get("step_name")?,
                    callback_token: row.try_get("callback_token")?,
                    released_at: row.try_get("released_at")?,
                })
            })
            .collect()
    }

    async fn expired_leases(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        let rows = sqlx::query(
            "SELECT principal, client_token FROM stop_requests
             WHERE state = 'pending' AND lease_expires_at <= now() AND expires_at > now()
             ORDER BY lease_expires_at
             LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        keys(&rows)
    }

    async fn delete_expired(&self, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM stop_requests WHERE ctid IN (
                 SELECT ctid FROM stop_requests WHERE expires_at <= now()
                 ORDER BY expires_at LIMIT $1)",
        )
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        let batches = sqlx::query(
            "DELETE FROM stop_batches WHERE ctid IN (
                 SELECT ctid FROM stop_batches WHERE expires_at <= now()
                 ORDER BY expires_at LIMIT $1)",
        )
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        // The releases of records that are gone or expired.
        let releases = sqlx::query(
            "DELETE FROM stop_releases WHERE ctid IN (
                 SELECT r.ctid FROM stop_releases r LEFT JOIN stop_requests q
                   ON q.principal = r.principal AND q.client_token = r.client_token
                 WHERE q.principal IS NULL OR q.expires_at <= now() LIMIT $1)",
        )
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        // The largest: a table whose batch came back full has more to delete.
        Ok(done
            .rows_affected()
            .max(batches.rows_affected())
            .max(releases.rows_affected()))
    }

    async fn delete_old_audit(&self, retention: Duration, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "DELETE FROM stop_audit WHERE id IN (
                 SELECT id FROM stop_audit WHERE at < now() - make_interval(secs => $1)
                 ORDER BY at LIMIT $2)",
        )
        .bind(seconds(retention))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await
        .map_err(|e| self.failed(e))?;
        Ok(done.rows_affected())
    }

    async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks(AUDIT_ROWS_PER_STATEMENT) {
            let mut tx = self.pool.begin().await.map_err(|e| self.failed(e))?;
            sqlx::query("SET LOCAL synchronous_commit TO OFF")
                .execute(&mut *tx)
                .await
                .map_err(|e| self.failed(e))?;
            let mut insert = sqlx::QueryBuilder::<sqlx::Postgres>::new(
                "INSERT INTO stop_audit (at, principal, client_token, pipeline_execution_arn,
                     reason, event, outcome, error_code, epoch, worker) ",
            );
            insert.push_values(chunk, |mut row, e| {
                row.push_bind(e.at)
                    .push_bind(&e.principal)
                    .push_bind(&e.token)
                    .push_bind(&e.pipeline_execution_arn)
                    .push_bind(&e.reason)
                    .push_bind(e.kind.as_str())
                    .push_bind(e.outcome.map(StopOutcome::as_str))
                    .push_bind(e.error.map(RecordedError::as_str))
                    .push_bind(e.epoch)
                    .push_bind(&e.worker);
            });
            insert
                .build()
                .execute(&mut *tx)
                .await
                .map_err(|e| self.failed(e))?;
            tx.commit().await.map_err(|e| self.failed(e))?;
        }
        Ok(())
    }
}

/// `statement` (an INSERT or UPDATE `... RETURNING *` of `stop_requests`) with the audit row
/// of what it changed, as one statement: one round trip, one implicit transaction, and no
/// audit row when nothing changed. `owner` is the number of the parameter naming the worker.
fn with_audit(statement: &str, kind: AuditKind, owner: usize) -> String {
    let event = kind.as_str();
    format!(
        "WITH changed AS ({statement}),
         audited AS (
             INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason,
                 event, outcome, error_code, epoch, worker)
             SELECT principal, client_token, pipeline_execution_arn, reason, '{event}',
                 outcome, error_code, epoch, ${owner}
             FROM changed)
         SELECT * FROM changed"
    )
}

fn record(row: &PgRow) -> Result<StopRecord, StoreError> {
    Ok(StopRecord {
        key: RequestKey {
            principal: row.try_get("principal")?,
            token: row.try_get("client_token")?,
        },
        fingerprint: row.try_get("fingerprint")?,
        method: row.try_get("method")?,
        pipeline_execution_arn: row.try_get("pipeline_execution_arn")?,
        reason: row.try_get("reason")?,
        upstream_token: row.try_get("upstream_token")?,
        state: RecordState::decode(
            row.try_get("state")?,
            row.try_get("outcome")?,
            row.try_get("error_code")?,
            row.try_get("execution_status")?,
        )?,
        lease_owner: row.try_get("lease_owner")?,
        lease_expires_at: row.try_get("lease_expires_at")?,
        epoch: row.try_get("epoch")?,
        attempts: i64::from(row.try_get::<i32, _>("attempts")?),
        last_error: row.try_get("last_error")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        completed_at: row.try_get("completed_at")?,
        expires_at: row.try_get("expires_at")?,
        force_at: row.try_get("force_at")?,
        forced_at: row.try_get("forced_at")?,
        force_note: row.try_get("force_note")?,
    })
}

/// The keys of rows that hold `principal` and `client_token`.
fn keys(rows: &[PgRow]) -> Result<Vec<RequestKey>, StoreError> {
    rows.iter()
        .map(|row| {
            Ok(RequestKey {
                principal: row.try_get("principal")?,
                token: row.try_get("client_token")?,
            })
        })
        .collect()
}

/// A `stop_batches` row (`fingerprint`, `selected`, `truncated`).
fn stored_batch(row: &PgRow, inserted: bool) -> Result<StoredBatch, StoreError> {
    let selected: String = row.try_get("selected")?;
    Ok(StoredBatch {
        fingerprint: row.try_get("fingerprint")?,
        selected: selected.lines().map(str::to_string).collect(),
        truncated: row.try_get("truncated")?,
        inserted,
    })
}
