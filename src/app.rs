//! Builds the service and runs it until a shutdown signal.
//!
//! [`Application::build`] constructs everything and does all that can fail before serving:
//! load the credentials, connect and migrate the store, build the SageMaker client (once, for
//! stops, reads and pollers alike), the stop and watch machinery, the server with its layers,
//! and bind the port (port 0 picks a free one, which tests rely on). [`Application::run`] only
//! serves, then drains. The tasks of a running service hang off one cancellation tree:
//!
//! ```text
//! cut_off              cancelled when the grace period runs out: open connections fail
//! └── draining         cancelled when shutdown starts: no new connections, streams end
//!     └── background   health checker, completer, retention, reload on SIGHUP
//! ```
//!
//! Shutdown, in order:
//!
//! 1. `draining` is cancelled: the server stops accepting connections and tells clients to go
//!    away (HTTP/2 GOAWAY) while calls in flight run to completion; watch streams end with
//!    UNAVAILABLE so they do not hold the drain; the background tasks stop, and once they
//!    have, health turns NOT_SERVING (nothing can set SERVING again);
//! 2. after the grace period whatever is left is cut off (`cut_off`);
//! 3. stops still running on their own tasks get what is left of the grace; the emulator and
//!    the store are closed last.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use sagemaker_emulator::EmulatorServer;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::transport::{
    Certificate, Identity, Server, ServerTlsConfig,
    server::{Router, TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    auth::{Auth, AuthSettings},
    background::{self, Background, HealthChecker, Intervals, Retention, SettingsFiles},
    batch::Records,
    config::{SecurityArgs, ServeArgs},
    console::{Console, ConsoleServer},
    demo,
    estate::{Estate, EstateSettings},
    events::{self, Push, Queue},
    grpc::{
        Backoff, Bounded, Deadlines, Guard, GuardSettings, Observe, Open, PipelineControlService,
    },
    metrics::{Metrics, server::MetricsServer},
    pb,
    rate::{Rate, Rates},
    reads::Reads,
    sagemaker::CallPolicy,
    shutdown::{self, CutOffIo},
    stop::{StopSettings, Stopper},
    store::{self, Store},
    watch::{WatchSettings, Watcher},
};

