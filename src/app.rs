//! Builds the service and runs it until a shutdown signal.
//!
//! [`Application::build`] does everything that can fail before serving: connect the store,
//! migrate it, bind the port (port 0 picks a free one, which tests rely on). [`Application::run`]
//! then serves until SIGTERM or Ctrl-C, and shuts down in this order:
//!
//! 1. health turns NOT_SERVING, so load balancers stop sending new calls;
//! 2. the server stops accepting connections and tells clients to go away (HTTP/2 GOAWAY),
//!    while calls in flight run to completion;
//! 3. streams are told to end (the shutdown [`watch`] channel), so they do not hold the drain;
//! 4. after the grace period whatever is left is cut off; the store is closed last.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use sagemaker_emulator::{EmulatorServer, RunningEmulator};
use tokio::{net::TcpListener, sync::watch};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    auth::{Auth, AuthSettings},
    config::{SecurityArgs, ServeArgs},
    demo::{self, Demo},
    grpc::{Guard, GuardSettings, PipelineControlService, pb},
    sagemaker::{CallPolicy, SageMaker},
    shutdown::{self, CutOffIo},
    stop::{StopSettings, Stopper},
    store::{self, Store},
    watch::{WatchSettings, Watcher},
};

/// The gRPC service name health reports on, besides the whole server ("").
const SERVICE_NAME: &str = "pipelinecontrol.v1.PipelineControl";

/// A service ready to run: store migrated, port bound.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    store: Arc<dyn Store>,
    sagemaker: SageMaker,
    /// With `--emulator`: the in-process emulator, and the demo executions it holds.
    emulator: Option<RunningEmulator>,
    demo: Option<Demo>,
    auth: Arc<Auth>,
    guard: Arc<Guard>,
    tls: Option<ServerTlsConfig>,
    /// SIGHUP, listened for from the start (its default action would end the process).
    hangup: tokio::signal::unix::Signal,
    args: ServeArgs,
}

impl Application {
    /// Connects and migrates the store, builds the SageMaker client and binds the listen
    /// address. Fails (without serving anything) when any of that fails.
    pub async fn build(args: ServeArgs) -> anyhow::Result<Self> {
        // Credentials first: a bad file or a missing requirement stops the start at once.
        let auth = Arc::new(
            Auth::load(AuthSettings {
                client_certificates: args.security.tls_client_ca.is_some(),
                tokens_file: args.security.auth_tokens_file.clone(),
                policy_file: args.security.policy_file.clone(),
            })
            .context("cannot load the authentication settings")?,
        );
        if args.security.require_auth && !auth.authenticates() {
            anyhow::bail!(
                "--require-auth is set but no authentication is configured: give --tls-client-ca (with --tls-cert and --tls-key) or --auth-tokens-file"
            );
        }
        // With tokens as well, a client certificate is optional at the handshake (but verified
        // when presented): a caller may identify with either.
        let tls = tls_config(&args.security, args.security.auth_tokens_file.is_some())?;
        if tls.is_none() && args.security.auth_tokens_file.is_some() {
            tracing::warn!(
                "bearer tokens are accepted over plaintext: configure --tls-cert and --tls-key unless a proxy in front terminates TLS"
            );
        }
        auth.log_summary();
        let limits = &args.limits;
        let guard = Arc::new(
            Guard::new(
                auth.clone(),
                GuardSettings {
                    max_message_size: limits.max_message_size as usize,
                    request_timeout: limits.request_timeout,
                    max_concurrent_requests: limits.max_concurrent_requests as usize,
                    stop_rate: (limits.stop_rate_limit > 0.0)
                        .then_some((limits.stop_rate_limit, limits.stop_rate_burst)),
                },
            )
            .context("invalid limits")?,
        );
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;

        let store = store::connect(&args.database).await?;
        store.migrate().await?;
        tracing::info!(backend = ?store.backend(), "database ready");

        let (emulator, sagemaker) = if args.emulator {
            let region = args.sagemaker.aws_region.as_deref().unwrap_or("us-east-1");
            let emulator = EmulatorServer::bind(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                &args.emulator_settings.options(region),
            )
            .await
            .context("cannot start the SageMaker emulator")?
            .spawn();
            let sagemaker = SageMaker::for_emulator(&emulator.endpoint_url, region);
            (Some(emulator), sagemaker)
        } else {
            (None, SageMaker::from_args(&args.sagemaker).await)
        };
        tracing::info!(
            region = sagemaker.region().unwrap_or("(none)"),
            endpoint = sagemaker.endpoint().unwrap_or("(AWS default)"),
            "SageMaker client ready"
        );
        if sagemaker.region().is_none() {
            tracing::warn!("no AWS region found; set --aws-region or AWS_REGION");
        }

        let demo = match &emulator {
            Some(emulator) => {
                let region = sagemaker.region().unwrap_or("us-east-1").to_string();
                let demo = demo::seed(&sagemaker, emulator, &region)
                    .await
                    .context("cannot seed the demo executions")?;
                tracing::info!(
                    emulator = %demo.emulator_url,
                    callback_execution = %demo.callback_execution,
                    lambda_execution = %demo.lambda_execution,
                    "SageMaker emulator running with demo executions"
                );
                Some(demo)
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
            store,
            sagemaker,
            emulator,
            demo,
            auth,
            guard,
            tls,
            hangup,
            args,
        })
    }

