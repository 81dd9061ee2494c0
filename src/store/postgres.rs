//! The Postgres store: production, shared by every replica. Uses the database clock for leases
//! and expiry; migrations are serialized across replicas by sqlx's advisory lock.

use std::str::FromStr;

use async_trait::async_trait;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::{Backend, Store, StoreError};
use crate::config::DatabaseArgs;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// A store on a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    /// Connects to `url` (a `postgres://` URL), failing within the configured timeout.
    pub async fn connect(url: &str, args: &DatabaseArgs) -> Result<Self, StoreError> {
        let options =
            PgConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(format!("{e}")))?;
        Self::connect_with(options, args).await
    }

    /// Connects with parsed options (tests use this to pick a fresh database).
    pub async fn connect_with(
        options: PgConnectOptions,
        args: &DatabaseArgs,
    ) -> Result<Self, StoreError> {
        let target = describe(&options);
        let pool = PgPoolOptions::new()
            .max_connections(args.database_max_connections.max(1))
            .acquire_timeout(args.database_timeout)
            .connect_with(options)
            .await
            .map_err(|source| StoreError::Connect { target, source })?;
        Ok(Self { pool })
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