/// A service ready to run: everything constructed, store migrated, port bound.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The gRPC server with every service and layer.
    router: Router,
    health: HealthReporter,
    background: Background,
    stopper: Arc<Stopper>,
    store: Arc<dyn Store>,
    /// With `--emulator`: the in-process emulator (bound, not yet serving), and the account and
    /// region of the demo executions `run` seeds in it.
    emulator: Option<(EmulatorServer, DemoPlace)>,
    estate: Arc<Estate>,
    watcher: Arc<Watcher>,
    /// The events queues, and whether events flow from them.
    queues: Vec<Queue>,
    push: Arc<Push>,
    /// The tasks of a running service that are not background rounds: pollers, the fleet's
    /// listener, the events consumers. Shutdown waits for them before the store closes.
    tasks: TaskTracker,
    tls: bool,
    /// `GET /metrics`, unless `--metrics-listen off`.
    metrics_server: Option<MetricsServer>,
    /// With `--health-listen`: the plaintext health port and its server.
    health_port: Option<(TcpListener, Router)>,
    /// With `--console-listen` (or `--emulator`): the web console, bound, and what it serves.
    console: Option<(ConsoleServer, Console)>,
    metrics: Arc<Metrics>,
    /// The root of the cancellation tree (see the module doc), and its `draining` child.
    cut_off: CancellationToken,
    draining: CancellationToken,
    shutdown_grace: Duration,
    /// What bounds each accepted connection.
    deadlines: Deadlines,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("local_addr", &self.local_addr)
            .field("backend", &self.store.backend())
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Constructs the whole service and binds the listen address. Fails (without serving
    /// anything) when any of that fails.
    pub async fn build(args: ServeArgs) -> anyhow::Result<Self> {
        // Credentials first: a bad file or a missing requirement stops the start at once.
        let metrics = Arc::new(Metrics::new());
        let security = &args.security;
        let auth = Arc::new(
            Auth::load(
                AuthSettings {
                    client_certificates: security.tls_client_ca.is_some(),
                    tokens_file: security.auth_tokens_file.clone(),
                    policy_file: security.policy_file.clone(),
                    identity_file: security.identity_file.clone(),
                    require_credentials: security.require_auth,
                    // The STS the service itself uses is the one IAM callers may name.
                    sts_endpoint: args.sagemaker.sts_endpoint.clone().or_else(|| {
                        std::env::var("AWS_ENDPOINT_URL_STS")
                            .ok()
                            .filter(|url| !url.is_empty())
                    }),
                },
                metrics.clone(),
            )
            .context("cannot load the authentication settings")?,
        );
        if security.require_auth && !auth.authenticates() {
            anyhow::bail!(
                "--require-auth is set but no authentication is configured: give --tls-client-ca (with --tls-cert and --tls-key), --auth-tokens-file, or an --identity-file with [[jwt]] issuers, [iam] or a [mesh]"
            );
        }
        // With tokens or the platform's identities as well, a client certificate is optional
        // at the handshake (but verified when presented): a caller may identify with either.
        let bearer = security.auth_tokens_file.is_some() || security.identity_file.is_some();
        let tls = tls_config(security, bearer)?;
        if tls.is_none() && bearer {
            tracing::warn!(
                "bearer tokens are accepted over plaintext: configure --tls-cert and --tls-key unless a proxy in front terminates TLS"
            );
        }
        auth.log_summary();
        // Bound early: a port that cannot be had stops the start before anything else runs.
        let metrics_server = match args.metrics_listen.0 {
            Some(address) => Some(MetricsServer::bind(address).await?),
            None => None,
        };
        // The demo has the console too, on a free loopback port.
        let console_address = args.console_listen.or_else(|| {
            args.emulator
                .then_some(SocketAddr::from(([127, 0, 0, 1], 0)))
        });
        let console_server = match console_address {
            Some(address) => Some(ConsoleServer::bind(address).await?),
            None => None,
        };
        let limits = &args.limits;
        let guard = Arc::new(
            Guard::new(
                auth.clone(),
                GuardSettings {
                    max_message_size: limits.max_message_size as usize,
                    request_timeout: limits.request_timeout,
                    max_concurrent_requests: limits.max_concurrent_requests as usize,
                    caller_share: limits.max_concurrent_per_caller as usize,
                    body_deadline: limits.body_deadline,
                    stop_rate: (limits.stop_rate_limit > 0.0)
                        .then_some((limits.stop_rate_limit, limits.stop_rate_burst)),
                },
                metrics.clone(),
            )
            .context("invalid limits")?,
        );
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;

        let store = store::connect_measured(&args.database.store(), metrics.clone()).await?;
        store.migrate().await?;
        tracing::info!(backend = ?store.backend(), "database ready");

        // One client, with the configured attempts, for stops, reads and pollers alike.
        let policy = CallPolicy {
            max_attempts: args.upstream_attempts,
            pacing: args.upstream_pacing,
            ..CallPolicy::default()
        };
        let mut estate = EstateSettings {
            endpoint: args.sagemaker.sagemaker_endpoint.clone(),
            sts_endpoint: args.sagemaker.sts_endpoint.clone(),
            sqs_endpoint: args.sagemaker.sqs_endpoint.clone(),
            accounts_file: args.sagemaker.accounts_file.clone(),
            static_credentials: args.sagemaker.static_credentials.clone(),
            region: args.sagemaker.aws_region.clone(),
            max_connections_per_endpoint: args.limits.upstream_max_connections as usize,
        };
        let mut events_queue_urls = args.events_queue_urls.clone();
        let emulator = if args.emulator {
            let region = args.sagemaker.aws_region.as_deref().unwrap_or("us-east-1");
            let mut options = args.emulator_settings.options(region);
            // The demo has push too: the emulator's events go to a queue the service reads,
            // unless queues were named.
            let demo_queue = events_queue_urls.is_empty().then_some(demo::EVENTS_QUEUE);
            options.events_queues.extend(demo_queue.map(str::to_string));
            let emulator = EmulatorServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), &options)
                .await
                .context("cannot start the SageMaker emulator")?;
            let endpoint = emulator.endpoint_url();
            if let Some(queue) = demo_queue {
                events_queue_urls.push(format!(
                    "{endpoint}/{}/{queue}",
                    args.emulator_settings.account_id
                ));
            }
            // The emulator serves STS too, for roles an accounts file names.
            estate.endpoint = Some(endpoint.clone());
            estate.sts_endpoint = Some(endpoint.clone());
            estate.sqs_endpoint = Some(endpoint);
            estate.static_credentials = Some(("EMULATOR".into(), "emulator".into()));
            estate.region = Some(region.to_string());
            let place = DemoPlace {
                account: args.emulator_settings.account_id.clone(),
                region: region.to_string(),
            };
            Some((emulator, place))
        } else {
            None
        };
        let estate = Arc::new(
            Estate::load(estate, policy, metrics.clone())
                .await
                .context("cannot load the accounts file")?,
        );
        tracing::info!(
            endpoint = estate.endpoint().unwrap_or("(AWS default)"),
            "SageMaker clients ready: each call goes to its execution's region and account"
        );

        let cut_off = CancellationToken::new();
        let draining = cut_off.child_token();
        let stopper = Arc::new(Stopper::new(
            store.clone(),
            estate.clone(),
            StopSettings {
                lease: args.lease,
                retention: args.idempotency_retention,
                duplicate_wait: args.duplicate_wait,
            },
            worker_id(),
            metrics.clone(),
        ));
        let queues = events::push::queues(&events_queue_urls, &estate.default_region())?;
        let push = Push::new(&queues);
        let tasks = TaskTracker::new();
        let watcher = Watcher::new(
            estate.clone(),
            WatchSettings {
                poll_interval: args.poll_interval,
                max_backoff: Duration::from_secs(30),
                heartbeat: args.heartbeat_interval,
                linger: args.poller_linger,
                max_streams: args.max_watch_streams,
                lease: args.watch_lease.max(Duration::from_millis(300)),
                fallback_interval: args.poll_fallback_interval,
            },
            draining.clone(),
            metrics.clone(),
            store.fleet(),
            push.clone(),
            tasks.clone(),
        );
        let records = Records {
            store: store.clone(),
            retention: args.idempotency_retention,
        };
        let console = console_server.map(|server| {
            let console = Console {
                stopper: stopper.clone(),
                records: records.clone(),
                estate: estate.clone(),
                watcher: watcher.clone(),
                auth: auth.clone(),
                metrics: metrics.clone(),
                rate: guard.stop_rate(),
                reads: Arc::new(Reads::new(
                    estate.clone(),
                    watcher.poll_interval(),
                    metrics.clone(),
                )),
            };
            (server, console)
        });
        let service = PipelineControlService::new(
            stopper.clone(),
            records,
            estate.clone(),
            watcher.clone(),
            auth.clone(),
            metrics.clone(),
            Rates {
                stop: guard.stop_rate(),
                read: Arc::new(
                    Rate::per_principal(
                        "read_rate",
                        "calls reading SageMaker from this caller",
                        (limits.read_rate_limit > 0.0)
                            .then_some((limits.read_rate_limit, limits.read_rate_burst)),
                        metrics.clone(),
                    )
                    .context("invalid limits")?,
                ),
            },
        );

        // Health answers from the first call on: SERVING only if the (migrated) store answers
        // now; the background checker keeps it up to date from then on.
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut checker = HealthChecker::new(store.clone(), health.clone(), metrics.clone());
        checker.check().await;

        // grpcurl 1.8.6 speaks only v1alpha; newer clients speak v1. Each lists every service,
        // the other reflection version included.
        let reflection_v1 = reflection()
            .build_v1()
            .context("cannot build reflection (v1)")?
            .max_decoding_message_size(OPEN_MESSAGE);
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("cannot build reflection (v1alpha)")?
            .max_decoding_message_size(OPEN_MESSAGE);
        // Each connection's streams are capped; the rest of its bounds are in `Bounded`.
        let mut server = Server::builder()
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(
                Some(limits.http2_keepalive_interval).filter(|interval| !interval.is_zero()),
            )
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout));
        let tls_on = tls.is_some();
        if let Some(tls) = tls {
            server = server.tls_config(tls).context("cannot configure TLS")?;
        }
        // Metrics (and spans) of every service, in front of the guard so its refusals count.
        let observe = Observe::new(
            &metrics,
            &[
                pb::FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
            args.traces_endpoint().is_some(),
        )?;
        // Health and reflection are open to every caller, and bounded like the rest.
        let timeout = limits.request_timeout;
        let health_open = health_service
            .clone()
            .max_decoding_message_size(OPEN_MESSAGE);
        let router = server
            .add_service(observe.wrap(Open::new(health_open.clone(), timeout)))
            .add_service(observe.wrap(Open::new(reflection_v1, timeout)))
            .add_service(observe.wrap(Open::new(reflection_v1alpha, timeout)))
            .add_service(
                observe.wrap(
                    guard.wrap(
                        pb::pipeline_control_server::PipelineControlServer::new(service)
                            // The guard refuses larger messages first, with a clearer error.
                            .max_decoding_message_size(limits.max_message_size as usize),
                    ),
                ),
            );

        // Probes that carry no client certificate get health alone, in plaintext, on a port of
        // its own; its messages are tiny.
        let health_port = match args.health_listen {
            Some(address) => {
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("cannot listen for health checks on {address}"))?;
                let router = Server::builder()
                    .max_concurrent_streams(limits.max_streams_per_connection)
                    .add_service(observe.wrap(Open::new(health_open, timeout)));
                Some((listener, router))
            }
            None => None,
        };
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let local_addr = listener
            .local_addr()
            .context("cannot read the bound address")?;
        Ok(Self {
            listener,
            local_addr,
            router,
            health,
            background: Background {
                health: checker,
                stopper: stopper.clone(),
                store: store.clone(),
                retention: Retention {
                    audit: args.audit_retention,
                },
                auth,
                estate: estate.clone(),
                hangup,
                files: SettingsFiles {
                    auth: [
                        &args.security.auth_tokens_file,
                        &args.security.policy_file,
                        &args.security.identity_file,
                    ]
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect(),
                    accounts: args.sagemaker.accounts_file.clone(),
                },
                intervals: Intervals {
                    health_check: args.health_check_interval,
                    completer: args.completer_interval,
                    retention: args.retention_interval,
                },
            },
            stopper,
            store,
            emulator,
            estate,
            watcher,
            queues,
            push,
            tasks,
            tls: tls_on,
            metrics_server,
            health_port,
            console,
            metrics,
            cut_off,
            draining,
            shutdown_grace: args.shutdown_grace,
            deadlines: Deadlines {
                handshake: limits.handshake_timeout,
                write: limits.write_timeout,
            },
        })
    }

    /// The address the server is bound to (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `GET /metrics` is served (`None` with `--metrics-listen off`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_server.as_ref().map(MetricsServer::local_addr)
    }

    /// Where the plaintext health port listens (`None` without `--health-listen`).
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_port
            .as_ref()
            .and_then(|(listener, _)| listener.local_addr().ok())
    }

    /// Where the web console listens (`None` without `--console-listen` or `--emulator`).
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(|(server, _)| server.local_addr())
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run(self) -> anyhow::Result<()> {
        let signal = shutdown::signal()?;
        self.run_until(signal).await
    }

    /// Starts the tasks of a running service, serves until `shutdown` completes, then shuts
    /// down gracefully (see the module doc).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            router,
            health,
            background,
            stopper,
            store,
            emulator,
            estate,
            watcher,
            queues,
            push,
            tasks,
            tls,
            metrics_server,
            health_port,
            console,
            metrics,
            cut_off,
            draining,
            shutdown_grace,
            deadlines,
        } = self;
        let metrics_address = metrics_server.as_ref().map(MetricsServer::local_addr);
        // Scrapes go on while the server drains: the metrics stop last.
        let metrics_stop = CancellationToken::new();
        let metrics_task = metrics_server.map(|server| {
            tracing::info!(address = %server.local_addr(), "serving metrics on /metrics");
            server.spawn(metrics.clone(), metrics_stop.clone())
        });
        // Health answers until the end, NOT_SERVING while draining: it stops with the metrics.
        let health_task = health_port.map(|(listener, router)| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "serving health checks (plaintext)");
            }
            // A watch on it never ends by itself: its connections are cut when it stops.
            let (stop, metrics) = (metrics_stop.clone(), metrics.clone());
            let incoming = Backoff::new(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                &metrics,
            )
            .map(move |accepted| {
                accepted.map(|io| Bounded::new(CutOffIo::new(io, &stop), deadlines, &metrics))
            });
            let stop = metrics_stop.clone();
            tokio::spawn(async move {
                let served = router
                    .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
                    .await;
                if let Err(error) = served {
                    tracing::error!(%error, "the health port failed");
                }
            })
        });
        let earlier_records = emulator.is_some() && holds_records(store.as_ref()).await;
        if earlier_records {
            tracing::warn!("{EARLIER_RECORDS}");
        }
        let (emulator, demo) = match emulator {
            Some((emulator, place)) => {
                let emulator = emulator.spawn();
                let sagemaker = estate.client_in(&place.account, &place.region).await;
                let demo = demo::seed(&sagemaker, &emulator, &place.region)
                    .await
                    .context("cannot seed the demo executions")?;
                tracing::info!(
                    emulator = %demo.emulator_url,
                    callback_execution = %demo.callback_execution,
                    lambda_execution = %demo.lambda_execution,
                    "SageMaker emulator running with demo executions"
                );
                (Some(emulator), Some(demo))
            }
            None => (None, None),
        };
        // The console stops taking requests when the server drains; its live pages end then with
        // the watcher's streams.
        let console_address = console.as_ref().map(|(server, _)| server.local_addr());
        let console_task = console.map(|(server, console)| {
            tracing::info!(address = %server.local_addr(), "serving the console");
            server.spawn(console, draining.clone())
        });
        stopper.start();
        watcher.start();
        events::start(
            queues, &push, &estate, &watcher, &metrics, &draining, &tasks,
        );
        let mut background = Some(background.start(draining.child_token()));
        let incoming = {
            let (cut_off, metrics) = (cut_off.clone(), metrics.clone());
            Backoff::new(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                &metrics,
            )
            .map(move |accepted| {
                accepted.map(|io| Bounded::new(CutOffIo::new(io, &cut_off), deadlines, &metrics))
            })
        };
        let server =
            router.serve_with_incoming_shutdown(incoming, draining.clone().cancelled_owned());
        tokio::pin!(server);
        tracing::info!(address = %local_addr, "serving gRPC");
        if let Some(demo) = &demo {
            // For the person who ran the demo; standard output stays for logs.
            eprintln!(
                "{}",
                demo.banner(
                    &local_addr.to_string(),
                    tls,
                    metrics_address,
                    console_address
                )
            );
            if earlier_records {
                eprintln!("Note: {EARLIER_RECORDS}\n");
            }
        }

        let mut shutdown_started = None;
        let served = tokio::select! {
            result = &mut server => Some(result),
            () = shutdown => None,
        };
        let result = match served {
            // The server ended on its own: only an error can do that.
            Some(result) => result.context("the gRPC server failed"),
            None => {
                shutdown_started = Some(tokio::time::Instant::now());
                tracing::info!(grace = ?shutdown_grace, "shutting down: draining calls in flight");
                draining.cancel();
                // Once the health checker has ended, nothing can set SERVING again.
                if let Some(background) = background.take() {
                    background.stop().await;
                }
                background::set_health(&health, &metrics, ServingStatus::NotServing).await;
                match tokio::time::timeout(shutdown_grace, &mut server).await {
                    Ok(result) => result.context("the gRPC server failed while draining"),
                    Err(_) => {
                        tracing::warn!(grace = ?shutdown_grace, "calls still in flight after the grace period were cut off");
                        cut_off.cancel();
                        Ok(())
                    }
                }
            }
        };
        draining.cancel();
        if let Some(background) = background.take() {
            background.stop().await;
        }
        // Stops whose callers were cut off may still be running, and pollers may be giving
        // their leases up: give them what is left of the grace period (at least a second).
        let left = || {
            shutdown_started
                .map_or(shutdown_grace, |started| {
                    shutdown_grace.saturating_sub(started.elapsed())
                })
                .max(Duration::from_secs(1))
        };
        tasks.close();
        if tokio::time::timeout(left(), tasks.wait()).await.is_err() {
            tracing::warn!(
                "pollers or events consumers still running at the end of the grace period"
            );
        }
        stopper.shutdown(left()).await;
        if let Some(emulator) = emulator
            && let Err(error) = emulator.stop().await
        {
            tracing::warn!(%error, "the SageMaker emulator did not stop cleanly");
        }
        store.close().await;
        metrics_stop.cancel();
        for task in [metrics_task, health_task, console_task]
            .into_iter()
            .flatten()
        {
            let _ = task.await;
        }
        tracing::info!("stopped");
        result
    }
}