    /// The address the server is bound to (the real port when `--listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run(self) -> anyhow::Result<()> {
        let signal = shutdown::signal()?;
        self.run_until(signal).await
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see the module doc).
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            store,
            sagemaker,
            emulator,
            demo,
            auth,
            guard,
            tls,
            hangup,
            args,
        } = self;

        // One client, with the configured attempts, for stops, reads and pollers alike.
        let sagemaker = sagemaker.with_policy(CallPolicy {
            max_attempts: args.upstream_attempts,
            ..CallPolicy::default()
        });
        let stopper = Arc::new(Stopper::new(
            store.clone(),
            sagemaker.clone(),
            StopSettings {
                lease: args.lease,
                retention: args.idempotency_retention,
                duplicate_wait: args.duplicate_wait,
            },
            worker_id(),
        ));

        // Health answers from the first call on: SERVING only if the (migrated) store answers now.
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut checker = HealthChecker::new(store.clone(), health.clone());
        checker.check().await;
        let (stopping_tx, stopping_rx) = watch::channel(false);
        let mut health_task =
            tokio::spawn(checker.run(args.health_check_interval, stopping_rx.clone()));

        // grpcurl 1.8.6 speaks only v1alpha; newer clients speak v1. Each lists every service,
        // the other reflection version included.
        let reflection_v1 = reflection()
            .build_v1()
            .context("cannot build reflection (v1)")?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .context("cannot build reflection (v1alpha)")?;

        let watcher = Watcher::new(
            sagemaker.clone(),
            WatchSettings {
                poll_interval: args.poll_interval,
                max_backoff: Duration::from_secs(30),
                heartbeat: args.heartbeat_interval,
                linger: args.poller_linger,
                max_streams: args.max_watch_streams,
            },
            stopping_rx.clone(),
        );
        let service =
            PipelineControlService::new(stopper.clone(), sagemaker.clone(), watcher, auth.clone());
        let limits = &args.limits;
        let reloader = tokio::spawn(reload_on_hangup(auth, hangup, stopping_rx.clone()));
        let maintenance = tokio::spawn(maintain(
            stopper.clone(),
            args.completer_interval,
            args.retention_interval,
            stopping_rx.clone(),
        ));
        let cut_off = CancellationToken::new();
        let incoming = {
            let cut_off = cut_off.clone();
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .map(move |accepted| accepted.map(|io| CutOffIo::new(io, &cut_off)))
        };
        let mut server_stop = stopping_rx.clone();
        let tls_on = tls.is_some();
        let mut builder = Server::builder()
            .http2_keepalive_interval(
                Some(limits.http2_keepalive_interval).filter(|interval| !interval.is_zero()),
            )
            .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout));
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).context("cannot configure TLS")?;
        }
        let server = builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                guard.wrap(
                    pb::pipeline_control_server::PipelineControlServer::new(service)
                        // The guard refuses larger messages first, with a clearer error.
                        .max_decoding_message_size(limits.max_message_size as usize),
                ),
            )
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = server_stop.wait_for(|stopping| *stopping).await;
            });
        tokio::pin!(server);
        tracing::info!(address = %local_addr, "serving gRPC");
        if let Some(demo) = &demo {
            // For the person who ran the demo; standard output stays for logs.
            eprintln!("{}", demo.banner(&local_addr.to_string(), tls_on));
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
                tracing::info!(grace = ?args.shutdown_grace, "shutting down: draining calls in flight");
                // Stop the server accepting and the health checker checking, then report
                // NOT_SERVING: once the checker has ended nothing can set SERVING again.
                let _ = stopping_tx.send(true);
                let _ = (&mut health_task).await;
                set_health(&health, ServingStatus::NotServing).await;
                match tokio::time::timeout(args.shutdown_grace, &mut server).await {
                    Ok(result) => result.context("the gRPC server failed while draining"),
                    Err(_) => {
                        tracing::warn!(grace = ?args.shutdown_grace, "calls still in flight after the grace period were cut off");
                        cut_off.cancel();
                        Ok(())
                    }
                }
            }
        };
        let _ = stopping_tx.send(true);
        if !health_task.is_finished() {
            let _ = health_task.await;
        }
        let _ = maintenance.await;
        let _ = reloader.await;
        // Stops whose callers were cut off may still be running: give them what is left of
        // the grace period (at least a second).
        let left = shutdown_started
            .map_or(args.shutdown_grace, |started| {
                args.shutdown_grace.saturating_sub(started.elapsed())
            })
            .max(Duration::from_secs(1));
        stopper.shutdown(left).await;
        if let Some(emulator) = emulator
            && let Err(error) = emulator.stop().await
        {
            tracing::warn!(%error, "the SageMaker emulator did not stop cleanly");
        }
        store.close().await;
        tracing::info!("stopped");
        result
    }
}

