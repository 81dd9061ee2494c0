//! Helpers shared by the integration tests: fresh databases (Postgres and SQLite) and a real
//! server started on port 0 with a tonic client.
// Each test binary uses a different part of this module; helpers panic with a message, as tests do.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, str::FromStr, time::Duration};

use pipeline_control::{
    app::Application,
    config::{DatabaseArgs, ServeArgs},
};
use sqlx::{
    AssertSqlSafe, ConnectOptions as _, Connection as _, Executor as _,
    postgres::{PgConnectOptions, PgConnection},
};
use tokio::{sync::oneshot, task::JoinHandle};

// The emulator crate's own test helpers (the SDK client, the admin surface, pipelines and
// executions), shared rather than copied.
#[path = "../../crates/sagemaker-emulator/tests/support/mod.rs"]
mod sdk;
pub use sdk::*;

/// Runs `$test(backend)` once on Postgres and once on SQLite, as two tests named
/// `$test::postgres` and `$test::sqlite`.
macro_rules! on_both_databases {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(super::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(super::Backend::Sqlite).await
            }
        }
    )*};
}

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
    /// A Postgres database the test made itself (a cluster of its own, say), at `url`.
    pub fn at(url: String) -> Self {
        Self {
            backend: Backend::Postgres,
            url,
            postgres_name: None,
            _dir: None,
        }
    }

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
    /// Where `/metrics` is served (`None` with `--metrics-listen off`).
    pub metrics: Option<SocketAddr>,
    /// The plaintext health port (`None` without `--health-listen`).
    pub health: Option<SocketAddr>,
    /// The web console (`None` without `--console-listen`).
    pub console: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

