//! The command line: every setting is a flag with an environment-variable equivalent and a doc
//! line, so `pipeline-control <command> --help` is the complete reference.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, FromArgMatches, Subcommand};
use sagemaker_emulator::cli::{EmulatorArgs, EmulatorSettings};

/// The subcommands that run the service or its parts.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start; boxing would only add noise
pub enum ServiceCommand {
    /// Run the gRPC service (applies pending migrations first).
    Serve(ServeArgs),
    /// Apply pending database migrations, then exit.
    Migrate(DatabaseArgs),
    /// Run the SageMaker Pipelines emulator alone (SageMaker's wire protocol on HTTP).
    Emulator(EmulatorArgs),
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

    /// How long the audit trail (`stop_audit`: who asked to stop what, why, when, and what came
    /// of it) is kept; older rows are deleted in batches.
    #[arg(long, env = "PIPELINE_CONTROL_AUDIT_RETENTION", default_value = "90days", value_parser = humantime::parse_duration)]
    pub audit_retention: Duration,

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

    /// How often expired stop requests and old audit rows are deleted (in batches).
    #[arg(long, env = "PIPELINE_CONTROL_RETENTION_INTERVAL", default_value = "1m", value_parser = humantime::parse_duration)]
    pub retention_interval: Duration,

    /// Attempts per SageMaker call: throttling, 5xx and network errors are retried with
    /// exponential backoff and jitter, each attempt in its turn of the pace.
    #[arg(long, env = "PIPELINE_CONTROL_UPSTREAM_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub upstream_attempts: u32,

    /// Pace the calls to each (account, region) of SageMaker: once SageMaker throttles an
    /// operation there, its calls (and their attempts) go one after the other at a rate that
    /// halves on each throttling and grows back while calls are answered. `false`: every call
    /// goes at once, as many as ask.
    #[arg(long, env = "PIPELINE_CONTROL_UPSTREAM_PACING", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub upstream_pacing: bool,

    /// How often a watched execution is read from SageMaker (once per interval however many
    /// watch it; with jitter, and backing off up to 30 s while SageMaker throttles or fails).
    #[arg(long, env = "PIPELINE_CONTROL_POLL_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub poll_interval: Duration,

    /// SQS queues an EventBridge rule fills with SageMaker's pipeline execution and step
    /// status changes (repeatable; comma-separated in the environment). An event makes the
    /// execution's poller read it at once; while events flow, pollers read only every
    /// `--poll-fallback-interval`.
    #[arg(
        long = "events-queue-url",
        env = "PIPELINE_CONTROL_EVENTS_QUEUE_URLS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub events_queue_urls: Vec<String>,

    /// How often a watched execution is read from SageMaker while events flow (every events
    /// queue answering); when one fails, `--poll-interval` again.
    #[arg(long, env = "PIPELINE_CONTROL_POLL_FALLBACK_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub poll_fallback_interval: Duration,

    /// A watch stream with nothing new sends a heartbeat after this long.
    #[arg(long, env = "PIPELINE_CONTROL_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,

    /// On Postgres, replicas share the reading of each watched execution: one holds a lease
    /// and reads SageMaker for all. This is how long the lease lasts unrenewed, so how soon
    /// another replica takes over from one that died (it is renewed every third of it).
    #[arg(long, env = "PIPELINE_CONTROL_WATCH_LEASE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub watch_lease: Duration,

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

    /// Where `GET /metrics` is served (Prometheus text, or OpenMetrics when the scraper asks
    /// for it), on a port of its own without TLS or authentication; `off` turns it off, port 0
    /// picks a free port.
    #[arg(long, env = "PIPELINE_CONTROL_METRICS_LISTEN", default_value = "127.0.0.1:9464", value_parser = MetricsListen::parse)]
    pub metrics_listen: MetricsListen,

    /// Serve only `grpc.health.v1` here, in plaintext, on a port of its own (port 0 picks a
    /// free port): for probes that carry no client certificate, such as kubelet's gRPC probes,
    /// while the main port requires mutual TLS. NOT_SERVING while the database is out and from
    /// the moment a shutdown starts. Off when unset.
    #[arg(long, env = "PIPELINE_CONTROL_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Serve the web console for people on call here (plain HTTP: put an authenticating proxy
    /// with TLS in front; port 0 picks a free port). Off when unset, except with --emulator,
    /// which serves it on a free loopback port and prints its URL.
    #[arg(long, env = "PIPELINE_CONTROL_CONSOLE_LISTEN")]
    pub console_listen: Option<SocketAddr>,

