//! WatchExecution: one poller per execution per process, shared by every watcher of it.
//!
//! A poller reads the execution from SageMaker once per interval (with jitter) and publishes a
//! snapshot on a `tokio::sync::watch` channel only when something a watcher cares about
//! changed (status, a step's status, a failure reason). Watchers see the latest snapshot, never
//! a queue of old ones, so a slow watcher costs no memory. The poller backs off exponentially
//! (with jitter, up to `max_backoff`) while SageMaker fails or throttles, stops after a
//! terminal snapshot, and ends `linger` after its last watcher left.
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
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::{
    domain::{ExecutionArn, ExecutionSnapshot},
    error::Error,
    estate::Estate,
    jitter::jittered,
    metrics::Metrics,
    sagemaker::UpstreamError,
};

/// Tuning of watching.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchSettings {
    pub(crate) poll_interval: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) linger: Duration,
    pub(crate) max_streams: usize,
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
    pub(crate) fn new(
        estate: Arc<Estate>,
        settings: WatchSettings,
        stopping: CancellationToken,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        metrics.set_watch_streams_limit(settings.max_streams);
        Arc::new(Self {
            estate,
            settings,
            pollers: DashMap::new(),
            streams: Arc::new(AtomicUsize::new(0)),
            stopping,
            metrics,
        })
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
                });
                tokio::spawn(self.clone().poll(arn.clone(), poller.clone()));
                poller
            });
        let rx = entry.tx.subscribe();
        (entry.clone(), rx)
    }

    async fn poll(self: Arc<Self>, arn: ExecutionArn, poller: Arc<Poller>) {
        self.metrics.pollers().inc();
        let _running = PollerRunning(&self.metrics);
        let mut delay = self.settings.poll_interval;
        let mut last_digest: Option<Vec<String>> = None;
        let stopping = self.stopping.clone();
        loop {
            let Ok(sagemaker) = self.estate.client(&arn).await else {
                // A reload took the account or region out of the accounts file.
                poller.tx.send_replace(Published::NotServed);
                break;
            };
            match sagemaker.execution(&arn).await {
                Ok(Some(snapshot)) => {
                    delay = self.settings.poll_interval;
                    poller
                        .last_observed
                        .store(snapshot.observed_at.timestamp_millis(), Ordering::Relaxed);
                    let digest = snapshot.digest();
                    let terminal = snapshot.status.is_terminal();
                    if last_digest.as_ref() != Some(&digest) {
                        last_digest = Some(digest);
                        poller
                            .tx
                            .send_replace(Published::Snapshot(Arc::new(snapshot)));
                        self.metrics.snapshot_published();
                    }
                    if terminal {
                        break;
                    }
                }
                Ok(None) => {
                    poller.tx.send_replace(Published::NotFound);
                    break;
                }
                Err(error) => {
                    if last_digest.is_none() {
                        poller.tx.send_replace(if error.is_transient() {
                            Published::Unavailable
                        } else {
                            Published::Refused(error)
                        });
                        break;
                    }
                    delay = (delay * 2).min(self.settings.max_backoff);
                    if matches!(error, UpstreamError::Throttled(_)) {
                        tracing::debug!(execution = %arn, ?delay, "throttled; backing off");
                    } else {
                        tracing::warn!(execution = %arn, %error, ?delay, "poll failed; backing off");
                    }
                }
            }
            // Nobody watching: linger a little for a reconnect, then end, unless someone
            // subscribed in the meantime (checked under the map's lock).
            if poller.tx.receiver_count() == 0 {
                tokio::time::sleep(self.settings.linger).await;
                let removed = self.pollers.remove_if(arn.as_str(), |_, current| {
                    Arc::ptr_eq(current, &poller) && current.tx.receiver_count() == 0
                });
                if removed.is_some() {
                    return;
                }
            }
            tokio::select! {
                () = tokio::time::sleep(jittered(delay, 0.1)) => {}
                () = stopping.cancelled() => break,
            }
        }
        // A final state (terminal, not found, unreachable at first, shutdown): later watchers
        // start a fresh poller. Only this poller's own entry is removed.
        self.pollers
            .remove_if(arn.as_str(), |_, current| Arc::ptr_eq(current, &poller));
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