/// Serve settings for tests: port 0, quick health checks, a SageMaker region so that no
/// credential or region lookup leaves the machine.
pub fn test_args(db: &TestDb) -> ServeArgs {
    let mut args = ServeArgs::new(db.args());
    args.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    args.metrics_listen =
        pipeline_control::config::MetricsListen(Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    args.health_check_interval = Duration::from_millis(100);
    args.shutdown_grace = Duration::from_secs(30);
    args.sagemaker.aws_region = Some("us-east-1".into());
    // Tests fire bursts from one principal; the rate limits have their own tests.
    args.limits.stop_rate_limit = 0.0;
    args.limits.read_rate_limit = 0.0;
    args
}

impl TestApp {
    pub async fn spawn(args: ServeArgs) -> Self {
        let app = Application::build(args)
            .await
            .expect("the application builds");
        let addr = app.local_addr();
        let metrics = app.metrics_addr();
        let health = app.health_addr();
        let console = app.console_addr();
        let (tx, rx) = oneshot::channel();
        let handle = tokio::spawn(app.run_until(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            metrics,
            health,
            console,
            shutdown: Some(tx),
            handle: Some(handle),
        }
    }

    /// `GET /metrics` with `accept`; returns the content type and the page.
    pub async fn scrape_as(&self, accept: &str) -> (String, String) {
        let address = self.metrics.expect("metrics are served");
        let response = reqwest::Client::new()
            .get(format!("http://{address}/metrics"))
            .header("accept", accept)
            .send()
            .await
            .expect("scrape /metrics");
        assert!(response.status().is_success(), "{response:?}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (content_type, response.text().await.expect("a page"))
    }

    /// `GET /metrics` as Prometheus asks for the text format.
    pub async fn scrape(&self) -> Metrics {
        let (content_type, page) = self
            .scrape_as("text/plain;version=0.0.4;q=1,*/*;q=0.1")
            .await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        Metrics::parse(&page)
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

pub mod proxy;

/// A scraped page in the Prometheus text format, parsed strictly: every line a comment
/// (`# HELP`, `# TYPE`) or a sample `name{label="value",...} number`.
pub struct Metrics {
    pub page: String,
    samples: Vec<Sample>,
}

/// A sample's name, labels and value.
type Sample = (String, Vec<(String, String)>, f64);

impl Metrics {
    pub fn parse(page: &str) -> Self {
        let sample = regex::Regex::new(
            r#"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{((?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*)\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$"#,
        )
        .unwrap();
        let label = regex::Regex::new(r#"([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)""#).unwrap();
        let mut samples = Vec::new();
        for line in page.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let captures = sample
                .captures(line)
                .unwrap_or_else(|| panic!("not a Prometheus text line: {line:?}"));
            let labels = captures
                .get(2)
                .map(|l| {
                    label
                        .captures_iter(l.as_str())
                        .map(|c| (c[1].to_string(), c[2].to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value = match &captures[3] {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap(),
            };
            samples.push((captures[1].to_string(), labels, value));
        }
        Self {
            page: page.to_string(),
            samples,
        }
    }

    /// The value of the one sample of `name` with exactly `labels` (any order).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one sample {name}{labels:?} in:\n{}",
            self.page
        );
        found[0]
    }

    /// The sum of `name`'s samples whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| *v)
            .sum()
    }

    /// How many samples `name` has.
    pub fn series(&self, name: &str) -> usize {
        self.samples.iter().filter(|(n, _, _)| n == name).count()
    }
}

/// The whole service for one test: a database, the emulator, the server (pointed at the
/// emulator, possibly through a proxy), and clients.
pub struct Stack {
    pub db: TestDb,
    pub emulator: sagemaker_emulator::RunningEmulator,
    pub app: TestApp,
    pub sagemaker: aws_sdk_sagemaker::Client,
    pub admin: Admin,
    pub client: pipeline_control::pb::pipeline_control_client::PipelineControlClient<
        tonic::transport::Channel,
    >,
}

/// Serve settings pointing at `endpoint` with dummy credentials and quick timings.
pub fn stack_args(db: &TestDb, endpoint: &str) -> ServeArgs {
    let mut args = test_args(db);
    args.sagemaker.sagemaker_endpoint = Some(endpoint.to_string());
    args.sagemaker.sts_endpoint = Some(endpoint.to_string());
    args.sagemaker.static_credentials = Some(("AKIDTEST".into(), "secret".into()));
    args.lease = Duration::from_secs(5);
    args.duplicate_wait = Duration::from_secs(20);
    args
}

impl Stack {
    /// A stack on `backend` with an emulator at `time_scale`; `tweak` adjusts the settings.
    pub async fn start(
        backend: Backend,
        time_scale: f64,
        tweak: impl FnOnce(&mut ServeArgs),
    ) -> Self {
        let db = TestDb::new(backend).await;
        let emulator = spawn_emulator(time_scale, None).await;
        let mut args = stack_args(&db, &emulator.endpoint_url);
        tweak(&mut args);
        let app = TestApp::spawn(args).await;
        let client = pipeline_control::pb::pipeline_control_client::PipelineControlClient::new(
            app.channel().await,
        );
        Self {
            sagemaker: sagemaker_client(&emulator.endpoint_url, 1),
            admin: Admin::new(&emulator.endpoint_url),
            db,
            emulator,
            app,
            client,
        }
    }

    /// Starts an execution of a fresh pipeline made of `steps`.
    pub async fn execution(&self, steps: serde_json::Value) -> String {
        let pipeline = create_pipeline(&self.sagemaker, steps).await;
        start_execution(&self.sagemaker, &pipeline).await
    }

    /// An execution that stays Stopping once stopped (a Callback step waits).
    pub async fn callback_execution(&self) -> String {
        callback_execution(&self.sagemaker).await
    }

    /// StopExecution with a generated token; panics unless it succeeds.
    pub async fn stop(&self, arn: &str) -> pipeline_control::pb::StopExecutionResponse {
        self.client
            .clone()
            .stop_execution(pipeline_control::pb::StopExecutionRequest {
                pipeline_execution_arn: arn.to_string(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Rows in `stop_requests`, straight from the database.
    pub async fn stored_requests(&self) -> i64 {
        count_rows(&self.db, "stop_requests").await
    }
}

/// A proxy in front of the test's Postgres, and a URL of the database through it (the test
/// cuts it to take the database "down" for one server).
pub async fn postgres_through_proxy(db: &TestDb) -> (String, proxy::Proxy) {
    let options = sqlx::postgres::PgConnectOptions::from_str(&db.url).unwrap();
    let target = match options.get_socket() {
        Some(dir) => proxy::Target::Unix(dir.join(format!(".s.PGSQL.{}", options.get_port()))),
        None => proxy::Target::Tcp(
            format!("{}:{}", options.get_host(), options.get_port())
                .parse()
                .unwrap(),
        ),
    };
    let proxy = proxy::Proxy::start(target).await;
    let url = format!(
        "postgres://{}@{}/{}",
        options.get_username(),
        proxy.addr,
        options.get_database().unwrap()
    );
    (url, proxy)
}

/// Rows in `table` of the test database.
pub async fn count_rows(db: &TestDb, table: &str) -> i64 {
    count_where(db, table, "true").await
}

/// Runs `statements` in order on one connection to the test database.
pub async fn execute(db: &TestDb, statements: &[&str]) {
    use sqlx::Connection as _;
    match db.backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            for statement in statements {
                conn.execute(AssertSqlSafe(*statement)).await.unwrap();
            }
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            for statement in statements {
                conn.execute(AssertSqlSafe(*statement)).await.unwrap();
            }
        }
    }
}

/// Rows in `table` of the test database that satisfy `condition`.
pub async fn count_where(db: &TestDb, table: &str, condition: &str) -> i64 {
    use sqlx::Connection as _;
    let sql = format!("SELECT count(*) FROM {table} WHERE {condition}");
    match db.backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&mut conn)
                .await
                .unwrap()
        }
    }
}

/// A bearer-token file (`--auth-tokens-file`) for `(principal, token)` pairs.
pub fn token_file(entries: &[(&str, &str)]) -> String {
    use sha2::Digest as _;
    entries
        .iter()
        .map(|(principal, token)| {
            format!(
                "[[token]]\nprincipal = \"{principal}\"\nsha256 = \"{}\"\n\n",
                hex::encode(sha2::Sha256::digest(token.as_bytes()))
            )
        })
        .collect()
}

/// Scrapes `app` every 50 ms until `holds` is true of its metrics, failing with `what` after
/// `within`.
pub async fn until_scraped(
    app: &TestApp,
    within: Duration,
    what: &str,
    holds: impl Fn(&Metrics) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    while !holds(&app.scrape().await) {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An execution that stays Stopping once stopped (a Callback step waits).
pub async fn callback_execution(sagemaker: &aws_sdk_sagemaker::Client) -> String {
    let pipeline = create_pipeline(
        sagemaker,
        serde_json::json!([
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs.us-east-1.amazonaws.com/123456789012/q"},
            {"Name": "Train", "Type": "Training", "DependsOn": ["Approve"]}
        ]),
    )
    .await;
    start_execution(sagemaker, &pipeline).await
}

/// An execution whose Training step fails its first attempt and succeeds when retried, ten
/// emulated seconds each (a second of an emulator at ten times the speed).
pub async fn failing_once(sagemaker: &aws_sdk_sagemaker::Client) -> String {
    let pipeline = create_pipeline(
        sagemaker,
        serde_json::json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 10, "FailAttempts": 1}}}]),
    )
    .await;
    start_execution(sagemaker, &pipeline).await
}

/// Retries the failed execution `arn` in SageMaker (the same ARN runs again) and returns once
/// it is Executing.
pub async fn retried(sagemaker: &aws_sdk_sagemaker::Client, arn: &str) {
    sagemaker
        .retry_pipeline_execution()
        .pipeline_execution_arn(arn)
        .client_request_token(token())
        .send()
        .await
        .unwrap();
    wait_for_status(sagemaker, arn, "Executing").await;
}

/// A running execution (a Training step that takes a day unless stopped).
pub async fn running(sagemaker: &aws_sdk_sagemaker::Client) -> String {
    let pipeline = create_pipeline(
        sagemaker,
        serde_json::json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 86400}}}]),
    )
    .await;
    let arn = start_execution(sagemaker, &pipeline).await;
    wait_for_status(sagemaker, &arn, "Executing").await;
    arn
}
