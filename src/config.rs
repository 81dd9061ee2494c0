//! The command line: every setting is a flag with an environment-variable equivalent and a doc
//! line, so `pipeline-control <command> --help` is the complete reference.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Stop Amazon SageMaker pipeline executions safely: durable idempotency, honest progress,
/// upstream economy.
#[derive(Debug, Parser)]
#[command(name = "pipeline-control", version, about, long_about = None)]
pub struct Cli {
    /// Log format: `text` for people, `json` for log pipelines (one object a line).
    #[arg(long, env = "PIPELINE_CONTROL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Which logs to write, as a tracing filter (`info`, `debug`, `pipeline_control=debug,info`).
    #[arg(
        long,
        env = "PIPELINE_CONTROL_LOG",
        default_value = "info",
        global = true
    )]
    pub log_filter: String,

    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands of the one binary.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing would only add noise
pub enum Command {
    /// Run the gRPC service (applies pending migrations first).
    Serve(ServeArgs),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Run the SageMaker Pipelines emulator alone (SageMaker's wire protocol on HTTP).
    Emulator(EmulatorArgs),
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Settings of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on (port 0 picks a free port).
    #[arg(
        long,
        env = "PIPELINE_CONTROL_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// How long a shutdown (SIGTERM, Ctrl-C) waits for in-flight calls before cutting them off.
    #[arg(long, env = "PIPELINE_CONTROL_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// How often the health checker pings the database; health turns NOT_SERVING while it fails.
    #[arg(long, env = "PIPELINE_CONTROL_HEALTH_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub health_check_interval: Duration,

    /// How long stop requests are remembered: a retry with the same token replays the answer
    /// until then; afterwards the record is deleted and the token may be used afresh.
    #[arg(long, env = "PIPELINE_CONTROL_IDEMPOTENCY_RETENTION", default_value = "30days", value_parser = humantime::parse_duration)]
    pub idempotency_retention: Duration,

    /// How long a replica holds a claimed stop request before another may take it over (after
    /// a crash, say). Longer than a stop takes, retries included.
    #[arg(long, env = "PIPELINE_CONTROL_LEASE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub lease: Duration,

    /// The longest a duplicate request waits for the first one's outcome before answering
    /// ABORTED (it never waits past the caller's own deadline).
    #[arg(long, env = "PIPELINE_CONTROL_DUPLICATE_WAIT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub duplicate_wait: Duration,

    /// How often the background completer looks for stop requests whose owner died.
    #[arg(long, env = "PIPELINE_CONTROL_COMPLETER_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub completer_interval: Duration,

    /// How often expired stop requests are deleted (in batches).
    #[arg(long, env = "PIPELINE_CONTROL_RETENTION_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,

    /// Attempts per SageMaker call: throttling, 5xx and network errors are retried with
    /// exponential backoff and jitter.
    #[arg(long, env = "PIPELINE_CONTROL_UPSTREAM_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub upstream_attempts: u32,

    /// How often a watched execution is read from SageMaker (once per interval however many
    /// watch it; with jitter, and backing off up to 30 s while SageMaker throttles or fails).
    #[arg(long, env = "PIPELINE_CONTROL_POLL_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// A watch stream with nothing new sends a heartbeat after this long.
    #[arg(long, env = "PIPELINE_CONTROL_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// How long a poller goes on after its last watcher left, for a quick reconnect.
    #[arg(long, env = "PIPELINE_CONTROL_POLLER_LINGER", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poller_linger: Duration,

    /// Concurrent WatchExecution streams at most; more answer RESOURCE_EXHAUSTED.
    #[arg(
        long,
        env = "PIPELINE_CONTROL_MAX_WATCH_STREAMS",
        default_value_t = 10_000
    )]
    pub max_watch_streams: usize,

    /// TLS, authentication and authorization.
    #[command(flatten)]
    pub security: SecurityArgs,

    /// Limits that keep one caller from exhausting the service for the others.
    #[command(flatten)]
    pub limits: LimitArgs,

    /// The database.
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// SageMaker.
    #[command(flatten)]
    pub sagemaker: SageMakerArgs,

    /// Start the SageMaker Pipelines emulator in-process on a free port, point the SageMaker
    /// client at it (dummy credentials) and seed demo executions: a local demo with no account.
    #[arg(long, env = "PIPELINE_CONTROL_EMULATOR")]
    pub emulator: bool,

    /// The emulator's settings (with --emulator).
    #[command(flatten)]
    pub emulator_settings: EmulatorSettings,
}

