//! Helpers shared by the integration tests: fresh databases (Postgres and SQLite) and a real
//! server started on port 0 with a tonic client.
// Each test binary uses a different part of this module; helpers panic with a message, as tests do.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    str::FromStr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use pipeline_control::{
    app::Application,
    config::{DatabaseArgs, ServeArgs},
};
use sqlx::{
    AssertSqlSafe, ConnectOptions as _, Connection as _, Executor as _,
    postgres::{PgConnectOptions, PgConnection},
};
use tokio::{sync::oneshot, task::JoinHandle};

/// The two databases every store test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// A database that exists for one test: a fresh Postgres database (dropped afterwards) or an
/// SQLite file in a temporary folder.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    postgres_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

/// The Postgres server tests use: `DATABASE_URL` (scripts/test starts one when it is unset).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| {
        panic!("DATABASE_URL is not set: run the tests with scripts/test, which starts a Postgres")
    })
}

fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// `url` with its database name replaced by `name` (path and query kept as they are).
pub fn with_database(url: &str, name: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a URL with a scheme");
    let (authority, after) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let query = after.find('?').map(|i| &after[i..]).unwrap_or("");
    format!("{scheme}://{authority}/{name}{query}")
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("a temporary folder");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Self {
                    backend,
                    url,
                    postgres_name: None,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let admin = admin_url();
                let name = unique_name("pc_test");
                let mut conn = PgConnection::connect(&admin)
                    .await
                    .expect("connect to the test Postgres");
                conn.execute(sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE DATABASE \"{name}\""
                ))))
                .await
                .expect("create a test database");
                conn.close().await.ok();
                Self {
                    backend,
                    url: with_database(&admin, &name),
                    postgres_name: Some(name),
                    _dir: None,
                }
            }
        }
    }

    pub fn args(&self) -> DatabaseArgs {
        DatabaseArgs::new(self.url.clone())
    }

    /// Drops the Postgres database now, closing every connection to it.
    pub async fn drop_now(&mut self) {
        if let Some(name) = self.postgres_name.take() {
            drop_postgres_database(name).await;
        }
    }
}

async fn drop_postgres_database(name: String) {
    let options = PgConnectOptions::from_str(&admin_url()).expect("DATABASE_URL parses");
    if let Ok(mut conn) = options.connect().await {
        let _ = conn
            .execute(sqlx::raw_sql(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
            ))))
            .await;
        conn.close().await.ok();
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some(name) = self.postgres_name.take() {
            // Drop cannot await; a short-lived runtime on its own thread does the cleanup.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(drop_postgres_database(name));
                }
            })
            .join();
        }
    }
}

/// A server running in this process, on a free port.
pub struct TestApp {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Serve settings for tests: port 0, quick health checks, a SageMaker region so that no
/// credential or region lookup leaves the machine.
pub fn test_args(db: &TestDb) -> ServeArgs {
    let mut args = ServeArgs::new(db.args());
    args.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    args.health_check_interval = Duration::from_millis(100);
    args.shutdown_grace = Duration::from_secs(30);
    args.sagemaker.aws_region = Some("us-east-1".into());
    args
}

impl TestApp {
    pub async fn spawn(args: ServeArgs) -> Self {
        let app = Application::build(args)
            .await
            .expect("the application builds");
        let addr = app.local_addr();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("a valid endpoint")
            .connect()
            .await
            .expect("connect to the test server")
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Shuts down and returns what the server's run returned; a hang fails the test after a
    /// minute rather than blocking the suite.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        let handle = self.handle.take().expect("not shut down twice");
        tokio::time::timeout(Duration::from_secs(60), handle)
            .await
            .expect("the server exits after shutdown")
            .expect("the server task did not panic")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
