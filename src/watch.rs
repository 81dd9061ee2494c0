//! WatchExecution: one poller per execution, shared by every watcher of it: per process on
//! SQLite, and across every replica on one Postgres.
//!
//! A poller reads the execution from SageMaker once per interval (with jitter) and publishes a
//! snapshot on a `tokio::sync::watch` channel only when something a watcher cares about
//! changed (status, a step's status, a failure reason). Watchers see the latest snapshot, never
//! a queue of old ones, so a slow watcher costs no memory. The poller backs off exponentially
//! (with jitter, up to `max_backoff`) while SageMaker fails or throttles, stops after a
//! terminal snapshot, and ends `linger` after its last watcher left.
//!
//! On Postgres the replicas share the reading (see `store::fleet`): for each watched execution
//! one replica holds a lease and reads SageMaker (the *holder*); it publishes each changed
//! snapshot to the database, which notifies every replica, and the others (*followers*) feed
//! their watchers from there. Followers check the shared row every third of a lease as well,
//! so a lost notification costs at most that delay, and take the lease over when it ran out
//! (its holder died) or was given up (its last watcher left). When the database does not
//! answer, a poller reads SageMaker on its own (*alone*; logged and counted) and rejoins when
//! the database is back: watchers never go without news.
//!
//! Each stream is an `unfold` over its own small state: it computes its next event only when
//! the transport asks for one (backpressure by construction, no task per stream). Streams yield
//! domain events ([`WatchEvent`]) and errors; the gRPC layer alone makes messages and statuses
//! of them.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use futures_util::stream::{self, Stream};
use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{ExecutionArn, ExecutionSnapshot},
    error::Error,
    estate::Estate,
    events::Push,
    jitter::jittered,
    metrics::Metrics,
    sagemaker::UpstreamError,
    store::fleet::{Fleet, Notice},
};

/// Tuning of watching.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchSettings {
    pub(crate) poll_interval: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) linger: Duration,
    pub(crate) max_streams: usize,
    /// How long a replica's lease on reading an execution for the fleet lasts unrenewed.
    pub(crate) lease: Duration,
    /// How often a watched execution is read while events flow (`--poll-fallback-interval`).
    pub(crate) fallback_interval: Duration,
}

/// What replicas share about an execution, as JSON in the database.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum SharedState {
    Snapshot(ExecutionSnapshot),
    NotFound,
}

/// What a poller has to say.
#[derive(Debug, Clone)]
enum Published {
    /// Nothing yet: the first poll is under way.
    Nothing,
    Snapshot(Arc<ExecutionSnapshot>),
    NotFound,
    /// The first poll failed transiently; there is no snapshot to give.
    Unavailable,
    /// The first poll was refused (the service's own credentials, say): not worth retrying.
    Refused(UpstreamError),
    /// The accounts file no longer serves the execution's account or region.
    NotServed,
}

#[derive(Debug)]
struct Poller {
    tx: watch::Sender<Published>,
    /// When SageMaker was last read, in Unix milliseconds (heartbeats report it).
    last_observed: AtomicI64,
    /// Rung when another replica published a snapshot of the execution (a follower reads it).
    shared: Notify,
    /// Rung when an event asks for a read now (the holder reads SageMaker).
    read: Notify,
    /// Rung when whether events flow changed: the next read is timed anew.
    retime: Notify,
}

/// Runs the pollers and makes the streams.
#[derive(Debug)]
pub(crate) struct Watcher {
    /// The SageMaker client of each execution's account and region.
    estate: Arc<Estate>,
    settings: WatchSettings,
    pollers: DashMap<String, Arc<Poller>>,
    streams: Arc<AtomicUsize>,
    /// Cancelled when the server starts draining: pollers and streams end.
    stopping: CancellationToken,
    metrics: Arc<Metrics>,
    /// Reading shared with the other replicas (Postgres), and this replica's name in it.
    fleet: Option<(Arc<dyn Fleet>, String)>,
    /// Whether events flow (then pollers read less often).
    push: Arc<Push>,
    /// Numbers this replica's pollers, so that each has a name of its own in the fleet.
    poller_ids: std::sync::atomic::AtomicU64,
}

/// One message of a watch stream, numbered from 1.
#[derive(Debug, Clone)]
pub(crate) struct WatchEvent {
    pub(crate) sequence: u64,
    pub(crate) kind: WatchEventKind,
}

