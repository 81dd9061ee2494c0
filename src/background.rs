//! The service's background tasks, started together and stopped together through one
//! cancellation token (a child of the server's draining token):
//!
//! - the health checker keeps health in step with the database (SERVING while it answers);
//! - the completer finishes stop requests whose owner died (lease run out), with no retry
//!   from their callers, and the retention sweeper deletes expired stop requests and audit
//!   rows past `--audit-retention` in bounded batches (one task for both);
//! - the reloader reloads the token, policy, identity and accounts files on SIGHUP, and each
//!   when it changes on disk (checked every two seconds: a mounted ConfigMap changes without a
//!   signal).
//!
//! [`Background::stop`] cancels them all and waits until each has ended, so that nothing they
//! do (a late health check setting SERVING, say) happens after it returns.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    auth::Auth, error::Error, estate::Estate, files, metrics::Metrics, stop::Stopper, store::Store,
};

/// The gRPC service name health reports on, besides the whole server ("").
pub(crate) const SERVICE_NAME: &str = "pipelinecontrol.v1.PipelineControl";

/// Expired records are deleted at most this many per statement.
const RETENTION_BATCH: u32 = 1000;

/// Abandoned stop requests finished per round of the completer.
const COMPLETER_BATCH: u32 = 100;

/// How often each task runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Intervals {
    pub(crate) health_check: Duration,
    pub(crate) completer: Duration,
    pub(crate) retention: Duration,
}

/// How long audit rows are kept (`--audit-retention`); stop requests carry their own expiry.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    pub(crate) audit: Duration,
}

/// What the background tasks work on, gathered before serving.
#[derive(Debug)]
pub(crate) struct Background {
    pub(crate) health: HealthChecker,
    pub(crate) stopper: Arc<Stopper>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) retention: Retention,
    pub(crate) auth: Arc<Auth>,
    pub(crate) estate: Arc<Estate>,
    /// SIGHUP, listened for from the start (its default action would end the process).
    pub(crate) hangup: tokio::signal::unix::Signal,
    /// The files `auth` and `estate` read, watched for changes on disk.
    pub(crate) files: SettingsFiles,
    pub(crate) intervals: Intervals,
}

/// The background tasks, running.
#[derive(Debug)]
pub(crate) struct Running {
    tasks: JoinSet<()>,
    token: CancellationToken,
}

impl Background {
    /// Starts every task; they end when `token` is cancelled.
    pub(crate) fn start(self, token: CancellationToken) -> Running {
        let Self {
            health,
            stopper,
            store,
            retention,
            auth,
            estate,
            hangup,
            files,
            intervals,
        } = self;
        let mut tasks = JoinSet::new();
        tasks.spawn(health.run(intervals.health_check, token.clone()));
        tasks.spawn(maintain(
            stopper,
            store,
            retention,
            intervals,
            token.clone(),
        ));
        tasks.spawn(reload(auth, estate, hangup, files, token.clone()));
        Running { tasks, token }
    }
}

impl Running {
    /// Cancels every task and waits for each to end.
    pub(crate) async fn stop(mut self) {
        self.token.cancel();
        while let Some(ended) = self.tasks.join_next().await {
            if let Err(error) = ended {
                tracing::error!(%error, "a background task failed");
            }
        }
    }
}

/// The completer (and, on the same interval, the forcer of `force_after` deadlines) and the
/// retention sweeper, each on its own interval (the first round at once), on one task: their statements never compete with each other for connections. A
/// round in progress runs to its end (a stop the completer carries out is finished and
/// recorded, not left to its lease).
async fn maintain(
    stopper: Arc<Stopper>,
    store: Arc<dyn Store>,
    retention: Retention,
    intervals: Intervals,
    token: CancellationToken,
) {
    let mut completer = tokio::time::interval(intervals.completer);
    let mut sweeper = tokio::time::interval(intervals.retention);
    completer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    sweeper.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = token.cancelled() => return,
            _ = completer.tick() => {
                complete_abandoned(&stopper).await;
                force_due(&stopper).await;
            }
            _ = sweeper.tick() => delete_expired(store.as_ref(), retention).await,
        }
    }
}

async fn complete_abandoned(stopper: &Stopper) {
    match stopper.complete_abandoned(COMPLETER_BATCH).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(completed = n, "completed abandoned stop requests"),
        Err(error) => tracing::warn!(%error, "the completer could not run"),
    }
}

