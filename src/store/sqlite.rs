//! The SQLite store: an embedded file for one process, the default when no database server is
//! configured. WAL mode lets readers proceed while one writer commits; the busy timeout makes
//! concurrent writers wait their turn instead of failing.

use std::{str::FromStr, time::Duration};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    Row as _, SqlitePool,
    sqlite::{
        SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
    },
};

use super::{
    AUDIT_ROWS_PER_STATEMENT, AuditEvent, AuditKind, Backend, Completion, ListQuery, NewBatch,
    NewStopRequest, RecordState, RecordedError, Release, RequestKey, Settings, StopOutcome,
    StopRecord, Store, StoreError, StoredBatch,
};

/// The database clock in milliseconds since the epoch (see the migration's header).
const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A store in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Connects to a `sqlite:` URL, creating the file if missing.
    pub async fn connect(url: &str, settings: &Settings) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("{e}")))?;
        Self::connect_with(options, settings).await
    }

    /// Opens the SQLite file at `path`, creating it if missing.
    pub async fn connect_file(path: &str, settings: &Settings) -> Result<Self, StoreError> {
        Self::connect_with(SqliteConnectOptions::new().filename(path), settings).await
    }

    async fn connect_with(
        options: SqliteConnectOptions,
        settings: &Settings,
    ) -> Result<Self, StoreError> {
        let target = format!("sqlite database {}", options.get_filename().display());
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(settings.timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(settings.max_connections.max(1))
            .acquire_timeout(settings.timeout)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect { target, source })?;
        Ok(Self { pool })
    }

    /// The pool, for tests and tools that inspect the rows.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
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
        // IMMEDIATE: take the write lock at BEGIN (waiting out the busy timeout), so the
        // transaction never fails upgrading a read lock under concurrent writers.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        // One statement: a new row, or a fresh start in place of an expired one (its epoch
        // keeps rising, so a worker of the old incarnation stays fenced off).
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
                 pipeline_execution_arn, pipeline_arn, reason, upstream_token, state,
                 lease_owner, lease_expires_at, epoch, attempts, expires_at, force_at)
             VALUES (?1, ?2, ?3, ?4, ?5, substr(?5, 1, instr(?5, '/execution/') - 1), ?6, ?7,
                 'pending', ?8, {NOW} + ?9, 1, 1, {NOW} + ?10, {NOW} + ?11)
             ON CONFLICT (principal, client_token) DO UPDATE SET
                 fingerprint = excluded.fingerprint, method = excluded.method,
                 pipeline_execution_arn = excluded.pipeline_execution_arn,
                 pipeline_arn = excluded.pipeline_arn,
                 reason = excluded.reason, upstream_token = excluded.upstream_token,
                 state = 'pending', lease_owner = excluded.lease_owner,
                 lease_expires_at = excluded.lease_expires_at, epoch = stop_requests.epoch + 1,
                 attempts = 1, outcome = NULL, error_code = NULL, execution_status = NULL,
                 last_error = NULL, created_at = {NOW}, updated_at = {NOW}, completed_at = NULL,
                 expires_at = excluded.expires_at, force_at = excluded.force_at,
                 forced_at = NULL, force_note = NULL
             WHERE stop_requests.expires_at <= {NOW}
             RETURNING *"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .bind(&request.fingerprint)
        .bind(&request.method)
        .bind(&request.pipeline_execution_arn)
        .bind(&request.reason)
        .bind(&request.upstream_token)
        .bind(owner)
        .bind(millis(lease))
        .bind(millis(retention))
        .bind(request.force_after.map(millis))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = inserted else {
            tx.rollback().await?;
            return Ok(None);
        };
        let record = record(&row)?;
        insert_audit(&mut tx, &record, AuditKind::Received, owner).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn take_over(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stop_requests
             SET lease_owner = ?3, lease_expires_at = {NOW} + ?4,
                 epoch = epoch + 1, attempts = attempts + 1, updated_at = {NOW}
             WHERE principal = ?1 AND client_token = ?2 AND state = 'pending'
               AND (lease_expires_at IS NULL OR lease_expires_at <= {NOW})
               AND expires_at > {NOW}
             RETURNING *"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .bind(owner)
        .bind(millis(lease))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record = record(&row)?;
        insert_audit(&mut tx, &record, AuditKind::TakenOver, owner).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn complete(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        completion: &Completion,
    ) -> Result<Option<StopRecord>, StoreError> {
        let (outcome, error_code, status) = completion.columns();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stop_requests
             SET state = 'completed', outcome = ?4, error_code = ?5, execution_status = ?6,
                 completed_at = {NOW}, updated_at = {NOW}, lease_owner = NULL,
                 lease_expires_at = NULL,
                 -- Only a stop that left the execution Stopping can need forcing.
                 force_at = CASE WHEN ?4 IN ('STOP_REQUESTED', 'ALREADY_STOPPING')
                     THEN force_at END
             WHERE principal = ?1 AND client_token = ?2 AND epoch = ?3 AND state = 'pending'
             RETURNING *"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .bind(outcome)
        .bind(error_code)
        .bind(status)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let record = record(&row)?;
        insert_audit(&mut tx, &record, AuditKind::Completed, owner).await?;
        tx.commit().await?;
        Ok(Some(record))
    }

    async fn release(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stop_requests
             SET lease_owner = NULL, lease_expires_at = {NOW}, last_error = ?4, updated_at = {NOW}
             WHERE principal = ?1 AND client_token = ?2 AND epoch = ?3 AND state = 'pending'
             RETURNING *"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .bind(error)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let record = record(&row)?;
        insert_audit(&mut tx, &record, AuditKind::FailedTransient, owner).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn discard(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(
            "DELETE FROM stop_requests
             WHERE principal = ?1 AND client_token = ?2 AND epoch = ?3 AND state = 'pending'
             RETURNING *",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(false);
        };
        let record = record(&row)?;
        insert_audit_with(&mut tx, &record, AuditKind::Discarded, Some(reason), owner).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn get(&self, key: &RequestKey) -> Result<Option<StopRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT * FROM stop_requests
             WHERE principal = ?1 AND client_token = ?2 AND expires_at > {NOW}"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(record).transpose()?)
    }

    async fn claim_batch(
        &self,
        batch: &NewBatch,
        retention: Duration,
    ) -> Result<StoredBatch, StoreError> {
        let inserted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO stop_batches (principal, client_token, fingerprint, pipeline_arn,
                 selected, truncated, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, {NOW} + ?7)
             ON CONFLICT (principal, client_token) DO UPDATE SET
                 fingerprint = EXCLUDED.fingerprint, pipeline_arn = EXCLUDED.pipeline_arn,
                 selected = EXCLUDED.selected, truncated = EXCLUDED.truncated,
                 created_at = {NOW}, expires_at = EXCLUDED.expires_at
             WHERE stop_batches.expires_at <= {NOW}
             RETURNING fingerprint, selected, truncated"
        )))
        .bind(&batch.key.principal)
        .bind(&batch.key.token)
        .bind(&batch.fingerprint)
        .bind(&batch.pipeline_arn)
        .bind(batch.selected.join("\n"))
        .bind(batch.truncated)
        .bind(millis(retention))
        .fetch_optional(&self.pool)
        .await?;
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
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT fingerprint, selected, truncated FROM stop_batches
             WHERE principal = ?1 AND client_token = ?2 AND expires_at > {NOW}"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(|row| stored_batch(row, false)).transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<StopRecord>, StoreError> {
        // Only the conditions asked for, so that the planner sees which index serves them.
        let mut sql = format!("SELECT * FROM stop_requests WHERE expires_at > {NOW}");
        let mut texts: Vec<&str> = Vec::new();
        for (column, value) in [
            ("principal", query.principal.as_deref()),
            ("pipeline_arn", query.pipeline_arn.as_deref()),
            ("pipeline_execution_arn", query.execution_arn.as_deref()),
        ] {
            if let Some(value) = value {
                texts.push(value);
                sql.push_str(&format!(" AND {column} = ?{}", texts.len()));
            }
        }
        let after = query.after.as_ref();
        if after.is_some() {
            let n = texts.len();
            sql.push_str(&format!(
                " AND (created_at, principal, client_token) < (?{}, ?{}, ?{})",
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
            // Stored in milliseconds: the cursor's time came from one, so it is exact.
            statement = statement
                .bind(after.created_at.timestamp_millis())
                .bind(&after.principal)
                .bind(&after.token);
        }
        let rows = statement.fetch_all(&self.pool).await?;
        rows.iter().map(record).collect()
    }

    async fn due_forces(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT principal, client_token FROM stop_requests
             WHERE force_at IS NOT NULL AND forced_at IS NULL AND force_at <= {NOW}
               AND state = 'completed' AND outcome IN ('STOP_REQUESTED', 'ALREADY_STOPPING')
               AND expires_at > {NOW}
               AND (lease_expires_at IS NULL OR lease_expires_at <= {NOW})
             ORDER BY force_at
             LIMIT ?1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        keys(&rows)
    }

    async fn claim_force(
        &self,
        key: &RequestKey,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<StopRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stop_requests
             SET lease_owner = ?3, lease_expires_at = {NOW} + ?4, epoch = epoch + 1,
                 updated_at = {NOW}
             WHERE principal = ?1 AND client_token = ?2 AND force_at IS NOT NULL
               AND forced_at IS NULL AND force_at <= {NOW} AND state = 'completed'
               AND (lease_expires_at IS NULL OR lease_expires_at <= {NOW})
             RETURNING *"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .bind(owner)
        .bind(millis(lease))
        .fetch_optional(&self.pool)
        .await?;
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
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let held = sqlx::query(
            "SELECT * FROM stop_requests
             WHERE principal = ?1 AND client_token = ?2 AND epoch = ?3 AND lease_owner = ?4",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .bind(owner)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(held) = held else {
            tx.rollback().await?;
            return Ok(false);
        };
        let held = record(&held)?;
        let inserted = sqlx::query(
            "INSERT OR IGNORE INTO stop_releases (principal, client_token, callback_token,
                 step_name, epoch, worker)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .bind(callback_token)
        .bind(step_name)
        .bind(epoch)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        // Once per release: a later epoch that finds it recorded writes no second audit row.
        if inserted.rows_affected() > 0 {
            insert_audit_detail(
                &mut tx,
                &held,
                AuditKind::Released,
                owner,
                &format!("step {step_name}, callback token {callback_token}"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn finish_force(
        &self,
        key: &RequestKey,
        epoch: i64,
        owner: &str,
        note: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE stop_requests
             SET forced_at = {NOW}, force_note = ?5, lease_owner = NULL, lease_expires_at = NULL,
                 updated_at = {NOW}
             WHERE principal = ?1 AND client_token = ?2 AND epoch = ?3 AND lease_owner = ?4
               AND forced_at IS NULL
             RETURNING *"
        )))
        .bind(&key.principal)
        .bind(&key.token)
        .bind(epoch)
        .bind(owner)
        .bind(note)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(false);
        };
        let changed = record(&row)?;
        insert_audit_detail(
            &mut tx,
            &changed,
            AuditKind::Forced,
            owner,
            note.unwrap_or_default(),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn releases(&self, key: &RequestKey) -> Result<Vec<Release>, StoreError> {
        let rows = sqlx::query(
            "SELECT r.step_name, r.callback_token, r.released_at
             FROM stop_releases r JOIN stop_requests q
               ON q.principal = r.principal AND q.client_token = r.client_token
             WHERE r.principal = ?1 AND r.client_token = ?2 AND r.released_at >= q.created_at
             ORDER BY r.released_at, r.callback_token",
        )
        .bind(&key.principal)
        .bind(&key.token)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(Release {
                    step_name: row.try_get("step_name")?,
                    callback_token: row.try_get("callback_token")?,
                    released_at: time(row.try_get("released_at")?),
                })
            })
            .collect()
    }

    async fn expired_leases(&self, limit: u32) -> Result<Vec<RequestKey>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT principal, client_token FROM stop_requests
             WHERE state = 'pending' AND lease_expires_at <= {NOW} AND expires_at > {NOW}
             ORDER BY lease_expires_at
             LIMIT ?1"
        )))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        keys(&rows)
    }

    async fn delete_expired(&self, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM stop_requests WHERE rowid IN (
                 SELECT rowid FROM stop_requests WHERE expires_at <= {NOW}
                 ORDER BY expires_at LIMIT ?1)"
        )))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        let batches = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM stop_batches WHERE rowid IN (
                 SELECT rowid FROM stop_batches WHERE expires_at <= {NOW}
                 ORDER BY expires_at LIMIT ?1)"
        )))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        // The releases of records that are gone or expired.
        let releases = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM stop_releases WHERE rowid IN (
                 SELECT r.rowid FROM stop_releases r LEFT JOIN stop_requests q
                   ON q.principal = r.principal AND q.client_token = r.client_token
                 WHERE q.principal IS NULL OR q.expires_at <= {NOW} LIMIT ?1)"
        )))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        // The largest: a table whose batch came back full has more to delete.
        Ok(done
            .rows_affected()
            .max(batches.rows_affected())
            .max(releases.rows_affected()))
    }

    async fn delete_old_audit(&self, retention: Duration, limit: u32) -> Result<u64, StoreError> {
        let done = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM stop_audit WHERE id IN (
                 SELECT id FROM stop_audit WHERE at < {NOW} - ?1 ORDER BY at LIMIT ?2)"
        )))
        .bind(millis(retention))
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn audit(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        for chunk in events.chunks(AUDIT_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
                "INSERT INTO stop_audit (at, principal, client_token, pipeline_execution_arn,
                     reason, event, outcome, error_code, epoch, worker) ",
            );
            insert.push_values(chunk, |mut row, e| {
                row.push_bind(e.at.timestamp_millis())
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
            insert.build().execute(&self.pool).await?;
        }
        Ok(())
    }
}

