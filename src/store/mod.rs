//! The stop-request store: where idempotency records and the audit trail live.
//!
//! One trait, [`Store`], with two implementations over concrete sqlx pools: [`PostgresStore`]
//! for production (several replicas share it) and [`SqliteStore`], an embedded file for a
//! single process. [`connect`] picks one from the database URL. Each implementation owns its
//! SQL and its migrations (`migrations/postgres`, `migrations/sqlite`), embedded in the binary.

mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

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
