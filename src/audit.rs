//! Write-behind for audit events that change no record (replays, reused keys): they are queued
//! and written in batches, one statement per batch, so that a replay costs no database write
//! of its own. Events that change a record are written in that record's own transaction
//! (see `store`), never here.
//!
//! The queue is bounded: when the database cannot keep up, events are dropped and counted
//! rather than letting memory grow; a warning says how many.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    metrics::Metrics,
    store::{AuditEvent, Store},
};

/// Events queued at most; past that, new ones are dropped (and counted).
const QUEUE: usize = 50_000;
/// Events written per batch at most.
const BATCH: usize = 2_000;
/// How long an event waits for company before its batch is written.
const LINGER: Duration = Duration::from_millis(100);

/// What the writer works on, before it starts.
type Unstarted = (Arc<dyn Store>, mpsc::Receiver<AuditEvent>);

/// The queue's sending side.
#[derive(Debug)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<AuditEvent>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
    /// Until the writer starts: what it needs (it takes them).
    waiting: std::sync::Mutex<Option<Unstarted>>,
    writer: std::sync::Mutex<Option<JoinHandle<()>>>,
    metrics: Arc<Metrics>,
}

impl AuditLog {
    /// The queue; events wait in it until [`AuditLog::start`].
    pub(crate) fn new(store: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            stop: CancellationToken::new(),
            waiting: std::sync::Mutex::new(Some((store, rx))),
            writer: std::sync::Mutex::new(None),
            metrics,
        }
    }

    /// Starts the writer task (once; [`AuditLog::flush_and_stop`] waits for it).
    pub(crate) fn start(&self) {
        let Some((store, rx)) = self.waiting.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        let writer = tokio::spawn(write(
            store,
            rx,
            self.stop.clone(),
            self.dropped.clone(),
            self.metrics.clone(),
        ));
        if let Ok(mut slot) = self.writer.lock() {
            *slot = Some(writer);
        }
    }

    /// Queues an event; never waits.
    pub(crate) fn record(&self, event: AuditEvent) {
        if self.tx.try_send(event).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            self.metrics.audit_dropped("queue_full", 1);
        } else {
            self.metrics.audit_queue().inc();
        }
    }

    /// Writes what is queued and stops the writer.
    pub(crate) async fn flush_and_stop(&self) {
        self.stop.cancel();
        let writer = self.writer.lock().ok().and_then(|mut w| w.take());
        if let Some(writer) = writer {
            let _ = writer.await;
        }
    }
}

async fn write(
    store: Arc<dyn Store>,
    mut rx: mpsc::Receiver<AuditEvent>,
    stop: CancellationToken,
    dropped: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = tokio::select! {
            received = rx.recv_many(&mut batch, BATCH) => received == 0,
            () = stop.cancelled() => true,
        };
        if !stopping && batch.len() < BATCH {
            // Let a burst gather into one statement.
            tokio::time::sleep(LINGER).await;
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(event) => batch.push(event),
                    Err(_) => break,
                }
            }
        }
        if stopping {
            while let Ok(event) = rx.try_recv() {
                batch.push(event);
            }
        }
        if !batch.is_empty() {
            let events = batch.len() as u64;
            metrics
                .audit_queue()
                .dec_by(i64::try_from(events).unwrap_or(i64::MAX));
            if let Err(error) = store.audit(&batch).await {
                tracing::warn!(%error, events, "could not write audit events");
                metrics.audit_dropped("write_failed", events);
            }
            batch.clear();
        }
        let lost = dropped.swap(0, Ordering::Relaxed);
        if lost > 0 {
            tracing::warn!(lost, "audit events dropped: the database could not keep up");
        }
        if stopping {
            return;
        }
    }
}