/// What a watch stream says.
#[derive(Debug, Clone)]
pub(crate) enum WatchEventKind {
    /// The execution as last read, when something a watcher cares about changed (and first).
    Snapshot(Arc<ExecutionSnapshot>),
    /// Nothing new for a quiet period; SageMaker was last read at this time.
    Heartbeat {
        last_observed_at: Option<DateTime<Utc>>,
    },
}

/// The events of one watch, until a terminal snapshot (then the stream ends) or an error (its
/// last item).
pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchEvent, Error>> + Send + 'static>>;

/// Counts a stream while it lives (in the gauge once it is accepted).
struct StreamSlot {
    count: Arc<AtomicUsize>,
    gauge: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

/// Counts a poller while it runs.
struct PollerRunning<'a>(&'a Metrics);

impl Drop for PollerRunning<'_> {
    fn drop(&mut self) {
        self.0.pollers().dec();
    }
}

impl Watcher {
    /// The watcher of one server; with `fleet`, it shares reading with the other replicas
    /// (and listens to the database's notifications until `stopping`).
    pub(crate) fn new(
        estate: Arc<Estate>,
        settings: WatchSettings,
        stopping: CancellationToken,
        metrics: Arc<Metrics>,
        fleet: Option<Arc<dyn Fleet>>,
        push: Arc<Push>,
    ) -> Arc<Self> {
        metrics.set_watch_streams_limit(settings.max_streams);
        let watcher = Arc::new(Self {
            estate,
            settings,
            pollers: DashMap::new(),
            streams: Arc::new(AtomicUsize::new(0)),
            stopping,
            metrics,
            fleet: fleet.map(|fleet| (fleet, format!("watch-{}", uuid::Uuid::new_v4().simple()))),
            push,
            poller_ids: std::sync::atomic::AtomicU64::new(0),
        });
        if let Some((fleet, _)) = &watcher.fleet {
            tokio::spawn(watcher.clone().listen(fleet.clone()));
        }
        watcher
    }

    /// Passes the database's notifications to this replica's pollers, reconnecting when the
    /// connection drops (every poller then re-reads the shared row, in case one was lost), and
    /// forgets executions nobody has watched for an hour.
    async fn listen(self: Arc<Self>, fleet: Arc<dyn Fleet>) {
        let mut forget = tokio::time::interval(Duration::from_secs(600));
        loop {
            let mut listener = tokio::select! {
                listener = fleet.listen() => match listener {
                    Ok(listener) => listener,
                    Err(error) => {
                        tracing::warn!(%error, "cannot listen for shared watch snapshots; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            () = self.stopping.cancelled() => return,
                        }
                    }
                },
                () = self.stopping.cancelled() => return,
            };
            self.wake_all();
            loop {
                tokio::select! {
                    received = listener.try_recv() => match received {
                        Ok(Some(notification)) => {
                            match Notice::parse(notification.channel(), notification.payload()) {
                                Some(Notice::Snapshot { arn, .. }) => {
                                    if let Some(poller) = self.pollers.get(&arn) {
                                        poller.shared.notify_one();
                                    }
                                }
                                Some(Notice::Wake { arn }) => {
                                    if let Some(poller) = self.pollers.get(&arn) {
                                        poller.read.notify_one();
                                    }
                                }
                                None => {}
                            }
                        }
                        // The connection dropped and came back: what was sent meanwhile is lost.
                        Ok(None) => self.wake_all(),
                        Err(error) => {
                            tracing::warn!(%error, "lost the shared watch notifications; reconnecting");
                            break;
                        }
                    },
                    _ = forget.tick() => {
                        if let Err(error) = fleet.forget_idle(Duration::from_secs(3600)).await {
                            tracing::debug!(%error, "cannot forget idle shared watches");
                        }
                    }
                    () = self.stopping.cancelled() => return,
                }
            }
        }
    }

    /// Every follower re-reads its shared row.
    fn wake_all(&self) {
        for poller in &self.pollers {
            poller.shared.notify_one();
        }
    }

