//! The SQLite store: an embedded file for one process, the default when no database server is
//! configured. WAL mode lets readers proceed while one writer commits; the busy timeout makes
//! concurrent writers wait their turn instead of failing.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use super::{Backend, Store, StoreError};
use crate::config::DatabaseArgs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// A store in an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Connects to a `sqlite:` URL, creating the file if missing.
    pub async fn connect(url: &str, args: &DatabaseArgs) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| StoreError::InvalidUrl(format!("{e}")))?;
        Self::connect_with(options, args).await
    }

    /// Opens the SQLite file at `path`, creating it if missing.
    pub async fn connect_file(path: &str, args: &DatabaseArgs) -> Result<Self, StoreError> {
        Self::connect_with(SqliteConnectOptions::new().filename(path), args).await
    }

    async fn connect_with(
        options: SqliteConnectOptions,
        args: &DatabaseArgs,
    ) -> Result<Self, StoreError> {
        let target = format!("sqlite database {}", options.get_filename().display());
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(args.database_timeout)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(args.database_max_connections.max(1))
            .acquire_timeout(args.database_timeout)
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
}
