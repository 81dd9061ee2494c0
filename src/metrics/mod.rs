//! The service's metrics, one registry per running service (so that servers in one process,
//! tests' above all, never share counts). `server` serves it on `GET /metrics`.
//!
//! Names are a contract: the gRPC server metrics are go-grpc-middleware's (dashboards and
//! alerts for gRPC services know them), the service's own are prefixed `pipeline_control_`.
//! Labels hold only values from small fixed sets (operations, outcomes, reasons, codes), never
//! an ARN, a token or a principal. Every series an alert or a dashboard divides by exists at
//! zero from the start.
//!
//! The registry encodes OpenMetrics (prometheus-client's format); the Prometheus text format
//! (0.0.4), which every scraper reads, is made from it by [`prometheus_text`], and a scraper
//! that asks for OpenMetrics gets it as it is.

use std::{sync::Arc, time::Duration};

pub(crate) mod server;

use prometheus_client::{
    encoding::text,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// The default buckets of Prometheus's client libraries (5 ms to 10 s), as go-grpc-middleware
/// uses them for `grpc_server_handling_seconds`.
pub(crate) const DEFAULT_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// SageMaker calls: the default buckets, and the SDK's operation timeout (20 s) above them.
const UPSTREAM_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
];

/// Store statements are usually well under 5 ms: finer buckets there.
const STORE_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// gRPC status codes as Go spells them (`grpc_code`), in code order.
pub(crate) const GRPC_CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// StopExecution's outcomes (the successful answers), present at zero from the start.
const STOP_OUTCOMES: [&str; 3] = ["STOP_REQUESTED", "ALREADY_STOPPING", "ALREADY_STOPPED"];

/// The SageMaker operations the service calls, present at zero from the start.
pub(crate) const UPSTREAM_OPERATIONS: [&str; 5] = [
    "StopPipelineExecution",
    "SendPipelineExecutionStepFailure",
    "ListPipelineExecutions",
    "DescribePipelineExecution",
    "ListPipelineExecutionSteps",
];

/// What became of a SageMaker call (`result`).
const UPSTREAM_RESULTS: [&str; 9] = [
    "ok",
    "not_found",
    "not_executing",
    "throttled",
    "conflict",
    "error",
    "access_denied",
    "invalid",
    "rejected",
];

/// The store's statements, as the `Store` trait names them.
pub(crate) const STORE_OPERATIONS: [&str; 19] = [
    "insert_new",
    "take_over",
    "complete",
    "release",
    "discard",
    "get",
    "list",
    "claim_batch",
    "batch",
    "due_forces",
    "claim_force",
    "record_release",
    "finish_force",
    "releases",
    "expired_leases",
    "delete_expired",
    "delete_old_audit",
    "audit",
    "ping",
];

/// The most (account, region) label pairs the per-account series take; the calls of any other
/// are counted under `account="other", region="other"`. An accounts file bounds the pairs
/// anyway (its accounts times their regions); without one, this does.
pub(crate) const LABELLED_SCOPES: usize = 100;

