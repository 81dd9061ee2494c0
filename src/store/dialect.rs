//! What differs between the two databases the store runs on, and nothing else: the pool of
//! each and how it connects and migrates, how a statement reads in SQLite, and how a time and
//! a duration are encoded.
//!
//! Statements are written once, in Postgres's terms: `$1` placeholders and `now()` for the
//! database clock. [`Pool::sql`] gives SQLite the same statement with `?1` (the same numbered
//! parameter) and its clock, and without `FOR UPDATE`: SQLite has no row locks, its write
//! transactions (`BEGIN IMMEDIATE`) hold the whole database. Times are `timestamptz` in
//! Postgres and integer milliseconds since the epoch in SQLite (see its migrations);
//! durations are bound as an `interval` and as milliseconds, so `now() + $1` reads the same in
//! both.

use std::{
    borrow::Cow,
    str::FromStr as _,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use sqlx::{
    AssertSqlSafe, Decode, Encode, PgPool, SqlitePool, Type,
    encode::IsNull,
    error::BoxDynError,
    postgres::{
        PgArgumentBuffer, PgConnectOptions, PgPoolOptions, PgTypeInfo, PgValueRef, Postgres,
        types::PgInterval,
    },
    sqlite::{
        Sqlite, SqliteArgumentsBuffer, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
        SqliteSynchronous, SqliteTypeInfo, SqliteValueRef,
    },
};

use super::{Backend, Settings, StoreError};
use crate::domain::ExecutionArn;

/// SQLite's clock in milliseconds since the epoch, as its migrations store times.
const SQLITE_NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The store's connections: to a Postgres server, or to an SQLite file.
#[derive(Debug, Clone)]
pub(super) enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// `$body` with `$pool` bound to the concrete pool, whichever database it is: the same code,
/// compiled once for each.
macro_rules! on_pool {
    ($pool:expr, |$p:ident| $body:expr) => {
        match $pool {
            $crate::store::dialect::Pool::Postgres($p) => $body,
            $crate::store::dialect::Pool::Sqlite($p) => $body,
        }
    };
}
pub(super) use on_pool;

impl Pool {
    pub(super) fn backend(&self) -> Backend {
        match self {
            Self::Postgres(_) => Backend::Postgres,
            Self::Sqlite(_) => Backend::Sqlite,
        }
    }

    /// `statement`, written for Postgres, as this database reads it.
    pub(super) fn sql(
        &self,
        statement: impl Into<Cow<'static, str>>,
    ) -> AssertSqlSafe<Cow<'static, str>> {
        let statement = statement.into();
        AssertSqlSafe(match self {
            Self::Postgres(_) => statement,
            // `$` stands in the store's statements for placeholders only.
            Self::Sqlite(_) => statement
                .replace('$', "?")
                .replace("now()", SQLITE_NOW)
                .replace(" FOR UPDATE", "")
                .into(),
        })
    }

    /// How a transaction that writes begins: SQLite takes the write lock at once (waiting out
    /// the busy timeout), so that the transaction never fails upgrading a read lock.
    pub(super) fn begin_write(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "BEGIN",
            Self::Sqlite(_) => "BEGIN IMMEDIATE",
        }
    }

    /// Applies this database's pending migrations (`migrations/postgres` or
    /// `migrations/sqlite`, embedded in the binary). Postgres serializes replicas that migrate
    /// at once with an advisory lock.
    pub(super) async fn migrate(&self) -> Result<(), StoreError> {
        match self {
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    /// Connects to the database `settings.url` names: `postgres://` or `postgresql://` for
    /// Postgres, `sqlite:` or a plain file path for SQLite (the file is created if missing).
    pub(super) async fn connect(
        settings: &Settings,
        breaks: &Arc<Breaks>,
    ) -> Result<Self, StoreError> {
        let url = settings.url.trim();
        if url.is_empty() {
            return Err(StoreError::InvalidUrl("the database URL is empty".into()));
        }
        let invalid = |e: sqlx::Error| StoreError::InvalidUrl(e.to_string());
        match url.split_once("://").map(|(scheme, _)| scheme) {
            Some("postgres" | "postgresql") => {
                let options = PgConnectOptions::from_str(url).map_err(invalid)?;
                connect_postgres(options, settings, breaks).await
            }
            _ if url.starts_with("sqlite:") => {
                let options = SqliteConnectOptions::from_str(url).map_err(invalid)?;
                connect_sqlite(options, settings).await
            }
            Some(other) => Err(StoreError::InvalidUrl(format!(
                "unsupported scheme `{other}://`; use postgres://, sqlite:// or a file path"
            ))),
            None => connect_sqlite(SqliteConnectOptions::new().filename(url), settings).await,
        }
    }
}

/// When a statement last failed for its connection's sake (the database restarted, the
/// network dropped), so that the connections that sat idle since are not lent again.
#[derive(Debug)]
pub(super) struct Breaks {
    started: Instant,
    /// Milliseconds since `started`; 0 for never.
    last: AtomicU64,
}

impl Breaks {
    pub(super) fn new() -> Self {
        Self {
            started: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Notes `error` if it was the connection's.
    pub(super) fn note(&self, error: &sqlx::Error) {
        if matches!(
            error,
            sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::Tls(_)
        ) {
            let at = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last.store(at.max(1), Ordering::Relaxed);
        }
    }

    /// Whether a connection idle for `idle_for` was returned after the last break.
    fn fresh(&self, idle_for: Duration) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        let since_break = self
            .started
            .elapsed()
            .saturating_sub(Duration::from_millis(last));
        last == 0 || idle_for < since_break
    }
}

async fn connect_postgres(
    options: PgConnectOptions,
    settings: &Settings,
    breaks: &Arc<Breaks>,
) -> Result<Pool, StoreError> {
    let target = describe(&options);
    let breaks = breaks.clone();
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        // No ping before each use: a round trip before every statement (sqlx still pings a
        // connection when it is given back, off the caller's path). A connection that died
        // fails its next statement instead (STORE_UNAVAILABLE, which callers retry; every
        // write is atomic) and is discarded; the health checker notices an outage within its
        // interval. A stop whose outcome could not be recorded then waits for its lease to run
        // out before a retry or the completer finishes it.
        .test_before_acquire(false)
        // Those that sat idle since a statement failed for its connection are very likely
        // dead too (a restart or an outage takes them all): they are closed when next lent
        // instead of failing one more caller each, at no cost in normal running.
        .before_acquire(move |_conn, meta| {
            let keep = breaks.fresh(meta.idle_for);
            Box::pin(async move { Ok(keep) })
        })
        .acquire_timeout(settings.timeout)
        .connect_with(options)
        .await
        .map_err(|source| StoreError::Connect { target, source })?;
    Ok(Pool::Postgres(pool))
}

/// WAL lets readers proceed while one writer commits, and a commit does not wait for the disk
/// (only checkpoints do); the busy timeout makes concurrent writers wait their turn instead of
/// failing.
async fn connect_sqlite(
    options: SqliteConnectOptions,
    settings: &Settings,
) -> Result<Pool, StoreError> {
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
    Ok(Pool::Sqlite(pool))
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

/// A value bound to a statement. One list of them serves both databases: each encodes a
/// value in its own terms.
#[derive(Debug, Clone, Copy)]
pub(super) enum Arg<'a> {
    Text(Option<&'a str>),
    Int(i64),
    Flag(bool),
    Time(DateTime<Utc>),
    /// A duration, to add to or take from the database's `now()`.
    Span(Option<Duration>),
}

/// The arguments of a statement, `$1` first.
macro_rules! args {
    ($($arg:expr),* $(,)?) => {
        [$($crate::store::dialect::Arg::from($arg)),*]
    };
}
pub(super) use args;

impl<'a> From<&'a str> for Arg<'a> {
    fn from(text: &'a str) -> Self {
        Self::Text(Some(text))
    }
}

impl<'a> From<&'a String> for Arg<'a> {
    fn from(text: &'a String) -> Self {
        Self::Text(Some(text))
    }
}

impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(text: Option<&'a str>) -> Self {
        Self::Text(text)
    }
}