async fn insert_audit(
    conn: &mut sqlx::SqliteConnection,
    record: &StopRecord,
    kind: AuditKind,
    owner: &str,
) -> Result<(), StoreError> {
    let error = record
        .state
        .completion()
        .and_then(Completion::error)
        .map(RecordedError::as_str);
    insert_audit_with(conn, record, kind, error, owner).await
}

/// The audit row of `kind` about `record`, with what it is about in `detail`.
async fn insert_audit_detail(
    conn: &mut sqlx::SqliteConnection,
    record: &StopRecord,
    kind: AuditKind,
    owner: &str,
    detail: &str,
) -> Result<(), StoreError> {
    let (outcome, error_code, _) = record
        .state
        .completion()
        .map_or((None, None, None), Completion::columns);
    sqlx::query(
        "INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason,
             event, outcome, error_code, epoch, worker, detail)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )
    .bind(&record.key.principal)
    .bind(&record.key.token)
    .bind(&record.pipeline_execution_arn)
    .bind(&record.reason)
    .bind(kind.as_str())
    .bind(outcome)
    .bind(error_code)
    .bind(record.epoch)
    .bind(owner)
    .bind(detail)
    .execute(conn)
    .await?;
    Ok(())
}

/// The audit row of `kind` about `record`, with `error_code` (the record's recorded error, or
/// why an attempt was discarded).
async fn insert_audit_with(
    conn: &mut sqlx::SqliteConnection,
    record: &StopRecord,
    kind: AuditKind,
    error_code: Option<&str>,
    owner: &str,
) -> Result<(), StoreError> {
    let completion = record.state.completion();
    sqlx::query(
        "INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason,
             event, outcome, error_code, epoch, worker)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(&record.key.principal)
    .bind(&record.key.token)
    .bind(&record.pipeline_execution_arn)
    .bind(&record.reason)
    .bind(kind.as_str())
    .bind(
        completion
            .and_then(Completion::outcome)
            .map(StopOutcome::as_str),
    )
    .bind(error_code)
    .bind(record.epoch)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(())
}

fn time(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn record(row: &SqliteRow) -> Result<StopRecord, StoreError> {
    let optional_time = |column: &str| -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(column)?.map(time))
    };
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
        lease_expires_at: optional_time("lease_expires_at")?,
        epoch: row.try_get("epoch")?,
        attempts: row.try_get("attempts")?,
        last_error: row.try_get("last_error")?,
        created_at: time(row.try_get("created_at")?),
        updated_at: time(row.try_get("updated_at")?),
        completed_at: optional_time("completed_at")?,
        expires_at: time(row.try_get("expires_at")?),
        force_at: optional_time("force_at")?,
        forced_at: optional_time("forced_at")?,
        force_note: row.try_get("force_note")?,
    })
}

/// The keys of rows that hold `principal` and `client_token`.
fn keys(rows: &[SqliteRow]) -> Result<Vec<RequestKey>, StoreError> {
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
fn stored_batch(row: &SqliteRow, inserted: bool) -> Result<StoredBatch, StoreError> {
    let selected: String = row.try_get("selected")?;
    Ok(StoredBatch {
        fingerprint: row.try_get("fingerprint")?,
        selected: selected.lines().map(str::to_string).collect(),
        truncated: row.try_get("truncated")?,
        inserted,
    })
}