/// TLS on the gRPC port, who callers are, and what each may do.
#[derive(Debug, Clone, Default, Args)]
pub struct SecurityArgs {
    /// PEM certificate chain the server presents; turns TLS on (with --tls-key).
    #[arg(long, env = "PIPELINE_CONTROL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "PIPELINE_CONTROL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s) that client certificates must chain to: turns on mutual TLS. The
    /// caller is the certificate's URI SAN, else its first DNS SAN, else its CN.
    #[arg(long, env = "PIPELINE_CONTROL_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// TOML file of `[[token]]` tables (`principal`, `sha256` = hex SHA-256 of the token):
    /// callers send `authorization: Bearer <token>`. Reloaded on SIGHUP.
    #[arg(long, env = "PIPELINE_CONTROL_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// TOML file of `[[allow]]` tables (`principal`, `stop` and `read` lists of glob patterns
    /// over execution ARNs); everything not allowed is denied. Reloaded on SIGHUP.
    #[arg(long, env = "PIPELINE_CONTROL_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,

    /// Refuse to start unless client certificates or tokens are configured.
    #[arg(long, env = "PIPELINE_CONTROL_REQUIRE_AUTH")]
    pub require_auth: bool,
}

/// Limits on what callers can ask of the service.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest request message accepted, in bytes; larger ones answer RESOURCE_EXHAUSTED.
    #[arg(long, env = "PIPELINE_CONTROL_MAX_MESSAGE_SIZE", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(512..=4_194_304))]
    pub max_message_size: u32,

    /// Longest a call may take in the server (unary calls, and a stream until its first
    /// message); longer ones answer DEADLINE_EXCEEDED. A caller's shorter deadline wins.
    #[arg(long, env = "PIPELINE_CONTROL_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,

    /// Calls in progress at most, all callers together (streams count until their first
    /// message); more answer RESOURCE_EXHAUSTED.
    #[arg(long, env = "PIPELINE_CONTROL_MAX_CONCURRENT_REQUESTS", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,

    /// StopExecution calls per second per principal (sustained); more answer
    /// RESOURCE_EXHAUSTED with a RetryInfo. 0 turns the limit off.
    #[arg(long, env = "PIPELINE_CONTROL_STOP_RATE_LIMIT", default_value_t = 50.0, value_parser = rate)]
    pub stop_rate_limit: f64,

    /// StopExecution calls a principal may make in a burst: the size of its bucket, which
    /// refills at the sustained rate.
    #[arg(long, env = "PIPELINE_CONTROL_STOP_RATE_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub stop_rate_burst: u32,

    /// HTTP/2 PING interval on idle connections, to find dead peers (0s turns it off).
    #[arg(long, env = "PIPELINE_CONTROL_HTTP2_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "PIPELINE_CONTROL_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            max_message_size: 65_536,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 1_000,
            stop_rate_limit: 50.0,
            stop_rate_burst: 100,
            http2_keepalive_interval: Duration::from_secs(60),
            http2_keepalive_timeout: Duration::from_secs(20),
        }
    }
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && (0.0..=1_000_000.0).contains(&f) => Ok(f),
        _ => Err("must be a number from 0 (no limit) to 1000000".into()),
    }
}

/// Settings of `emulator`.
#[derive(Debug, Clone, Args)]
pub struct EmulatorArgs {
    /// Address the emulator listens on (port 0 picks a free port).
    #[arg(
        long,
        env = "PIPELINE_CONTROL_EMULATOR_LISTEN",
        default_value = "127.0.0.1:9380"
    )]
    pub listen: SocketAddr,

    /// The region in the ARNs it makes.
    #[arg(
        long,
        env = "PIPELINE_CONTROL_EMULATOR_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,

    /// The emulator's behaviour.
    #[command(flatten)]
    pub settings: EmulatorSettings,
}

/// How the emulator runs, for `emulator` and `serve --emulator`.
#[derive(Debug, Clone, Args)]
pub struct EmulatorSettings {
    /// Emulated seconds per real second: 60 runs a one-minute step in one second.
    #[arg(long, env = "PIPELINE_CONTROL_EMULATOR_TIME_SCALE", default_value_t = 1.0, value_parser = positive_scale)]
    pub time_scale: f64,

    /// Seed for the ids it makes: the same calls in the same order give the same ids.
    #[arg(long, env = "PIPELINE_CONTROL_EMULATOR_SEED")]
    pub seed: Option<u64>,

