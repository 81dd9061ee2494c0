//! Watching shared by every replica on one Postgres: a lease per watched execution (which
//! replica reads it from SageMaker), the latest snapshot it read (so a replica's watchers need
//! no SageMaker call of their own), and notifications (`NOTIFY`) when a snapshot changes or an
//! event asks for an immediate read. SQLite (one process) has none of this.
//!
//! One row per watched execution in `watch_pollers`: owner and lease (database clock),
//! `version` (incremented by each publication), the snapshot as JSON, and when SageMaker was
//! last read. Every write by a holder is fenced by its ownership: a replica that lost the
//! lease cannot publish over the one that took it. Its queries are measured with the
//! store's, as `fleet_*` operations.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicI32, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{
    PgPool, Row as _,
    postgres::{PgListener, PgPoolOptions},
};

use super::{StoreError, meter::Meter};

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The channel of published snapshots: the payload is `<version> <execution ARN>`.
pub(crate) const SNAPSHOTS: &str = "pipeline_control_snapshots";
/// The channel of wake-ups (an event arrived for the execution): the payload is its ARN.
pub(crate) const WAKEUPS: &str = "pipeline_control_wakeups";

/// Whether the holder of a row holds it: its lease runs, and the session of its listening
/// connection is alive (a holder killed with its connections frees the lease at once).
const HELD: &str = "(watch_pollers.lease_expires_at >= now()
     AND (watch_pollers.holder_pid IS NULL
          OR EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = watch_pollers.holder_pid)))";

/// The shared state of one watched execution.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared {
    /// Bumped by every publication; 0 before the first.
    pub(crate) version: i64,
    /// The latest publication (JSON), if any.
    pub(crate) snapshot: Option<String>,
    /// When the holder last read SageMaker.
    pub(crate) observed_at: Option<DateTime<Utc>>,
    /// Whether some replica holds a live lease.
    pub(crate) held: bool,
    /// The replica that holds or last held it.
    pub(crate) owner: String,
    /// How long ago the row was last written (a claim, a publication, a renewal, a release),
    /// by the database's clock: a holder that answered a wake-up wrote since.
    pub(crate) quiet: Duration,
}

/// A notification, as the listener receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A new snapshot of the execution, at this version.
    Snapshot { arn: String, version: i64 },
    /// Read the execution now.
    Wake { arn: String },
}

impl Notice {
    /// `None` for a payload this version does not understand (ignored).
    pub(crate) fn parse(channel: &str, payload: &str) -> Option<Self> {
        match channel {
            SNAPSHOTS => {
                let (version, arn) = payload.split_once(' ')?;
                Some(Self::Snapshot {
                    arn: arn.to_string(),
                    version: version.parse().ok()?,
                })
            }
            WAKEUPS => Some(Self::Wake {
                arn: payload.to_string(),
            }),
            _ => None,
        }
    }
}