impl<'a> From<&'a ExecutionArn> for Arg<'a> {
    fn from(arn: &'a ExecutionArn) -> Self {
        Self::Text(Some(arn.as_str()))
    }
}

impl From<i64> for Arg<'_> {
    fn from(int: i64) -> Self {
        Self::Int(int)
    }
}

impl From<u32> for Arg<'_> {
    fn from(int: u32) -> Self {
        Self::Int(i64::from(int))
    }
}

impl From<bool> for Arg<'_> {
    fn from(flag: bool) -> Self {
        Self::Flag(flag)
    }
}

impl From<DateTime<Utc>> for Arg<'_> {
    fn from(time: DateTime<Utc>) -> Self {
        Self::Time(time)
    }
}

impl From<Duration> for Arg<'_> {
    fn from(span: Duration) -> Self {
        Self::Span(Some(span))
    }
}

impl From<Option<Duration>> for Arg<'_> {
    fn from(span: Option<Duration>) -> Self {
        Self::Span(span)
    }
}

/// `value` as Postgres encodes it.
fn postgres<'q, T: Encode<'q, Postgres>>(
    value: T,
    buf: &mut PgArgumentBuffer,
) -> Result<IsNull, BoxDynError> {
    value.encode(buf)
}

/// `value` as SQLite encodes it.
fn sqlite<'q, T: Encode<'q, Sqlite>>(
    value: T,
    buf: &mut SqliteArgumentsBuffer,
) -> Result<IsNull, BoxDynError> {
    value.encode(buf)
}