    /// The 12-digit account id in the ARNs it makes.
    #[arg(long, env = "PIPELINE_CONTROL_EMULATOR_ACCOUNT_ID", default_value = "123456789012", value_parser = account_id)]
    pub account_id: String,
}

impl Default for EmulatorSettings {
    fn default() -> Self {
        Self {
            time_scale: 1.0,
            seed: None,
            account_id: "123456789012".into(),
        }
    }
}

fn positive_scale(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 && f <= 1_000_000.0 => Ok(f),
        _ => Err("must be a number greater than 0 and at most 1000000".into()),
    }
}

fn account_id(text: &str) -> Result<String, String> {
    if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
        Ok(text.to_string())
    } else {
        Err("must be 12 digits".into())
    }
}

impl EmulatorSettings {
    /// The emulator's options for `region`.
    pub fn options(&self, region: &str) -> crate::emulator::EmulatorOptions {
        crate::emulator::EmulatorOptions {
            time_scale: self.time_scale,
            seed: self.seed,
            region: region.to_string(),
            account_id: self.account_id.clone(),
        }
    }
}

/// Where the stop-request store lives.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database URL: `postgres://user:password@host/db` for Postgres; `sqlite://path`, or a plain
    /// file path, for an embedded SQLite file (created if missing).
    #[arg(long, env = "DATABASE_URL", default_value = "pipeline-control.db")]
    pub database_url: String,

    /// Maximum open database connections.
    #[arg(
        long,
        env = "PIPELINE_CONTROL_DATABASE_MAX_CONNECTIONS",
        default_value_t = 10
    )]
    pub database_max_connections: u32,

    /// How long to wait for a database connection (at start and per query) before giving up.
    #[arg(long, env = "PIPELINE_CONTROL_DATABASE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub database_timeout: Duration,
}

/// How to reach SageMaker.
#[derive(Debug, Clone, Default, Args)]
pub struct SageMakerArgs {
    /// SageMaker endpoint override (an emulator, a VPC endpoint); else the AWS default.
    #[arg(long, env = "SAGEMAKER_ENDPOINT_URL")]
    pub sagemaker_endpoint: Option<String>,

    /// AWS region; else the AWS default chain (AWS_REGION, profile, instance metadata).
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// Fixed credentials (access key id, secret) instead of the AWS default chain: for
    /// programs that embed the service against an emulator. Not a command-line setting.
    #[arg(skip)]
    pub static_credentials: Option<(String, String)>,
}

impl DatabaseArgs {
    /// Settings for `url` with the defaults of the command line.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            database_url: url.into(),
            database_max_connections: 10,
            database_timeout: Duration::from_secs(5),
        }
    }
}

impl ServeArgs {
    /// The defaults of `serve`, with the given database: a starting point for tests and embedders.
    pub fn new(database: DatabaseArgs) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            shutdown_grace: Duration::from_secs(20),
            health_check_interval: Duration::from_secs(5),
            idempotency_retention: Duration::from_secs(30 * 24 * 3600),
            lease: Duration::from_secs(30),
            duplicate_wait: Duration::from_secs(10),
            completer_interval: Duration::from_secs(5),
            retention_interval: Duration::from_secs(60),
            upstream_attempts: 3,
            poll_interval: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(15),
            poller_linger: Duration::from_secs(5),
            max_watch_streams: 10_000,
            security: SecurityArgs::default(),
            limits: LimitArgs::default(),
            database,
            sagemaker: SageMakerArgs::default(),
            emulator: false,
            emulator_settings: EmulatorSettings::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The defaults as declared (the environment, which tests may set, plays no part).
    fn declared_default(subcommand: &str, id: &str) -> String {
        let command = Cli::command();
        let arg = command
            .find_subcommand(subcommand)
            .and_then(|c| c.get_arguments().find(|a| a.get_id() == id))
            .unwrap_or_else(|| panic!("{subcommand} has no argument {id}"));
        let values: Vec<_> = arg.get_default_values().iter().collect();
        assert_eq!(values.len(), 1, "{id} has one default");
        values[0].to_string_lossy().into_owned()
    }