/// Where `serve --emulator` seeds its demo executions.
#[derive(Debug)]
struct DemoPlace {
    account: String,
    region: String,
}

/// The TLS settings, read and checked now so that a bad file stops the start. `None` without
/// `--tls-cert`.
fn tls_config(
    security: &SecurityArgs,
    client_certificate_optional: bool,
) -> anyhow::Result<Option<ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&security.tls_cert, &security.tls_key) else {
        anyhow::ensure!(
            security.tls_client_ca.is_none(),
            "--tls-client-ca needs TLS: give --tls-cert and --tls-key too"
        );
        return Ok(None);
    };
    let read = |path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    };
    // A handshake that does not finish in time is dropped: before authentication, nothing else
    // bounds what a connection that never completes one holds.
    let mut config = ServerTlsConfig::new()
        .identity(Identity::from_pem(read(cert)?, read(key)?))
        .timeout(TLS_HANDSHAKE_TIMEOUT);
    if let Some(ca) = &security.tls_client_ca {
        config = config
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(client_certificate_optional);
    }
    Server::builder()
        .tls_config(config.clone())
        .map_err(|e| match std::error::Error::source(&e) {
            Some(cause) => anyhow::anyhow!("{cause:?}"),
            None => anyhow::anyhow!("{e}"),
        })
        .with_context(|| {
            format!(
                "the TLS certificate ({}), key ({}) or client CA cannot be used",
                cert.display(),
                key.display()
            )
        })?;
    Ok(Some(config))
}

/// Names this process in leases and the audit trail: host, process id and a random suffix
/// (two processes on one host never share an id).
fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

/// The largest health or reflection request read (a service or symbol name).
const OPEN_MESSAGE: usize = 4096;

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server reflection over every service this server offers, and over the google.rpc error
/// details its errors carry (so grpcurl prints an ErrorInfo rather than its bytes; they are in
/// the contract's descriptor set).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

/// What `serve --emulator` says when its database holds stop requests of an earlier run.
const EARLIER_RECORDS: &str = "the database holds stop requests of an earlier run, but the in-process emulator starts with new executions: those records name executions it does not have, and a stop replayed from one ends NOT_FOUND. For a fresh demo, give --database-url a new file (or start in an empty folder).";

/// Whether the store holds any stop request (an emulator restarted over its old database).
async fn holds_records(store: &dyn Store) -> bool {
    let query = store::ListQuery {
        principal: None,
        pipeline_arn: None,
        execution_arn: None,
        after: None,
        limit: 1,
    };
    match store.list(&query).await {
        Ok(records) => !records.is_empty(),
        Err(error) => {
            tracing::warn!(%error, "cannot tell whether the database holds earlier records");
            false
        }
    }
}