    /// An event says `arn` changed: its holder, on whichever replica, reads it now. `false`
    /// when nobody watches it (the event is of no use); `None` when the other replicas could
    /// not be told (the database did not answer: the event should come again).
    pub(crate) async fn wake(&self, arn: &str) -> Option<bool> {
        let here = self.pollers.get(arn).map(|poller| poller.clone());
        let Some((fleet, _)) = &self.fleet else {
            if let Some(poller) = &here {
                poller.read.notify_one();
            }
            return Some(here.is_some());
        };
        // The notification reaches this replica's holder too, so it is the only wake-up.
        match tokio::time::timeout(Duration::from_secs(2), fleet.wake(arn)).await {
            Ok(Ok(watched)) => Some(watched || here.is_some()),
            _ => {
                // This replica's own poller (alone while the database is out) still hears it.
                let poller = here?;
                poller.read.notify_one();
                Some(true)
            }
        }
    }

    /// Whether events flow changed: every poller times its next read anew.
    pub(crate) fn interval_changed(&self) {
        for poller in &self.pollers {
            poller.retime.notify_one();
        }
    }

    /// How often `arn` is read now: `--poll-fallback-interval` while the events of its account
    /// and region flow and can reach its poller (`events_reach`: not while the poller is
    /// alone, cut off from the other replicas' wake-ups), else `--poll-interval`.
    fn interval(&self, arn: &ExecutionArn, events_reach: bool) -> Duration {
        if events_reach && self.push.flowing_for(arn.account(), arn.region()) {
            self.settings
                .fallback_interval
                .max(self.settings.poll_interval)
        } else {
            self.settings.poll_interval
        }
    }

    /// A stream of the execution's state: the first snapshot is awaited here, so a missing
    /// execution or an unreachable SageMaker is an error status, not a stream.
    pub(crate) async fn watch(self: &Arc<Self>, arn: ExecutionArn) -> Result<WatchStream, Error> {
        let slot = self.take_slot()?;
        let (poller, mut rx) = self.subscribe(&arn);
        let first = loop {
            let published = rx.borrow_and_update().clone();
            match published {
                Published::Nothing => {}
                Published::Snapshot(snapshot) => break snapshot,
                Published::NotFound => return Err(Error::ExecutionNotFound),
                Published::Unavailable => {
                    return Err(Error::UpstreamUnavailable {
                        retry_after: self.settings.poll_interval,
                    });
                }
                Published::Refused(error) => return Err(error.into()),
                Published::NotServed => {
                    self.estate.check(&arn)?;
                    return Err(Error::UpstreamUnavailable {
                        retry_after: self.settings.poll_interval,
                    });
                }
            }
            if rx.changed().await.is_err() {
                return Err(Error::UpstreamUnavailable {
                    retry_after: self.settings.poll_interval,
                });
            }
        };
        let state = StreamState {
            rx,
            poller,
            stopping: self.stopping.clone(),
            heartbeat: self.settings.heartbeat,
            sequence: 0,
            pending: Some(first),
            done: false,
            _slot: slot,
        };
        Ok(Box::pin(stream::unfold(state, StreamState::next)))
    }

    fn take_slot(&self) -> Result<StreamSlot, Error> {
        let now = self.streams.fetch_add(1, Ordering::Relaxed);
        let mut slot = StreamSlot {
            count: self.streams.clone(),
            gauge: None,
        };
        if now >= self.settings.max_streams {
            self.metrics.limit_refused("watch_streams");
            return Err(Error::LimitExceeded {
                what: "concurrent watch streams",
                retry_after: Duration::from_secs(5),
            });
        }
        let gauge = self.metrics.watch_streams().clone();
        gauge.inc();
        slot.gauge = Some(gauge);
        Ok(slot)
    }

    /// Subscribes to the execution's poller, starting one if there is none. The subscription
    /// is made under the map's lock, which an idle poller also takes to remove itself, so a
    /// poller never leaves a subscriber behind.
    fn subscribe(
        self: &Arc<Self>,
        arn: &ExecutionArn,
    ) -> (Arc<Poller>, watch::Receiver<Published>) {
        let entry = self
            .pollers
            .entry(arn.as_str().to_string())
            .or_insert_with(|| {
                let (tx, _) = watch::channel(Published::Nothing);
                let poller = Arc::new(Poller {
                    tx,
                    last_observed: AtomicI64::new(0),
                    shared: Notify::new(),
                    read: Notify::new(),
                    retime: Notify::new(),
                });
                match &self.fleet {
                    Some((fleet, replica)) => {
                        let id = self.poller_ids.fetch_add(1, Ordering::Relaxed);
                        tokio::spawn(self.clone().feed(
                            arn.clone(),
                            poller.clone(),
                            fleet.clone(),
                            format!("{replica}/{id}"),
                        ))
                    }
                    None => tokio::spawn(self.clone().poll(arn.clone(), poller.clone())),
                };
                poller
            });
        let rx = entry.tx.subscribe();
        (entry.clone(), rx)
    }