/// Reloads the token and policy files on each SIGHUP, until shutdown.
async fn reload_on_hangup(
    auth: Arc<Auth>,
    mut hangup: tokio::signal::unix::Signal,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stopping.wait_for(|stopping| *stopping) => return,
            received = hangup.recv() => {
                if received.is_none() {
                    return;
                }
                tracing::info!("received SIGHUP: reloading the token and policy files");
                auth.reload();
            }
        }
    }
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

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Expired records are deleted at most this many per statement.
const RETENTION_BATCH: u32 = 1000;

/// Background maintenance until shutdown: finishes stop requests whose owner died, and deletes
/// expired records in bounded batches.
async fn maintain(
    stopper: Arc<Stopper>,
    completer_interval: Duration,
    retention_interval: Duration,
    mut stopping: watch::Receiver<bool>,
) {
    let mut completer = tokio::time::interval(completer_interval);
    let mut sweeper = tokio::time::interval(retention_interval);
    completer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweeper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if *stopping.borrow() {
            return;
        }
        tokio::select! {
            // The flag only ever turns true; any change (or a closed channel) means stop.
            _ = stopping.changed() => return,
            _ = completer.tick() => {
                match stopper.complete_abandoned(100).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(completed = n, "completed abandoned stop requests"),
                    Err(error) => tracing::warn!(%error, "the completer could not run"),
                }
            }
            _ = sweeper.tick() => {
                loop {
                    match stopper.delete_expired(RETENTION_BATCH).await {
                        Ok(n) if n == u64::from(RETENTION_BATCH) => continue,
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "deleted expired stop requests"),
                        Err(error) => tracing::warn!(%error, "could not delete expired stop requests"),
                    }
                    break;
                }
            }
        }
    }
}

/// Server reflection over every service this server offers, and over the google.rpc error
/// details its errors carry (so grpcurl prints an ErrorInfo rather than its bytes).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Keeps health in step with the database: SERVING while it answers, NOT_SERVING while it does
/// not. Logs each change once, not each failed check.
struct HealthChecker {
    store: Arc<dyn Store>,
    health: HealthReporter,
    healthy: Option<bool>,
}

impl HealthChecker {
    fn new(store: Arc<dyn Store>, health: HealthReporter) -> Self {
        Self {
            store,
            health,
            healthy: None,
        }
    }

    async fn check(&mut self) {
        let healthy = match self.store.ping().await {
            Ok(()) => true,
            Err(error) => {
                if self.healthy != Some(false) {
                    tracing::warn!(%error, "database check failed; health is NOT_SERVING");
                }
                false
            }
        };
        if self.healthy == Some(healthy) {
            return;
        }
        if healthy && self.healthy.is_some() {
            tracing::info!("database reachable again; health is SERVING");
        }
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        set_health(&self.health, status).await;
        self.healthy = Some(healthy);
    }

    /// Checks every `interval` until shutdown starts. Shutdown itself sets NOT_SERVING, and a
    /// check finishing late must not undo that, hence the test after each check.
    async fn run(mut self, interval: Duration, mut stopping: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                () = tokio::time::sleep(interval) => {}
            }
            tokio::select! {
                _ = stopping.wait_for(|stopping| *stopping) => return,
                () = self.check() => {}
            }
        }
    }
}
