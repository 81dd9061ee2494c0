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
//! On Postgres the replicas share the reading (`feed`, over `store::fleet`): for each watched execution
//! one replica holds a lease and reads SageMaker (the *holder*); it publishes each changed
//! snapshot to the database, which notifies every replica, and the others (*followers*) feed
//! their watchers from there. Followers check the shared row every third of a lease as well,
//! so a lost notification costs at most that delay, and take the lease over when it ran out,
//! when the holder's database session is gone (it died), or when it was given up (its last
//! watcher left); a follower woken by an event that its holder does not answer within 2 s
//! reads SageMaker itself. When the database does not answer, a poller reads SageMaker on its
//! own (*alone*; logged and counted) and rejoins when the database is back: watchers never go
//! without news.
//!
//! Pollers run on the server's tracked tasks: shutdown waits for them (a holder gives its lease
//! up) before the store closes, and a reading in progress does not hold it.
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
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    domain::{ExecutionArn, ExecutionSnapshot},
    error::Error,
    estate::Estate,
    events::push::Push,
    jitter::jittered,
    metrics::Metrics,
    sagemaker::UpstreamError,
    store::fleet::Fleet,
};

mod feed;
mod role;

use role::{Counted, Role};

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
    /// The pollers and the fleet's listener: shutdown waits for them (a holder gives its
    /// lease up) before the store closes.
    tasks: TaskTracker,
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

impl Poller {
    /// Whether this poller has published its final word and ends (or has ended).
    fn ended(&self) -> bool {
        match &*self.tx.borrow() {
            Published::Nothing => false,
            Published::Snapshot(snapshot) => snapshot.status.is_terminal(),
            Published::NotFound
            | Published::Unavailable
            | Published::Refused(_)
            | Published::NotServed => true,
        }
    }
}

impl Watcher {
    /// The watcher of one server; with `fleet`, it shares reading with the other replicas.
    /// Its pollers run on `tasks` until `stopping`.
    pub(crate) fn new(
        estate: Arc<Estate>,
        settings: WatchSettings,
        stopping: CancellationToken,
        metrics: Arc<Metrics>,
        fleet: Option<Arc<dyn Fleet>>,
        push: Arc<Push>,
        tasks: TaskTracker,
    ) -> Arc<Self> {
        metrics.set_watch_streams_limit(settings.max_streams);
        Arc::new(Self {
            estate,
            settings,
            pollers: DashMap::new(),
            streams: Arc::new(AtomicUsize::new(0)),
            stopping,
            metrics,
            fleet: fleet.map(|fleet| (fleet, format!("watch-{}", uuid::Uuid::new_v4().simple()))),
            push,
            poller_ids: std::sync::atomic::AtomicU64::new(0),
            tasks,
        })
    }

    /// With a fleet, starts listening to the database's notifications (until `stopping`).
    pub(crate) fn start(self: &Arc<Self>) {
        if let Some((fleet, _)) = &self.fleet {
            self.tasks.spawn(self.clone().listen(fleet.clone()));
        }
    }

    /// The poll interval: how long a snapshot tells an execution's state (for reads too).
    pub(crate) fn poll_interval(&self) -> Duration {
        self.settings.poll_interval
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

    /// The snapshot this replica's poller of `arn` last published, if one is running: what
    /// watchers already know, at no cost upstream.
    pub(crate) fn latest(&self, arn: &str) -> Option<Arc<ExecutionSnapshot>> {
        let poller = self.pollers.get(arn)?;
        match &*poller.tx.borrow() {
            Published::Snapshot(snapshot) => Some(snapshot.clone()),
            _ => None,
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
            // A shutdown ends the wait at once, not at the grace's end.
            let changed = tokio::select! {
                changed = rx.changed() => changed,
                () = self.stopping.cancelled() => return Err(Error::ShuttingDown),
            };
            if changed.is_err() {
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
        let mut entry = self
            .pollers
            .entry(arn.as_str().to_string())
            .or_insert_with(|| self.start_poller(arn));
        // A poller that has said its final word (terminal, not found, or its first read failed)
        // is on its way out: a new watcher gets a poller of its own, which reads afresh (the
        // execution may have been retried since).
        if entry.ended() {
            *entry = self.start_poller(arn);
        }
        let rx = entry.tx.subscribe();
        (entry.clone(), rx)
    }

    /// A poller of `arn` on a task of its own.
    fn start_poller(self: &Arc<Self>, arn: &ExecutionArn) -> Arc<Poller> {
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
                self.tasks.spawn(self.clone().feed(
                    arn.clone(),
                    poller.clone(),
                    fleet.clone(),
                    format!("{replica}/{id}"),
                ))
            }
            None => self
                .tasks
                .spawn(self.clone().poll(arn.clone(), poller.clone())),
        };
        poller
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
        let _role = Counted::new(&self.metrics, Role::Alone);
        let mut delay = self.interval(&arn, true);
        let mut last_digest: Option<Vec<String>> = None;
        let mut idle_since = None;
        let stopping = self.stopping.clone();
        'poll: loop {
            // Reading changes nothing: a shutdown does not wait for it.
            let read = tokio::select! {
                read = self.read(&arn, &poller, &mut last_digest, &mut delay, true) => read,
                () = stopping.cancelled() => break,
            };
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