    /// Export traces over OTLP/gRPC to this collector (`http://host:4317`); off when unset.
    /// The standard `OTEL_EXPORTER_OTLP_*` and `OTEL_BSP_*` variables tune the export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

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

/// `--metrics-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsListen(pub Option<SocketAddr>);

impl MetricsListen {
    fn parse(value: &str) -> Result<Self, String> {
        if value.eq_ignore_ascii_case("off") {
            return Ok(Self(None));
        }
        value
            .parse()
            .map(|address| Self(Some(address)))
            .map_err(|_| format!("`{value}` is neither an address (`127.0.0.1:9464`) nor `off`"))
    }
}

impl ServeArgs {
    /// The OTLP endpoint, if traces are on (an empty variable counts as unset).
    pub fn traces_endpoint(&self) -> Option<&str> {
        self.otlp_endpoint
            .as_deref()
            .filter(|e| !e.trim().is_empty())
    }
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

    /// TOML file of the platform identities callers may prove: `[[jwt]]` issuers (Kubernetes
    /// service-account tokens, OpenID Connect), `[iam]`, and a `[mesh]` proxy in front.
    /// Reloaded on SIGHUP.
    #[arg(long, env = "PIPELINE_CONTROL_IDENTITY_FILE")]
    pub identity_file: Option<PathBuf>,

    /// Refuse to start unless client certificates, tokens, JWT issuers or a mesh are
    /// configured, and refuse every call that proves no identity.
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

    /// Calls in progress at most by any one caller (a principal, whichever way it was proven;
    /// each connection of anonymous callers), out of --max-concurrent-requests: a caller that
    /// holds its whole share leaves the others theirs. More answer RESOURCE_EXHAUSTED.
    #[arg(long, env = "PIPELINE_CONTROL_MAX_CONCURRENT_PER_CALLER", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_per_caller: u32,

    /// How long a request's message may take to arrive once its headers have; a call holds
    /// nothing of the concurrency limit until it has. Later ones answer RESOURCE_EXHAUSTED.
    #[arg(long, env = "PIPELINE_CONTROL_BODY_DEADLINE", default_value = "5s", value_parser = humantime::parse_duration)]
    pub body_deadline: Duration,

    /// HTTP/2 streams one connection may have open at once (MAX_CONCURRENT_STREAMS in the
    /// server's SETTINGS): what one connection can make the server hold. Watch streams count
    /// while they last: a client that follows more executions at once on one connection
    /// waits for a stream (or opens another connection).
    #[arg(long, env = "PIPELINE_CONTROL_MAX_STREAMS_PER_CONNECTION", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// How long a new connection may take to make its first call (the TLS handshake and
    /// HTTP/2 preface included) before it is closed.
    #[arg(long, env = "PIPELINE_CONTROL_HANDSHAKE_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub handshake_timeout: Duration,

    /// How long the server's writes may wait on a peer that reads nothing before its
    /// connection is closed (and the responses queued for it freed).
    #[arg(long, env = "PIPELINE_CONTROL_WRITE_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub write_timeout: Duration,

    /// Requests in flight at most to each upstream endpoint (a region's SageMaker, STS), and
    /// so connections to it: a flood of callers queues here rather than opening a connection
    /// each. The events queues' long polls (one per queue) are outside it.
    #[arg(long, env = "PIPELINE_CONTROL_UPSTREAM_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_max_connections: u32,

    /// StopExecution calls per second per principal (sustained); more answer
    /// RESOURCE_EXHAUSTED with a RetryInfo. 0 turns the limit off.
    #[arg(long, env = "PIPELINE_CONTROL_STOP_RATE_LIMIT", default_value_t = 50.0, value_parser = rate)]
    pub stop_rate_limit: f64,

    /// StopExecution calls a principal may make in a burst: the size of its bucket, which
    /// refills at the sustained rate.
    #[arg(long, env = "PIPELINE_CONTROL_STOP_RATE_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub stop_rate_burst: u32,

    /// Calls that read SageMaker (GetExecution, and the start of WatchExecution) per second per
    /// principal (sustained); more answer RESOURCE_EXHAUSTED with a RetryInfo. 0 turns the
    /// limit off.
    #[arg(long, env = "PIPELINE_CONTROL_READ_RATE_LIMIT", default_value_t = 50.0, value_parser = rate)]
    pub read_rate_limit: f64,

    /// Reading calls a principal may make in a burst: the size of its bucket, which refills at
    /// the sustained rate.
    #[arg(long, env = "PIPELINE_CONTROL_READ_RATE_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub read_rate_burst: u32,