/// An (account, region) as labels: `account`, `region`, and (for the pace) `operation`.
type ScopeLabels = [(&'static str, String); 2];
type PaceLabels = [(&'static str, String); 3];

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn upstream_histogram() -> Histogram {
    Histogram::new(UPSTREAM_BUCKETS)
}

fn store_histogram() -> Histogram {
    Histogram::new(STORE_BUCKETS)
}

fn grpc_histogram() -> Histogram {
    Histogram::new(DEFAULT_BUCKETS)
}

/// The labels of one gRPC method: `grpc_type`, `grpc_service`, `grpc_method`.
type MethodLabels = [(&'static str, String); 3];

/// The handles of one gRPC method's series, made once so that a call only bumps atomics.
#[derive(Debug, Clone)]
pub(crate) struct MethodMetrics {
    pub(crate) started: Counter,
    pub(crate) received: Counter,
    pub(crate) sent: Counter,
    /// By code, in [`GRPC_CODES`] order.
    pub(crate) handled: Arc<[Counter; 17]>,
    pub(crate) handling: Histogram,
}

impl MethodMetrics {
    /// Counts a handled call with its code (a number outside gRPC's is `Unknown`).
    pub(crate) fn handled(&self, code: i32, elapsed: Duration) {
        let index = usize::try_from(code)
            .ok()
            .filter(|i| *i < GRPC_CODES.len())
            .unwrap_or(2);
        self.handled[index].inc();
        self.handling.observe(elapsed.as_secs_f64());
    }
}

/// Every metric of one running service.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    grpc_started: Family<MethodLabels, Counter>,
    grpc_handled: Family<[(&'static str, String); 4], Counter>,
    grpc_received: Family<MethodLabels, Counter>,
    grpc_sent: Family<MethodLabels, Counter>,
    grpc_handling: Family<MethodLabels, Histogram, fn() -> Histogram>,
    stop_requests: Family<Labels2, Counter>,
    duplicates: Family<Labels1, Counter>,
    takeovers: Family<Labels1, Counter>,
    leases_expired: Gauge,
    upstream_requests: Family<Labels2, Counter>,
    upstream_duration: Histograms<Labels1>,
    upstream_retries: Family<Labels1, Counter>,
    upstream_throttles: Family<Labels1, Counter>,
    upstream_account_throttles: Family<ScopeLabels, Counter>,
    upstream_pace: Family<PaceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// The (account, region)s with labels of their own, at most [`LABELLED_SCOPES`].
    labelled_scopes: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
    watch_streams: Gauge,
    watch_streams_limit: Gauge,
    pollers: Gauge,
    watch_roles: Family<Labels1, Gauge>,
    watch_fallbacks: Counter,
    watch_unanswered: Counter,
    events: Family<Labels1, Counter>,
    events_flowing: Gauge,
    snapshots: Counter,
    store_statements: Family<Labels2, Counter>,
    store_duration: Histograms<Labels1>,
    audit_queue: Gauge,
    audit_dropped: Family<Labels1, Counter>,
    auth_refusals: Family<Labels1, Counter>,
    authentications: Family<Labels2, Counter>,
    file_reloads: Family<Labels2, Counter>,
    jwks_fetches: Family<Labels1, Counter>,
    limit_refusals: Family<Labels1, Counter>,
    connections_closed: Family<Labels1, Counter>,
    accept_errors: Counter,
    reads: Family<Labels1, Counter>,
    serving: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let mut counter = |name: &str, help: &str| {
            let family = Family::<Labels1, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let duplicates = counter(
            "pipeline_control_stop_duplicates",
            "StopExecution calls that found the same request in progress, by what came of their wait: answered (the first attempt's answer), aborted (ABORTED after the wait), took_over (the first attempt's owner died; this call carried the stop out)",
        );
        let takeovers = counter(
            "pipeline_control_stop_takeovers",
            "Pending stop requests taken over after their owner's lease ran out, by who took them: completer (the background task) or caller (a retry or a waiting duplicate)",
        );
        let upstream_retries = counter(
            "pipeline_control_upstream_retries",
            "SageMaker call attempts after the first (the SDK's retries of throttling, 5xx and network errors, and the stop's own retries of conflicts)",
        );
        let upstream_throttles = counter(
            "pipeline_control_upstream_throttles",
            "SageMaker call attempts answered with throttling, retried or not",
        );
        let audit_dropped = counter(
            "pipeline_control_audit_events_dropped",
            "Audit events (replays, reused keys) lost: queue_full (the database could not keep up) or write_failed",
        );
        let auth_refusals = counter(
            "pipeline_control_auth_refusals",
            "Calls refused by authentication or the policy, by reason: no_credentials, bad_token, revoked_token, bad_certificate, credentials_invalid, credentials_expired, permission_denied",
        );
        let jwks_fetches = counter(
            "pipeline_control_jwks_fetches",
            "Fetches of a JWT issuer's key set, by result (ok, error); while they fail the last good set serves for up to 24 h",
        );
        let limit_refusals = counter(
            "pipeline_control_limit_refusals",
            "Calls refused with RESOURCE_EXHAUSTED, by limit: concurrency (the server's), caller_share (one caller's share of it), body_deadline (a request message that did not arrive in time), stop_rate, read_rate (calls reading SageMaker), watch_streams, message_size, message_bytes (the bytes of request messages being received by the whole server)",
        );
        let reads = counter(
            "pipeline_control_reads",
            "GetExecution answers by where they came from: upstream (this call read SageMaker), shared (it joined a read of the execution in flight), snapshot (a read of it younger than the poll interval: its poller's or another GetExecution's)",
        );
        let connections_closed = counter(
            "pipeline_control_connections_closed",
            "Connections the server closed for a deadline, by reason: handshake_timeout (no call in time after the connection was accepted), write_timeout (the peer read nothing of the server's writes in time)",
        );
        let accept_errors = Counter::default();
        registry.register(
            "pipeline_control_accept_errors",
            "Errors accepting a connection (out of file descriptors, of memory); each pauses the accept loop, 5 ms doubling to 1 s",
            accept_errors.clone(),
        );

        let mut counter2 = |name: &str, help: &str| {
            let family = Family::<Labels2, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let stop_requests = counter2(
            "pipeline_control_stop_requests",
            "StopExecution answers by outcome (STOP_REQUESTED, ALREADY_STOPPING, ALREADY_STOPPED, or the ErrorInfo reason of an error) and whether they were replayed from a record",
        );
        let upstream_requests = counter2(
            "pipeline_control_upstream_requests",
            "SageMaker calls by operation and result (ok, not_found, not_executing, throttled, conflict, error, access_denied, invalid, rejected), the SDK's retries included in one call",
        );
        let store_statements = counter2(
            "pipeline_control_store_statements",
            "Store operations (a statement or a short transaction) by operation and result (ok, error)",
        );
        let authentications = counter2(
            "pipeline_control_authentications",
            "Calls authenticated, by how the caller was proven (token, mtls, jwt, iam, mesh, anonymous) and result (ok, refused)",
        );
        let file_reloads = counter2(
            "pipeline_control_file_reloads",
            "Reloads of a settings file (tokens, policy, identity, accounts) on SIGHUP or a change on disk, by result: ok, or kept_previous (the new file was refused and the previous one stays in force)",
        );

        let upstream_duration: Histograms<Labels1> =
            Family::new_with_constructor(upstream_histogram);
        registry.register(
            "pipeline_control_upstream_request_duration_seconds",
            "How long SageMaker calls took, the SDK's retries included, by operation",
            upstream_duration.clone(),
        );
        let store_duration: Histograms<Labels1> = Family::new_with_constructor(store_histogram);
        registry.register(
            "pipeline_control_store_statement_duration_seconds",
            "How long store operations took, waiting for a connection included, by operation",
            store_duration.clone(),
        );

        let mut gauge = |name: &str, help: &str| {
            let gauge = Gauge::default();
            registry.register(name, help, gauge.clone());
            gauge
        };
        let build_info = Family::<Labels1, Gauge>::default();
        let leases_expired = gauge(
            "pipeline_control_stop_leases_expired",
            "Pending stop requests whose lease ran out, as the completer last found them (at most one batch): above zero for long, the completer cannot finish them",
        );
        let watch_streams = gauge(
            "pipeline_control_watch_streams",
            "Open WatchExecution streams",
        );
        let watch_streams_limit = gauge(
            "pipeline_control_watch_streams_limit",
            "The most WatchExecution streams this server accepts (--max-watch-streams)",
        );
        let pollers = gauge(
            "pipeline_control_pollers",
            "Executions this server is polling for its watchers (one poller each)",
        );
        let audit_queue = gauge(
            "pipeline_control_audit_queue_depth",
            "Audit events waiting to be written behind",
        );
        let serving = gauge(
            "pipeline_control_serving",
            "1 while health is SERVING, 0 while NOT_SERVING (the store does not answer, or the server is shutting down)",
        );
        registry.register(
            "pipeline_control_build_info",
            "The running version; always 1",
            build_info.clone(),
        );
        build_info
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION"))])
            .set(1);
        let upstream_account_throttles = Family::<ScopeLabels, Counter>::default();
        registry.register(
            "pipeline_control_upstream_account_throttles",
            "SageMaker call attempts answered with throttling, by account and region (at most 100 pairs; the others as account=\"other\")",
            upstream_account_throttles.clone(),
        );
        let upstream_pace =
            Family::<PaceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "pipeline_control_upstream_pace",
            "The calls per second this replica lets go to an operation of an (account, region) since SageMaker first throttled it there: halved on each throttling, growing back while calls are answered (no series: never throttled, not paced)",
            upstream_pace.clone(),
        );

        let watch_roles = Family::<Labels1, Gauge>::default();
        registry.register(
            "pipeline_control_watch_pollers",
            "Watched executions by this server's role for each: holder (it reads SageMaker for every replica), follower (fed from the database by the holder), alone (it reads SageMaker for its own watchers: SQLite, or the database out)",
            watch_roles.clone(),
        );
        for role in ["holder", "follower", "alone"] {
            let _ = watch_roles.get_or_create(&[("role", role)]);
        }
        let watch_fallbacks = Counter::default();
        registry.register(
            "pipeline_control_watch_fallbacks",
            "Times a watched execution's shared polling failed (the database did not answer) and this server read SageMaker on its own for it until the database came back",
            watch_fallbacks.clone(),
        );

        let watch_unanswered = Counter::default();
        registry.register(
            "pipeline_control_watch_unanswered_wakeups",
            "Events that woke a follower whose holder did not answer them within a couple of seconds (it died, or is stuck): the follower read SageMaker itself",
            watch_unanswered.clone(),
        );

        let events = Family::<Labels1, Counter>::default();
        registry.register(
            "pipeline_control_events",
            "SageMaker events read from the events queues, by result: watched (a poller was woken), unwatched (nobody watches the execution: dropped), malformed (deleted unread), deferred (the other replicas could not be told: left for redelivery), error (a receive that failed)",
            events.clone(),
        );
        for result in ["watched", "unwatched", "malformed", "deferred", "error"] {
            let _ = events.get_or_create(&[("result", result)]);
        }
        let events_flowing = Gauge::default();
        registry.register(
            "pipeline_control_events_flowing",
            "1 while every events queue answers (pollers read at --poll-fallback-interval), else 0 (at --poll-interval; also without queues)",
            events_flowing.clone(),
        );

        let snapshots = Counter::default();
        registry.register(
            "pipeline_control_snapshots_published",
            "Execution snapshots published to watchers (one per change a poller saw)",
            snapshots.clone(),
        );
        let spans_dropped = crate::telemetry::spans_dropped();
        registry.register(
            "pipeline_control_trace_spans_dropped",
            "Trace spans dropped because the export queue was full (the collector is slow or down)",
            spans_dropped,
        );

        let grpc_started = Family::<MethodLabels, Counter>::default();
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            grpc_started.clone(),
        );
        let grpc_handled = Family::<[(&'static str, String); 4], Counter>::default();
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            grpc_handled.clone(),
        );
        let grpc_received = Family::<MethodLabels, Counter>::default();
        registry.register(
            "grpc_server_msg_received",
            "Total number of RPC stream messages received on the server",
            grpc_received.clone(),
        );
        let grpc_sent = Family::<MethodLabels, Counter>::default();
        registry.register(
            "grpc_server_msg_sent",
            "Total number of gRPC stream messages sent by the server",
            grpc_sent.clone(),
        );
        let grpc_handling: Family<MethodLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(grpc_histogram);
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            grpc_handling.clone(),
        );

        let metrics = Self {
            registry,
            grpc_started,
            grpc_handled,
            grpc_received,
            grpc_sent,
            grpc_handling,
            stop_requests,
            duplicates,
            takeovers,
            leases_expired,
            upstream_requests,
            upstream_duration,
            upstream_retries,
            upstream_throttles,
            upstream_account_throttles,
            upstream_pace,
            labelled_scopes: Default::default(),
            watch_streams,
            watch_streams_limit,
            pollers,
            watch_roles,
            watch_fallbacks,
            watch_unanswered,
            events,
            events_flowing,
            snapshots,
            store_statements,
            store_duration,
            audit_queue,
            audit_dropped,
            auth_refusals,
            authentications,
            file_reloads,
            jwks_fetches,
            limit_refusals,
            connections_closed,
            accept_errors,
            reads,
            serving,
        };
        metrics.create_zero_series();
        metrics
    }

    /// The series alerts and dashboards rely on, present before anything happens.
    fn create_zero_series(&self) {
        for outcome in STOP_OUTCOMES {
            for replayed in ["true", "false"] {
                self.stop_requests
                    .get_or_create_owned(&[("outcome", outcome), ("replayed", replayed)]);
            }
        }
        for result in ["answered", "aborted", "took_over"] {
            self.duplicates.get_or_create_owned(&[("result", result)]);
        }
        for by in ["completer", "caller"] {
            self.takeovers.get_or_create_owned(&[("by", by)]);
        }
        for operation in UPSTREAM_OPERATIONS {
            for result in UPSTREAM_RESULTS {
                self.upstream_requests
                    .get_or_create_owned(&[("operation", operation), ("result", result)]);
            }
            self.upstream_duration
                .get_or_create_owned(&[("operation", operation)]);
            self.upstream_retries
                .get_or_create_owned(&[("operation", operation)]);
            self.upstream_throttles
                .get_or_create_owned(&[("operation", operation)]);
        }
        for operation in STORE_OPERATIONS {
            for result in ["ok", "error"] {
                self.store_statements
                    .get_or_create_owned(&[("operation", operation), ("result", result)]);
            }
            self.store_duration
                .get_or_create_owned(&[("operation", operation)]);
        }
        for reason in ["queue_full", "write_failed"] {
            self.audit_dropped
                .get_or_create_owned(&[("reason", reason)]);
        }
        for reason in AUTH_REFUSALS {
            self.auth_refusals
                .get_or_create_owned(&[("reason", reason)]);
        }
        for method in AUTH_METHODS {
            for result in ["ok", "refused"] {
                self.authentications
                    .get_or_create_owned(&[("method", method), ("result", result)]);
            }
        }
        for result in ["ok", "error"] {
            self.jwks_fetches.get_or_create_owned(&[("result", result)]);
        }
        for file in SETTINGS_FILES {
            for result in ["ok", "kept_previous"] {
                self.file_reloads
                    .get_or_create_owned(&[("file", file), ("result", result)]);
            }
        }
        for limit in LIMITS {
            self.limit_refusals.get_or_create_owned(&[("limit", limit)]);
        }
        for reason in CONNECTION_CLOSES {
            self.connections_closed
                .get_or_create_owned(&[("reason", reason)]);
        }
        for source in READ_SOURCES {
            self.reads.get_or_create_owned(&[("source", source)]);
        }
    }

    /// The handles of one gRPC method, its series created at zero for every code.
    pub(crate) fn grpc_method(
        &self,
        grpc_type: &'static str,
        service: &str,
        method: &str,
    ) -> MethodMetrics {
        let labels: MethodLabels = [
            ("grpc_type", grpc_type.to_string()),
            ("grpc_service", service.to_string()),
            ("grpc_method", method.to_string()),
        ];
        let handled = GRPC_CODES.map(|code| {
            let [t, s, m] = labels.clone();
            self.grpc_handled
                .get_or_create_owned(&[t, s, m, ("grpc_code", code.to_string())])
        });
        MethodMetrics {
            started: self.grpc_started.get_or_create_owned(&labels),
            received: self.grpc_received.get_or_create_owned(&labels),
            sent: self.grpc_sent.get_or_create_owned(&labels),
            handled: Arc::new(handled),
            handling: self.grpc_handling.get_or_create_owned(&labels),
        }
    }

    /// A StopExecution answer: its outcome (or the error's ErrorInfo reason) and whether it was
    /// replayed.
    pub(crate) fn stop_answered(&self, outcome: &'static str, replayed: bool) {
        let replayed = if replayed { "true" } else { "false" };
        self.stop_requests
            .get_or_create(&[("outcome", outcome), ("replayed", replayed)])
            .inc();
    }

    /// A duplicate's wait ended: `answered`, `aborted` or `took_over`.
    pub(crate) fn duplicate(&self, result: &'static str) {
        self.duplicates.get_or_create(&[("result", result)]).inc();
    }

    /// A pending request taken over: by the `completer` or a `caller`.
    pub(crate) fn takeover(&self, by: &'static str) {
        self.takeovers.get_or_create(&[("by", by)]).inc();
    }

    pub(crate) fn set_leases_expired(&self, count: usize) {
        self.leases_expired
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// One SageMaker call, retries included.
    pub(crate) fn upstream(&self, operation: &'static str, result: &'static str, took: Duration) {
        self.upstream_requests
            .get_or_create(&[("operation", operation), ("result", result)])
            .inc();
        self.upstream_duration
            .get_or_create(&[("operation", operation)])
            .observe(took.as_secs_f64());
    }

    /// An attempt after the first.
    pub(crate) fn upstream_retry(&self, operation: &'static str) {
        self.upstream_retries
            .get_or_create(&[("operation", operation)])
            .inc();
    }

    /// An attempt SageMaker answered with throttling.
    pub(crate) fn upstream_throttle(&self, operation: &'static str) {
        self.upstream_throttles
            .get_or_create(&[("operation", operation)])
            .inc();
    }

    /// The labels of (`account`, `region`): their own while there are few enough, else
    /// `other`'s.
    fn scope_labels(&self, account: &str, region: &str) -> Option<ScopeLabels> {
        let mut labelled = self
            .labelled_scopes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let key = (account.to_string(), region.to_string());
        if labelled.contains(&key) || labelled.len() < LABELLED_SCOPES {
            labelled.insert(key);
            Some([
                ("account", account.to_string()),
                ("region", region.to_string()),
            ])
        } else {
            None
        }
    }

    /// An attempt SageMaker answered with throttling, by account and region.
    pub(crate) fn upstream_account_throttle(&self, account: &str, region: &str) {
        let labels = self
            .scope_labels(account, region)
            .unwrap_or_else(|| [("account", "other".into()), ("region", "other".into())]);
        self.upstream_account_throttles.get_or_create(&labels).inc();
    }

    /// The series of the pace of `operation` in (`account`, `region`), unless that pair is
    /// beyond [`LABELLED_SCOPES`] (a rate of `other` would mean nothing).
    pub(crate) fn upstream_pace(
        &self,
        account: &str,
        region: &str,
        operation: &'static str,
    ) -> Option<Gauge<f64, std::sync::atomic::AtomicU64>> {
        let [account, region] = self.scope_labels(account, region)?;
        let labels = [account, region, ("operation", operation.to_string())];
        Some(self.upstream_pace.get_or_create(&labels).clone())
    }

    pub(crate) fn watch_streams(&self) -> &Gauge {
        &self.watch_streams
    }

    pub(crate) fn set_watch_streams_limit(&self, limit: usize) {
        self.watch_streams_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
    }

    pub(crate) fn pollers(&self) -> &Gauge {
        &self.pollers
    }

    /// The gauge of watched executions in `role` (`holder`, `follower`, `alone`).
    pub(crate) fn watch_role(&self, role: &'static str) -> Gauge {
        self.watch_roles.get_or_create(&[("role", role)]).clone()
    }

    /// `count` events (or failed receives) with `result`.
    pub(crate) fn events_received(&self, result: &'static str, count: u64) {
        self.events
            .get_or_create(&[("result", result)])
            .inc_by(count);
    }

    pub(crate) fn set_events_flowing(&self, flowing: bool) {
        self.events_flowing.set(i64::from(flowing));
    }

    pub(crate) fn watch_fallback(&self) {
        self.watch_fallbacks.inc();
    }

    pub(crate) fn watch_unanswered(&self) {
        self.watch_unanswered.inc();
    }

    pub(crate) fn snapshot_published(&self) {
        self.snapshots.inc();
    }

    /// One store operation.
    pub(crate) fn store(&self, operation: &'static str, ok: bool, took: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.store_statements
            .get_or_create(&[("operation", operation), ("result", result)])
            .inc();
        self.store_duration
            .get_or_create(&[("operation", operation)])
            .observe(took.as_secs_f64());
    }

    pub(crate) fn audit_queue(&self) -> &Gauge {
        &self.audit_queue
    }

    /// Audit events lost: `queue_full` or `write_failed`.
    pub(crate) fn audit_dropped(&self, reason: &'static str, events: u64) {
        self.audit_dropped
            .get_or_create(&[("reason", reason)])
            .inc_by(events);
    }

    /// A call refused by authentication or the policy (one of [`AUTH_REFUSALS`]).
    pub(crate) fn auth_refused(&self, reason: &'static str) {
        self.auth_refusals
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// A call's authentication: how it was proven or refused (one of [`AUTH_METHODS`]).
    pub(crate) fn authenticated(&self, method: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "refused" };
        self.authentications
            .get_or_create(&[("method", method), ("result", result)])
            .inc();
    }

    /// A reload of settings file `file` (one of [`SETTINGS_FILES`]): `ok`, or `kept_previous`.
    pub(crate) fn file_reloaded(&self, file: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "kept_previous" };
        self.file_reloads
            .get_or_create(&[("file", file), ("result", result)])
            .inc();
    }

    /// A fetch of a JWT issuer's key set: `ok` or `error`.
    pub(crate) fn jwks_fetched(&self, result: &'static str) {
        self.jwks_fetches.get_or_create(&[("result", result)]).inc();
    }

    /// A call refused by a limit (one of [`LIMITS`]).
    pub(crate) fn limit_refused(&self, limit: &'static str) {
        self.limit_refusals.get_or_create(&[("limit", limit)]).inc();
    }

    /// A connection closed for a deadline (one of [`CONNECTION_CLOSES`]).
    pub(crate) fn connection_closed(&self, reason: &'static str) {
        self.connections_closed
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// An error accepting a connection.
    pub(crate) fn accept_error(&self) {
        self.accept_errors.inc();
    }

    /// A GetExecution answer from `source` (one of [`READ_SOURCES`]).
    pub(crate) fn read_answered(&self, source: &'static str) {
        self.reads.get_or_create(&[("source", source)]).inc();
    }

    pub(crate) fn set_serving(&self, serving: bool) {
        self.serving.set(i64::from(serving));
    }

    /// The page in OpenMetrics, ending with `# EOF`.
    pub(crate) fn openmetrics(&self) -> String {
        let mut page = String::with_capacity(32 * 1024);
        // Writing to a String cannot fail; a metric that could not encode would be a bug here.
        if let Err(error) = text::encode(&mut page, &self.registry) {
            tracing::error!(%error, "metrics could not be encoded");
        }
        page
    }

    /// The page in the Prometheus text format (0.0.4).
    pub(crate) fn prometheus(&self) -> String {
        prometheus_text(&self.openmetrics())
    }
}

/// `pipeline_control_auth_refusals_total` reasons.
pub(crate) const AUTH_REFUSALS: [&str; 7] = [
    "no_credentials",
    "bad_token",
    "revoked_token",
    "bad_certificate",
    "credentials_invalid",
    "credentials_expired",
    "permission_denied",
];

/// `pipeline_control_file_reloads_total` files.
pub(crate) const SETTINGS_FILES: [&str; 4] = ["tokens", "policy", "identity", "accounts"];

/// `pipeline_control_authentications_total` methods: how a caller was proven.
pub(crate) const AUTH_METHODS: [&str; 6] = ["token", "mtls", "jwt", "iam", "mesh", "anonymous"];

/// `pipeline_control_limit_refusals_total` limits.
pub(crate) const LIMITS: [&str; 8] = [
    "concurrency",
    "caller_share",
    "body_deadline",
    "stop_rate",
    "read_rate",
    "watch_streams",
    "message_size",
    "message_bytes",
];

/// `pipeline_control_connections_closed_total` reasons.
pub(crate) const CONNECTION_CLOSES: [&str; 2] = ["handshake_timeout", "write_timeout"];

/// `pipeline_control_reads_total` sources: where a GetExecution answer came from.
pub(crate) const READ_SOURCES: [&str; 3] = ["upstream", "shared", "snapshot"];

/// OpenMetrics text to the Prometheus text format (0.0.4), as Prometheus's own client
/// libraries write it: a counter's family is named with its `_total` suffix, `# UNIT` and
/// `# EOF` go, `unknown` is `untyped`. Samples are the same in both formats.
pub(crate) fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let lines: Vec<&str> = openmetrics.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if *line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let is_counter = lines
                .get(i + 1)
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if is_counter {
                let help = &rest[name.len()..];
                out.push_str(&format!("# HELP {name}_total{help}\n"));
                continue;
            }
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let line = match kind {
                "counter" => format!("# TYPE {name}_total counter"),
                "unknown" => format!("# TYPE {name} untyped"),
                _ => (*line).to_string(),
            };
            out.push_str(&line);
            out.push('\n');
            continue;
        } else if line
            .split(['{', ' '])
            .next()
            .is_some_and(|name| name.ends_with("_created"))
        {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The content type of each format.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_format_names_counters_with_their_suffix_and_has_no_eof() {
        let metrics = Metrics::new();
        metrics.stop_answered("STOP_REQUESTED", false);
        metrics.upstream("StopPipelineExecution", "ok", Duration::from_millis(30));
        let open = metrics.openmetrics();
        assert!(open.ends_with("# EOF\n"), "{open}");
        assert!(open.contains("# TYPE pipeline_control_stop_requests counter\n"));
        let text = metrics.prometheus();
        assert!(!text.contains("# EOF"));
        assert!(text.contains("# TYPE pipeline_control_stop_requests_total counter\n"));
        assert!(text.contains("# HELP pipeline_control_stop_requests_total StopExecution"));
        assert!(text.contains(
            "pipeline_control_stop_requests_total{outcome=\"STOP_REQUESTED\",replayed=\"false\"} 1\n"
        ));
        assert!(text.contains(
            "pipeline_control_stop_requests_total{outcome=\"ALREADY_STOPPED\",replayed=\"true\"} 0\n"
        ));
        assert!(
            text.contains("# TYPE pipeline_control_upstream_request_duration_seconds histogram\n")
        );
        assert!(
            text.contains(
                "pipeline_control_upstream_request_duration_seconds_bucket{le=\"0.05\",operation=\"StopPipelineExecution\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("pipeline_control_build_info{version=\""));
        // Every TYPE line of the text format names the samples that follow it.
        for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            assert!(
                text.lines()
                    .any(|l| !l.starts_with('#') && l.starts_with(name)),
                "no sample for {line}"
            );
        }
    }

    #[test]
    fn every_method_and_code_exists_at_zero() {
        let metrics = Metrics::new();
        let method = metrics.grpc_method(
            "unary",
            "pipelinecontrol.v1.PipelineControl",
            "GetExecution",
        );
        method.handled(5, Duration::from_millis(3));
        method.handled(99, Duration::from_millis(3));
        let text = metrics.prometheus();
        let handled: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .collect();
        assert_eq!(handled.len(), 17, "{text}");
        assert!(
            handled
                .iter()
                .any(|l| l.contains("grpc_code=\"NotFound\"") && l.ends_with(" 1"))
        );
        assert!(
            handled
                .iter()
                .any(|l| l.contains("grpc_code=\"Unknown\"") && l.ends_with(" 1"))
        );
        assert!(
            handled
                .iter()
                .any(|l| l.contains("grpc_code=\"OK\"") && l.ends_with(" 0"))
        );
        assert!(text.contains("grpc_server_handling_seconds_bucket{le=\"0.005\",grpc_type=\"unary\",grpc_service=\"pipelinecontrol.v1.PipelineControl\",grpc_method=\"GetExecution\"} 2\n"), "{text}");
    }
}