    #[test]
    fn serve_defaults_match_the_contract() {
        assert_eq!(declared_default("serve", "listen"), "127.0.0.1:50051");
        assert_eq!(
            declared_default("serve", "database_url"),
            "pipeline-control.db"
        );
        assert_eq!(
            declared_default("migrate", "database_url"),
            "pipeline-control.db"
        );
        // ServeArgs::new agrees with the command line.
        let built = ServeArgs::new(DatabaseArgs::new("x"));
        assert_eq!(
            built.listen.to_string(),
            declared_default("serve", "listen")
        );
        assert_eq!(
            built.shutdown_grace,
            humantime::parse_duration(&declared_default("serve", "shutdown_grace")).unwrap()
        );
        assert_eq!(
            built.database.database_timeout,
            humantime::parse_duration(&declared_default("serve", "database_timeout")).unwrap()
        );
        let limits = LimitArgs::default();
        assert_eq!(
            limits.max_message_size.to_string(),
            declared_default("serve", "max_message_size")
        );
        assert_eq!(
            limits.request_timeout,
            humantime::parse_duration(&declared_default("serve", "request_timeout")).unwrap()
        );
        assert_eq!(
            limits.max_concurrent_requests.to_string(),
            declared_default("serve", "max_concurrent_requests")
        );
        assert_eq!(
            limits.stop_rate_limit,
            declared_default("serve", "stop_rate_limit")
                .parse::<f64>()
                .unwrap()
        );
        assert_eq!(
            limits.stop_rate_burst.to_string(),
            declared_default("serve", "stop_rate_burst")
        );
        assert_eq!(
            limits.http2_keepalive_interval,
            humantime::parse_duration(&declared_default("serve", "http2_keepalive_interval"))
                .unwrap()
        );
        assert_eq!(
            limits.http2_keepalive_timeout,
            humantime::parse_duration(&declared_default("serve", "http2_keepalive_timeout"))
                .unwrap()
        );
        assert_eq!(
            built.health_check_interval,
            humantime::parse_duration(&declared_default("serve", "health_check_interval")).unwrap()
        );
    }

    #[test]
    fn emulator_settings_are_checked() {
        for bad in [
            vec!["pipeline-control", "emulator", "--time-scale", "0"],
            vec!["pipeline-control", "emulator", "--time-scale", "-2"],
            vec!["pipeline-control", "emulator", "--account-id", "12345"],
        ] {
            assert!(Cli::try_parse_from(&bad).is_err(), "{bad:?}");
        }
        let cli = Cli::try_parse_from([
            "pipeline-control",
            "emulator",
            "--time-scale",
            "60",
            "--seed",
            "7",
        ])
        .map_err(|e| e.to_string());
        let Ok(Cli {
            command: Command::Emulator(args),
            ..
        }) = cli
        else {
            panic!("emulator did not parse: {cli:?}");
        };
        assert_eq!(args.settings.time_scale, 60.0);
        assert_eq!(args.settings.seed, Some(7));
        assert_eq!(declared_default("emulator", "listen"), "127.0.0.1:9380");
        assert_eq!(
            EmulatorSettings::default().time_scale.to_string(),
            declared_default("emulator", "time_scale")
        );
    }

    #[test]
    fn tls_flags_come_in_the_pairs_they_need() {
        let parse = |extra: &[&str]| {
            let mut args = vec!["pipeline-control", "serve"];
            args.extend_from_slice(extra);
            Cli::try_parse_from(args).map(|_| ()).map_err(|e| e.kind())
        };
        assert!(parse(&["--tls-cert", "c.pem", "--tls-key", "k.pem"]).is_ok());
        assert!(parse(&["--tls-cert", "c.pem"]).is_err());
        assert!(parse(&["--tls-key", "k.pem"]).is_err());
        assert!(parse(&["--tls-client-ca", "ca.pem"]).is_err());
        assert!(parse(&["--stop-rate-limit", "-1"]).is_err());
        assert!(parse(&["--max-message-size", "10"]).is_err());
        assert!(parse(&["--stop-rate-limit", "0", "--auth-tokens-file", "t.toml"]).is_ok());
    }

    #[test]
    fn durations_take_units() {
        let cli = Cli::try_parse_from([
            "pipeline-control",
            "serve",
            "--shutdown-grace",
            "1500ms",
            "--database-url",
            "x.db",
        ])
        .map_err(|e| e.to_string());
        let Ok(Cli {
            command: Command::Serve(args),
            ..
        }) = cli
        else {
            panic!("serve did not parse: {cli:?}");
        };
        assert_eq!(args.shutdown_grace, Duration::from_millis(1500));
        assert_eq!(args.database.database_url, "x.db");
    }
}