    /// One read of SageMaker: publishes to this replica's watchers what changed, and adjusts
    /// `delay` (back to the interval after a success, doubled after a failure).
    async fn read(
        &self,
        arn: &ExecutionArn,
        poller: &Poller,
        last_digest: &mut Option<Vec<String>>,
        delay: &mut Duration,
        events_reach: bool,
    ) -> Read {
        let Ok(sagemaker) = self.estate.client(arn).await else {
            // A reload took the account or region out of the accounts file.
            poller.tx.send_replace(Published::NotServed);
            return Read::Ended;
        };
        match sagemaker.execution(arn).await {
            Ok(Some(snapshot)) => {
                *delay = self.interval(arn, events_reach);
                poller
                    .last_observed
                    .store(snapshot.observed_at.timestamp_millis(), Ordering::Relaxed);
                let digest = snapshot.digest();
                if last_digest.as_ref() == Some(&digest) {
                    return Read::Same(snapshot.observed_at);
                }
                *last_digest = Some(digest);
                let snapshot = Arc::new(snapshot);
                poller
                    .tx
                    .send_replace(Published::Snapshot(snapshot.clone()));
                self.metrics.snapshot_published();
                Read::Changed(snapshot)
            }
            Ok(None) => {
                poller.tx.send_replace(Published::NotFound);
                Read::NotFound
            }
            Err(error) => {
                if last_digest.is_none() {
                    poller.tx.send_replace(if error.is_transient() {
                        Published::Unavailable
                    } else {
                        Published::Refused(error)
                    });
                    return Read::Ended;
                }
                *delay = (*delay * 2).min(self.settings.max_backoff);
                if matches!(error, UpstreamError::Throttled(_)) {
                    tracing::debug!(execution = %arn, ?delay, "throttled; backing off");
                } else {
                    tracing::warn!(execution = %arn, %error, ?delay, "poll failed; backing off");
                }
                Read::Failed
            }
        }
    }

    /// Nobody watching: after `linger` (a reconnect may come meanwhile; the poller reads on),
    /// removes the poller unless someone subscribed (checked under the map's lock). `true`:
    /// removed. `idle_since` is when the last watcher left.
    fn gone(
        &self,
        arn: &ExecutionArn,
        poller: &Arc<Poller>,
        idle_since: &mut Option<Instant>,
    ) -> bool {
        if poller.tx.receiver_count() > 0 {
            *idle_since = None;
            return false;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        since.elapsed() >= self.settings.linger
            && self
                .pollers
                .remove_if(arn.as_str(), |_, current| {
                    Arc::ptr_eq(current, poller) && current.tx.receiver_count() == 0
                })
                .is_some()
    }

    /// When a poller wakes next: `until`, or sooner for the end of its linger.
    fn wake_at(&self, until: Instant, idle_since: Option<Instant>) -> Instant {
        idle_since.map_or(until, |since| until.min(since + self.settings.linger))
    }

    /// The in-process poller (SQLite: one process).
    async fn poll(self: Arc<Self>, arn: ExecutionArn, poller: Arc<Poller>) {
        self.metrics.pollers().inc();
        let _running = PollerRunning(&self.metrics);
        let _role = Role::new(&self.metrics, "alone");
        let mut delay = self.interval(&arn, true);
        let mut last_digest: Option<Vec<String>> = None;
        let mut idle_since = None;
        let stopping = self.stopping.clone();
        'poll: loop {
            let read = self
                .read(&arn, &poller, &mut last_digest, &mut delay, true)
                .await;
            // An event does not hurry a poller that backs off from a failing SageMaker.
            let backing_off = matches!(read, Read::Failed);
            match read {
                Read::Changed(snapshot) if snapshot.status.is_terminal() => break,
                Read::Changed(_) | Read::Same(_) | Read::Failed => {}
                Read::NotFound | Read::Ended => break,
            }
            let mut next_read = Instant::now() + jittered(delay, 0.1);
            loop {
                if self.gone(&arn, &poller, &mut idle_since) {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep_until(self.wake_at(next_read, idle_since)) => {
                        if Instant::now() >= next_read {
                            break;
                        }
                    }
                    () = poller.read.notified(), if !backing_off => break,
                    () = poller.retime.notified() => {
                        next_read = next_read
                            .min(Instant::now() + jittered(self.interval(&arn, true), 0.1));
                    }
                    () = stopping.cancelled() => break 'poll,
                }
            }
        }
        // A final state (terminal, not found, unreachable at first, shutdown): later watchers
        // start a fresh poller. Only this poller's own entry is removed.
        self.pollers
            .remove_if(arn.as_str(), |_, current| Arc::ptr_eq(current, &poller));
    }