/// The operations of shared watching.
#[async_trait]
pub trait Fleet: Send + Sync + fmt::Debug + 'static {
    /// Takes the lease on reading `arn` for `owner`, or renews it: `true` while `owner` holds
    /// it. A lease held by another replica and not expired stays theirs.
    async fn claim(&self, arn: &str, owner: &str, lease: Duration) -> Result<bool, StoreError>;

    /// Publishes `snapshot` (JSON) as the holder and notifies every replica: the new version,
    /// or `None` when `owner` no longer holds the lease (nothing written).
    async fn publish(
        &self,
        arn: &str,
        owner: &str,
        lease: Duration,
        snapshot: &str,
        observed_at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError>;

    /// Renews the holder's lease after a read that changed nothing: `false` when lost.
    async fn renew(
        &self,
        arn: &str,
        owner: &str,
        lease: Duration,
        observed_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError>;

    /// Gives the lease up (the last watcher left, or the execution ended) and tells the
    /// followers, so that another replica with watchers takes over at once.
    async fn release(&self, arn: &str, owner: &str) -> Result<(), StoreError>;

    /// The shared state of `arn`, if it was ever watched.
    async fn shared(&self, arn: &str) -> Result<Option<Shared>, StoreError>;

    /// Asks the holder of `arn` (whichever replica) to read it now. `false` when nobody holds
    /// a live lease on it (nobody watches it: nothing to do).
    async fn wake(&self, arn: &str) -> Result<bool, StoreError>;

    /// A listener of both channels, on a connection of its own (outside the store's pool, so
    /// that one which stops answering holds none of the pool's connections).
    async fn listen(&self) -> Result<PgListener, StoreError>;

    /// Whether `listener`'s connection still answers, within `within`: a connection that
    /// died without a word (half-open: the network dropped, a failover moved the address)
    /// would otherwise go on waiting for notifications that never come.
    async fn check(&self, listener: &mut PgListener, within: Duration) -> Result<(), StoreError>;

    /// Deletes the rows of executions nobody has held for `idle`.
    async fn forget_idle(&self, idle: Duration) -> Result<u64, StoreError>;
}

/// [`Fleet`] on the store's Postgres pool, measured with the store's operations.
#[derive(Debug, Clone)]
pub(super) struct PostgresFleet {
    pool: PgPool,
    meter: Meter,
    /// The backend pid of this replica's listening connection (0 before the first): the
    /// rows it holds name it, so that the others know when this replica is gone.
    session: Arc<AtomicI32>,
}

impl PostgresFleet {
    pub(super) fn new(pool: PgPool, meter: Meter) -> Self {
        Self {
            pool,
            meter,
            session: Arc::new(AtomicI32::new(0)),
        }
    }

    /// The session that holders record, if listening began.
    fn session(&self) -> Option<i32> {
        Some(self.session.load(Ordering::Relaxed)).filter(|pid| *pid != 0)
    }
}

#[async_trait]
impl Fleet for PostgresFleet {
    async fn claim(&self, arn: &str, owner: &str, lease: Duration) -> Result<bool, StoreError> {
        self.meter
            .run("fleet_claim", async {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO watch_pollers (execution_arn, owner, lease_expires_at, holder_pid)
                 VALUES ($1, $2, now() + make_interval(secs => $3), $4)
                 ON CONFLICT (execution_arn) DO UPDATE
                    SET owner = EXCLUDED.owner, lease_expires_at = EXCLUDED.lease_expires_at,
                        holder_pid = EXCLUDED.holder_pid, updated_at = now()
                  WHERE watch_pollers.owner = EXCLUDED.owner OR NOT {HELD}
                 RETURNING 1",
                )))
                .bind(arn)
                .bind(owner)
                .bind(seconds(lease))
                .bind(self.session())
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.is_some())
            })
            .await
    }

    async fn publish(
        &self,
        arn: &str,
        owner: &str,
        lease: Duration,
        snapshot: &str,
        observed_at: DateTime<Utc>,
    ) -> Result<Option<i64>, StoreError> {
        self.meter
            .run("fleet_publish", async {
                // One statement: the fenced write and its notification (sent at commit).
                let row = sqlx::query(
                    "WITH published AS (
                     UPDATE watch_pollers
                        SET version = version + 1, snapshot = $3, observed_at = $4,
                            lease_expires_at = now() + make_interval(secs => $5),
                            holder_pid = COALESCE($7, holder_pid), updated_at = now()
                      WHERE execution_arn = $1 AND owner = $2
                  RETURNING version)
                 SELECT version, pg_notify($6, version::text || ' ' || $1) FROM published",
                )
                .bind(arn)
                .bind(owner)
                .bind(snapshot)
                .bind(observed_at)
                .bind(seconds(lease))
                .bind(SNAPSHOTS)
                .bind(self.session())
                .fetch_optional(&self.pool)
                .await?;
                Ok(row
                    .map(|row| row.try_get::<i64, _>("version"))
                    .transpose()?)
            })
            .await
    }

    async fn renew(
        &self,
        arn: &str,
        owner: &str,
        lease: Duration,
        observed_at: Option<DateTime<Utc>>,
    ) -> Result<bool, StoreError> {
        self.meter
            .run("fleet_renew", async {
                let done = sqlx::query(
                    "UPDATE watch_pollers
                    SET lease_expires_at = now() + make_interval(secs => $3),
                        observed_at = COALESCE($4, observed_at),
                        holder_pid = COALESCE($5, holder_pid), updated_at = now()
                  WHERE execution_arn = $1 AND owner = $2",
                )
                .bind(arn)
                .bind(owner)
                .bind(seconds(lease))
                .bind(observed_at)
                .bind(self.session())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            })
            .await
    }

    async fn release(&self, arn: &str, owner: &str) -> Result<(), StoreError> {
        self.meter
            .run("fleet_release", async {
                // The notification makes followers look at once: one of them takes over.
                sqlx::query(
                    "WITH released AS (
                     UPDATE watch_pollers SET lease_expires_at = now() - interval '1 second',
                            updated_at = now()
                      WHERE execution_arn = $1 AND owner = $2
                  RETURNING version)
                 SELECT pg_notify($3, version::text || ' ' || $1) FROM released",
                )
                .bind(arn)
                .bind(owner)
                .bind(SNAPSHOTS)
                .fetch_optional(&self.pool)
                .await?;
                Ok(())
            })
            .await
    }

    async fn shared(&self, arn: &str) -> Result<Option<Shared>, StoreError> {
        self.meter
            .run("fleet_shared", async {
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT version, snapshot, observed_at, {HELD} AS held, owner,
                        GREATEST(EXTRACT(EPOCH FROM now() - updated_at), 0)::float8 AS quiet
                   FROM watch_pollers WHERE execution_arn = $1",
                )))
                .bind(arn)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|row| {
                    Ok(Shared {
                        version: row.try_get("version")?,
                        snapshot: row.try_get("snapshot")?,
                        observed_at: row.try_get("observed_at")?,
                        held: row.try_get("held")?,
                        owner: row.try_get("owner")?,
                        quiet: Duration::try_from_secs_f64(row.try_get("quiet")?)
                            .unwrap_or_default(),
                    })
                })
                .transpose()
                .map_err(StoreError::Unavailable)
            })
            .await
    }

    async fn wake(&self, arn: &str) -> Result<bool, StoreError> {
        self.meter
            .run("fleet_wake", async {
                let row = sqlx::query(
                    "SELECT pg_notify($2, execution_arn) FROM watch_pollers
                  WHERE execution_arn = $1 AND lease_expires_at >= now()",
                )
                .bind(arn)
                .bind(WAKEUPS)
                .fetch_optional(&self.pool)
                .await?;
                Ok(row.is_some())
            })
            .await
    }

    async fn listen(&self) -> Result<PgListener, StoreError> {
        self.meter
            .run("fleet_listen", async {
                // A pool of one connection: a listener that stops answering is dropped with it.
                let own = PgPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(self.pool.options().get_acquire_timeout())
                    .connect_lazy_with((*self.pool.connect_options()).clone());
                let mut listener = PgListener::connect_with(&own).await?;
                listener.listen_all([SNAPSHOTS, WAKEUPS]).await?;
                // Holders name this session from now on (a lease renewed with it, at most a
                // third of a lease from now).
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                    .fetch_one(&mut listener)
                    .await?;
                self.session.store(pid, Ordering::Relaxed);
                Ok(listener)
            })
            .await
    }

    async fn check(&self, listener: &mut PgListener, within: Duration) -> Result<(), StoreError> {
        self.meter
            .run("fleet_listen_check", async {
                match tokio::time::timeout(within, sqlx::query("SELECT 1").execute(listener)).await
                {
                    Ok(done) => done.map(drop).map_err(StoreError::from),
                    // Counted as the connection's failure: those idle since are suspect too.
                    Err(_) => Err(StoreError::Unavailable(sqlx::Error::Io(
                        std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the listening connection did not answer",
                        ),
                    ))),
                }
            })
            .await
    }

    async fn forget_idle(&self, idle: Duration) -> Result<u64, StoreError> {
        self.meter
            .run("fleet_forget_idle", async {
                let done = sqlx::query(
                    "DELETE FROM watch_pollers
                  WHERE lease_expires_at < now() - make_interval(secs => $1)",
                )
                .bind(seconds(idle))
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_parse_and_unknown_ones_are_ignored() {
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/x";
        assert_eq!(
            Notice::parse(SNAPSHOTS, &format!("7 {arn}")),
            Some(Notice::Snapshot {
                arn: arn.into(),
                version: 7
            })
        );
        assert_eq!(
            Notice::parse(WAKEUPS, arn),
            Some(Notice::Wake { arn: arn.into() })
        );
        assert_eq!(Notice::parse(SNAPSHOTS, "seven"), None);
        assert_eq!(Notice::parse(SNAPSHOTS, "x y"), None);
        assert_eq!(Notice::parse("other", arn), None);
    }
}