/// Carries out the force deadlines that have come (`force_after`).
async fn force_due(stopper: &Stopper) {
    match stopper.force_due(COMPLETER_BATCH).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(forced = n, "carried out force deadlines"),
        Err(error) => tracing::warn!(%error, "the forcer could not run"),
    }
}

/// Expired stop requests, then audit rows past their retention, each in bounded batches.
async fn delete_expired(store: &dyn Store, retention: Retention) {
    in_batches("expired stop requests", || async {
        Ok(store.delete_expired(RETENTION_BATCH).await?)
    })
    .await;
    in_batches("audit rows past their retention", || async {
        Ok(store
            .delete_old_audit(retention.audit, RETENTION_BATCH)
            .await?)
    })
    .await;
}

/// Calls `delete` (which deletes at most [`RETENTION_BATCH`] rows) until a batch comes back
/// short, logging how many the last one deleted.
async fn in_batches<F, Fut>(what: &str, mut delete: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<u64, Error>>,
{
    loop {
        match delete().await {
            Ok(n) if n == u64::from(RETENTION_BATCH) => continue,
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "deleted {what}"),
            Err(error) => tracing::warn!(%error, "could not delete {what}"),
        }
        return;
    }
}

/// The settings files a running service reads: those of `auth` (tokens, policy, identity) and
/// the accounts file.
#[derive(Debug, Clone, Default)]
pub(crate) struct SettingsFiles {
    pub(crate) auth: Vec<PathBuf>,
    pub(crate) accounts: Option<PathBuf>,
}

/// How often the settings files are checked for a change on disk.
const CHANGE_CHECK: Duration = Duration::from_secs(2);

/// Reloads every settings file on each SIGHUP, and those of an owner (`auth`, `estate`) one of
/// whose files changed on disk (a new file that does not load keeps the previous one).
async fn reload(
    auth: Arc<Auth>,
    estate: Arc<Estate>,
    mut hangup: tokio::signal::unix::Signal,
    files: SettingsFiles,
    token: CancellationToken,
) {
    let stamps = |paths: &[PathBuf]| paths.iter().map(|p| files::stamp(p)).collect::<Vec<_>>();
    let accounts: Vec<PathBuf> = files.accounts.iter().cloned().collect();
    let mut auth_stamps = stamps(&files.auth);
    let mut accounts_stamps = stamps(&accounts);
    let mut check = tokio::time::interval(CHANGE_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watching = !files.auth.is_empty() || !accounts.is_empty();
    loop {
        tokio::select! {
            () = token.cancelled() => return,
            received = hangup.recv() => {
                if received.is_none() {
                    return;
                }
                tracing::info!("received SIGHUP: reloading the token, policy, identity and accounts files");
                auth_stamps = stamps(&files.auth);
                accounts_stamps = stamps(&accounts);
                auth.reload();
                estate.reload();
            }
            _ = check.tick(), if watching => {
                let now = stamps(&files.auth);
                if now != auth_stamps {
                    auth_stamps = now;
                    tracing::info!("a token, policy or identity file changed on disk: reloading");
                    auth.reload();
                }
                let now = stamps(&accounts);
                if now != accounts_stamps {
                    accounts_stamps = now;
                    tracing::info!("the accounts file changed on disk: reloading");
                    estate.reload();
                }
            }
        }
    }
}

/// Sets the health of the whole server and of the service.
pub(crate) async fn set_health(health: &HealthReporter, metrics: &Metrics, status: ServingStatus) {
    metrics.set_serving(status == ServingStatus::Serving);
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Keeps health in step with the database: SERVING while it answers, NOT_SERVING while it does
/// not. Logs each change once, not each failed check.
#[derive(Debug)]
pub(crate) struct HealthChecker {
    store: Arc<dyn Store>,
    health: HealthReporter,
    metrics: Arc<Metrics>,
    healthy: Option<bool>,
}

impl HealthChecker {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        health: HealthReporter,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            health,
            metrics,
            healthy: None,
        }
    }

    /// Checks the database once and reports what it found.
    pub(crate) async fn check(&mut self) {
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
        set_health(&self.health, &self.metrics, status).await;
        self.healthy = Some(healthy);
    }

    /// Checks every `interval` (the first check was made before serving) until cancelled.
    /// Shutdown itself sets NOT_SERVING once this has ended, so a check finishing late cannot
    /// undo that.
    async fn run(mut self, interval: Duration, token: CancellationToken) {
        loop {
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            tokio::select! {
                biased;
                () = token.cancelled() => return,
                () = self.check() => {}
            }
        }
    }
}