    /// HTTP/2 PING interval on idle connections, to find dead peers (0s turns it off).
    #[arg(long, env = "PIPELINE_CONTROL_HTTP2_KEEPALIVE_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a PING may go unanswered before the connection is closed.
    #[arg(long, env = "PIPELINE_CONTROL_HTTP2_KEEPALIVE_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub http2_keepalive_timeout: Duration,
}

fn rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() && (0.0..=1_000_000.0).contains(&f) => Ok(f),
        _ => Err("must be a number from 0 (no limit) to 1000000".into()),
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

    /// SQS endpoint override for the events queues (an emulator, a VPC endpoint); else the
    /// AWS default of each queue's region.
    #[arg(long, env = "SQS_ENDPOINT_URL")]
    pub sqs_endpoint: Option<String>,

    /// STS endpoint override for the roles the accounts file names (an emulator, a VPC
    /// endpoint); else the AWS default for each execution's region.
    #[arg(long, env = "STS_ENDPOINT_URL")]
    pub sts_endpoint: Option<String>,

    /// TOML file of `[[account]]` tables (`id`, and optionally `regions`, `role_arn`,
    /// `external_id`, `endpoint`): the accounts and regions served, and how each is reached.
    /// Without it every account and region is served with the default credential chain.
    /// Reloaded on SIGHUP.
    #[arg(long, env = "PIPELINE_CONTROL_ACCOUNTS_FILE")]
    pub accounts_file: Option<PathBuf>,

    /// AWS region of the emulator demo and of the SDK's base configuration. SageMaker calls
    /// go to the region each execution ARN names, whatever this says.
    #[arg(long, env = "AWS_REGION")]
    pub aws_region: Option<String>,

    /// Fixed credentials (access key id, secret) instead of the AWS default chain: for
    /// programs that embed the service against an emulator. Not a command-line setting.
    #[arg(skip)]
    pub static_credentials: Option<(String, String)>,
}

impl DatabaseArgs {
    /// Settings for `url`, with the defaults the command line declares.
    pub fn new(url: impl Into<String>) -> Self {
        let mut args: Self = declared_defaults();
        args.database_url = url.into();
        args
    }

    /// The store's settings.
    pub fn store(&self) -> crate::store::Settings {
        crate::store::Settings {
            url: self.database_url.clone(),
            max_connections: self.database_max_connections,
            timeout: self.database_timeout,
        }
    }
}

impl ServeArgs {
    /// The defaults of `serve` as the command line declares them, with the given database: a
    /// starting point for tests and embedders. The environment plays no part.
    pub fn new(database: DatabaseArgs) -> Self {
        let mut args: Self = declared_defaults();
        args.database = database;
        args
    }
}

/// Settings parsed by clap from an empty command line with the environment ignored: the
/// defaults exactly as declared above, never a copy of them to keep in step.
fn declared_defaults<T: Args + FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
    let parsed = command
        .try_get_matches_from(["defaults"])
        .and_then(|matches| T::from_arg_matches(&matches));
    // Every setting has a default or is optional (shown by the tests below), so this cannot
    // fail whatever a caller or the environment does.
    #[allow(clippy::expect_used)]
    parsed.expect("the declared defaults parse")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    /// The service's commands as the binary parses them (its `Cli` also has the client's).
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: ServiceCommand,
    }

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
        assert_eq!(declared_default("emulator", "listen"), "127.0.0.1:9380");
    }

    #[test]
    fn built_settings_are_the_declared_defaults() {
        let built = ServeArgs::new(DatabaseArgs::new("x.db"));
        assert_eq!(built.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(built.shutdown_grace, Duration::from_secs(20));
        assert_eq!(built.limits.max_message_size, 65_536);
        assert_eq!(built.limits.stop_rate_burst, 100);
        assert_eq!(built.limits.read_rate_limit, 50.0);
        assert_eq!(built.limits.read_rate_burst, 100);
        assert_eq!(built.database.database_timeout, Duration::from_secs(5));
        assert_eq!(built.database.database_url, "x.db");
        assert_eq!(built.emulator_settings.account_id, "123456789012");
        assert!(!built.emulator);
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
        assert!(parse(&["--read-rate-limit", "-1"]).is_err());
        assert!(parse(&["--read-rate-limit", "0", "--read-rate-burst", "5"]).is_ok());
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
            command: ServiceCommand::Serve(args),
        }) = cli
        else {
            panic!("serve did not parse: {cli:?}");
        };
        assert_eq!(args.shutdown_grace, Duration::from_millis(1500));
        assert_eq!(args.database.database_url, "x.db");
    }
}