    /// The poller of a replica that shares reading with the fleet: holder, follower, or alone
    /// while the database does not answer (see the module's doc). `owner` is this poller's
    /// name in the shared rows.
    async fn feed(
        self: Arc<Self>,
        arn: ExecutionArn,
        poller: Arc<Poller>,
        fleet: Arc<dyn Fleet>,
        owner: String,
    ) {
        self.metrics.pollers().inc();
        let _running = PollerRunning(&self.metrics);
        let mut role = Role::new(&self.metrics, "follower");
        let lease = self.settings.lease;
        // Database calls are bounded: an outage must not hold the watchers' news up.
        let bound = (lease / 3).min(Duration::from_secs(2));
        let mut delay = self.interval(&arn, true);
        let mut last_digest: Option<Vec<String>> = None;
        // The shared version this poller last took, and the one it found first. What was
        // there when it began is taken only while some poller holds the lease (it is being
        // kept fresh): a row nobody holds may be old (a holder died, or a final word of an
        // execution retried since, or one not found that exists now), so this poller claims
        // it and reads SageMaker instead.
        let mut version = 0_i64;
        let mut baseline: Option<i64> = None;
        // What this poller read and has not yet got into the shared row (a publication that
        // failed, a change read alone during an outage): published once it holds the lease.
        let mut pending: Option<SharedState> = None;
        let mut observed: Option<DateTime<Utc>> = None;
        let mut backing_off = false;
        let mut next_read = Instant::now();
        let mut idle_since = None;
        let stopping = self.stopping.clone();
        let finished = 'feed: loop {
            // Who reads SageMaker now? Followers first take what the holder shared.
            let turn = tokio::time::timeout(bound, async {
                if role.name() == "holder" {
                    return Ok(Turn::Hold);
                }
                if let Some(shared) = fleet.shared(arn.as_str()).await? {
                    if let Some(at) = shared.observed_at {
                        poller
                            .last_observed
                            .store(at.timestamp_millis(), Ordering::Relaxed);
                    }
                    let first = *baseline.get_or_insert(shared.version);
                    // Versions only grow, unless the row was forgotten and made anew. A version
                    // not taken (not fresh) is looked at again next time.
                    let fresh = shared.held || shared.version > first;
                    if shared.version != version && fresh {
                        version = shared.version;
                        let ended = match shared
                            .snapshot
                            .as_deref()
                            .map(serde_json::from_str::<SharedState>)
                        {
                            Some(Ok(state)) => self.adopt(&poller, state, &mut last_digest),
                            Some(Err(error)) => {
                                tracing::warn!(execution = %arn, %error, "a shared snapshot this version cannot read: ignored");
                                false
                            }
                            None => false,
                        };
                        if ended {
                            return Ok(Turn::Ended);
                        }
                    }
                    if shared.held {
                        // Someone holds it: another poller, or this one from before an outage
                        // (then it reads on as the holder).
                        return Ok(if shared.owner == owner {
                            Turn::Hold
                        } else {
                            Turn::Follow
                        });
                    }
                }
                Ok::<_, crate::store::StoreError>(if fleet.claim(arn.as_str(), &owner, lease).await? {
                    Turn::Hold
                } else {
                    Turn::Follow
                })
            })
            .await;
            match turn {
                Ok(Ok(Turn::Ended)) => break 'feed false,
                Ok(Ok(Turn::Follow)) => {
                    // The holder publishes what it reads; what this one read is not needed.
                    pending = None;
                    role.set(&self.metrics, "follower");
                }
                Ok(Ok(Turn::Hold)) => {
                    if role.name() != "holder" {
                        // A new holder reads at once: the last holder may be long gone.
                        next_read = Instant::now();
                        if role.name() == "alone" {
                            tracing::info!(execution = %arn, "shared watching is back");
                        }
                    }
                    role.set(&self.metrics, "holder");
                }
                Ok(Err(_)) | Err(_) => self.alone(&mut role, &arn),
            }
            let mut read = None;
            if role.name() != "follower" && Instant::now() >= next_read {
                let holder = role.name() == "holder";
                // SageMaker may be slow (retries, throttling): the lease is kept meanwhile.
                let done = {
                    let reading = self.read(
                        &arn,
                        &poller,
                        &mut last_digest,
                        &mut delay,
                        role.name() != "alone",
                    );
                    tokio::pin!(reading);
                    loop {
                        tokio::select! {
                            done = &mut reading => break done,
                            () = tokio::time::sleep(lease / 3), if holder => {
                                let _ = tokio::time::timeout(
                                    bound,
                                    fleet.renew(arn.as_str(), &owner, lease, None),
                                )
                                .await;
                            }
                        }
                    }
                };
                backing_off = matches!(done, Read::Failed);
                next_read = Instant::now() + jittered(delay, 0.1);
                match &done {
                    Read::Changed(snapshot) => {
                        pending = Some(SharedState::Snapshot((**snapshot).clone()));
                        observed = Some(snapshot.observed_at);
                    }
                    Read::NotFound => pending = Some(SharedState::NotFound),
                    Read::Same(at) => observed = Some(*at),
                    Read::Failed | Read::Ended => {}
                }
                read = Some(done);
            }
            if role.name() == "holder" {
                // Publish what is pending, or keep the lease (with when SageMaker was read).
                let publishing = pending.is_some();
                let kept = tokio::time::timeout(bound, async {
                    match &pending {
                        Some(state) => {
                            let json = serde_json::to_string(state).unwrap_or_default();
                            let at = observed.unwrap_or_else(Utc::now);
                            let published = fleet
                                .publish(arn.as_str(), &owner, lease, &json, at)
                                .await?;
                            if let Some(published) = published {
                                version = published;
                            }
                            Ok(published.is_some())
                        }
                        None => fleet.renew(arn.as_str(), &owner, lease, observed).await,
                    }
                })
                .await;
                match kept {
                    Ok(Ok(true)) => {
                        if publishing {
                            pending = None;
                        }
                    }
                    // Another poller took over (this one was too slow to renew).
                    Ok(Ok(false)) => role.set(&self.metrics, "follower"),
                    Ok(Err(_)) | Err(_) => self.alone(&mut role, &arn),
                }
            }
            match read {
                Some(Read::Changed(snapshot)) if snapshot.status.is_terminal() => {
                    break 'feed true;
                }
                Some(Read::NotFound | Read::Ended) => break 'feed true,
                _ => {}
            }
            if self.gone(&arn, &poller, &mut idle_since) {
                break 'feed true;
            }
            // Sleep until the next read (holder, alone) or check (every third of a lease),
            // or until a notification says there is news.
            let check = Instant::now() + lease / 3;
            let until = match role.name() {
                "follower" => check,
                _ => next_read.min(check),
            };
            tokio::select! {
                () = tokio::time::sleep_until(self.wake_at(until, idle_since)) => {}
                () = poller.shared.notified(), if role.name() == "follower" => {}
                // An event does not hurry a poller that backs off from a failing SageMaker.
                () = poller.read.notified() => {
                    if !backing_off {
                        next_read = Instant::now();
                    }
                }
                () = poller.retime.notified() => {
                    let interval = self.interval(&arn, role.name() != "alone");
                    next_read = next_read.min(Instant::now() + jittered(interval, 0.1));
                }
                () = stopping.cancelled() => break 'feed true,
            }
        };
        // The holder gives the lease up, so that a replica with watchers takes over at once
        // (after a terminal snapshot, nobody needs to: the row keeps it).
        if finished && role.name() == "holder" {
            let _ = tokio::time::timeout(bound, fleet.release(arn.as_str(), &owner)).await;
        }
        self.pollers
            .remove_if(arn.as_str(), |_, current| Arc::ptr_eq(current, &poller));
    }

    /// The database did not answer: this replica reads SageMaker for its own watchers until it
    /// does again (logged and counted once per outage of each poller).
    fn alone(&self, role: &mut Role, arn: &ExecutionArn) {
        if role.name() != "alone" {
            tracing::warn!(execution = %arn, "the database does not answer: reading SageMaker for this server's watchers alone");
            self.metrics.watch_fallback();
            role.set(&self.metrics, "alone");
        }
    }

    /// Feeds this replica's watchers what the holder shared; `true` when it was final.
    fn adopt(
        &self,
        poller: &Poller,
        state: SharedState,
        last_digest: &mut Option<Vec<String>>,
    ) -> bool {
        match state {
            SharedState::Snapshot(snapshot) => {
                let terminal = snapshot.status.is_terminal();
                let digest = snapshot.digest();
                if last_digest.as_ref() != Some(&digest) {
                    *last_digest = Some(digest);
                    poller
                        .tx
                        .send_replace(Published::Snapshot(Arc::new(snapshot)));
                    self.metrics.snapshot_published();
                }
                terminal
            }
            SharedState::NotFound => {
                poller.tx.send_replace(Published::NotFound);
                true
            }
        }
    }
}