impl Type<Postgres> for Arg<'_> {
    /// Unused: each value says its own type ([`Encode::produces`]).
    fn type_info() -> PgTypeInfo {
        <&str as Type<Postgres>>::type_info()
    }
}

impl Encode<'_, Postgres> for Arg<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        match *self {
            Self::Text(text) => postgres(text, buf),
            Self::Int(int) => postgres(int, buf),
            Self::Flag(flag) => postgres(flag, buf),
            Self::Time(time) => postgres(time, buf),
            // Microseconds, as `timestamptz` counts.
            Self::Span(span) => postgres(
                span.map(|span| PgInterval {
                    months: 0,
                    days: 0,
                    microseconds: i64::try_from(span.as_micros()).unwrap_or(i64::MAX),
                }),
                buf,
            ),
        }
    }

    fn produces(&self) -> Option<PgTypeInfo> {
        Some(match self {
            Self::Text(_) => <&str as Type<Postgres>>::type_info(),
            Self::Int(_) => <i64 as Type<Postgres>>::type_info(),
            Self::Flag(_) => <bool as Type<Postgres>>::type_info(),
            Self::Time(_) => <DateTime<Utc> as Type<Postgres>>::type_info(),
            Self::Span(_) => <PgInterval as Type<Postgres>>::type_info(),
        })
    }
}

impl Type<Sqlite> for Arg<'_> {
    /// Unused: SQLite's values carry their own types.
    fn type_info() -> SqliteTypeInfo {
        <&str as Type<Sqlite>>::type_info()
    }
}

impl Encode<'_, Sqlite> for Arg<'_> {
    fn encode_by_ref(&self, buf: &mut SqliteArgumentsBuffer) -> Result<IsNull, BoxDynError> {
        match *self {
            Self::Text(text) => sqlite(text, buf),
            Self::Int(int) => sqlite(int, buf),
            Self::Flag(flag) => sqlite(flag, buf),
            // Exact for a time read from SQLite (a list's cursor): it was milliseconds there.
            Self::Time(time) => sqlite(time.timestamp_millis(), buf),
            Self::Span(span) => sqlite(
                span.map(|span| i64::try_from(span.as_millis()).unwrap_or(i64::MAX)),
                buf,
            ),
        }
    }
}

/// A time read from a row: `timestamptz` in Postgres, milliseconds since the epoch in SQLite.
#[derive(Debug, Clone, Copy)]
pub(super) struct Time(pub(super) DateTime<Utc>);

impl Type<Postgres> for Time {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <DateTime<Utc> as Type<Postgres>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Postgres> for Time {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Self(<DateTime<Utc> as Decode<'r, Postgres>>::decode(
            value,
        )?))
    }
}

impl Type<Sqlite> for Time {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <i64 as Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Sqlite> for Time {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let millis = <i64 as Decode<'r, Sqlite>>::decode(value)?;
        let time = DateTime::from_timestamp_millis(millis)
            .ok_or_else(|| format!("{millis} ms after the epoch is not a time"))?;
        Ok(Self(time))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sqlite_reads_postgres_statements_with_its_placeholders_and_clock() {
        let pool = Pool::Sqlite(SqlitePool::connect_lazy("sqlite::memory:").unwrap());
        let statement = "SELECT * FROM t WHERE a = $1 AND b < now() + $12 FOR UPDATE";
        assert_eq!(
            pool.sql(statement).0,
            format!("SELECT * FROM t WHERE a = ?1 AND b < {SQLITE_NOW} + ?12")
        );
        let pool = Pool::Postgres(PgPool::connect_lazy("postgres://localhost/db").unwrap());
        assert_eq!(pool.sql(statement).0, statement);
    }
}