/// What one read of SageMaker found.
enum Read {
    /// Something watchers care about changed (published to this replica's watchers).
    Changed(Arc<ExecutionSnapshot>),
    /// Nothing new; SageMaker answered at this time.
    Same(DateTime<Utc>),
    /// The execution does not exist (published).
    NotFound,
    /// A read failed after an earlier success: back off and read again.
    Failed,
    /// The poller cannot go on (the first read failed, the account is no longer served).
    Ended,
}

/// Who reads SageMaker for a watched execution, this turn.
enum Turn {
    /// Another replica: this one follows the shared row.
    Follow,
    /// This replica.
    Hold,
    /// The shared row had the final word (terminal, not found).
    Ended,
}

/// A poller's role, counted in the gauge of its role while it lasts.
struct Role {
    name: &'static str,
    gauge: prometheus_client::metrics::gauge::Gauge,
}

impl Role {
    fn new(metrics: &Metrics, name: &'static str) -> Self {
        let gauge = metrics.watch_role(name);
        gauge.inc();
        Self { name, gauge }
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn set(&mut self, metrics: &Metrics, name: &'static str) {
        if self.name != name {
            *self = Self::new(metrics, name);
        }
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

struct StreamState {
    rx: watch::Receiver<Published>,
    poller: Arc<Poller>,
    stopping: CancellationToken,
    heartbeat: Duration,
    sequence: u64,
    /// A snapshot to send before anything else.
    pending: Option<Arc<ExecutionSnapshot>>,
    done: bool,
    _slot: StreamSlot,
}

type Item = Result<WatchEvent, Error>;

impl StreamState {
    async fn next(mut self) -> Option<(Item, Self)> {
        if self.done {
            return None;
        }
        if let Some(snapshot) = self.pending.take() {
            return Some(self.snapshot(snapshot));
        }
        if self.stopping.is_cancelled() {
            return self.unavailable();
        }
        tokio::select! {
            changed = self.rx.changed() => {
                let published = self.rx.borrow_and_update().clone();
                match (changed, published) {
                    (Ok(()), Published::Snapshot(snapshot)) => Some(self.snapshot(snapshot)),
                    // The poller ended without news (shutdown, or gone): reconnect.
                    _ => self.unavailable(),
                }
            }
            () = tokio::time::sleep(self.heartbeat) => {
                self.sequence += 1;
                let millis = self.poller.last_observed.load(Ordering::Relaxed);
                let item = WatchEvent {
                    sequence: self.sequence,
                    kind: WatchEventKind::Heartbeat {
                        last_observed_at: DateTime::from_timestamp_millis(millis),
                    },
                };
                Some((Ok(item), self))
            }
            () = self.stopping.cancelled() => self.unavailable(),
        }
    }

    fn snapshot(mut self, snapshot: Arc<ExecutionSnapshot>) -> (Item, Self) {
        self.sequence += 1;
        self.done = snapshot.status.is_terminal();
        let item = WatchEvent {
            sequence: self.sequence,
            kind: WatchEventKind::Snapshot(snapshot),
        };
        (Ok(item), self)
    }

    fn unavailable(mut self) -> Option<(Item, Self)> {
        self.done = true;
        Some((Err(Error::ShuttingDown), self))
    }
}
