//! The poller of a replica that shares reading with the others on one Postgres: a small state
//! machine over [`Role`]. Each turn it asks who reads SageMaker now (the shared row of
//! `store::fleet`: a live lease held by another poller makes this one a follower; otherwise it
//! claims the lease and holds), reads if it holds (or is alone), publishes or renews, and
//! sleeps until the next read, a check of the row (every third of a lease) or a notification.
//!
//! Followers take what the holder shared; the holder's lease is renewed during slow reads; a
//! database that does not answer within its bound makes the poller read alone for its own
//! watchers (logged and counted), and what it read meanwhile is published once it holds the
//! lease again. A holder that stops (its last watcher left, or shutdown) gives the lease up so
//! that another replica takes over at once. The notifications that wake followers and holders
//! come from one listener per replica ([`Watcher::listen`]).

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use chrono::{DateTime, Utc};
use tokio::time::Instant;

use super::{
    Poller, PollerRunning, Published, Read, Watcher,
    role::{Counted, Role},
};
use crate::{
    domain::{ExecutionArn, ExecutionSnapshot},
    hooks,
    jitter::jittered,
    store::{
        StoreError,
        fleet::{Fleet, Notice},
    },
};

/// What replicas share about an execution, as JSON in the database.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum SharedState {
    Snapshot(ExecutionSnapshot),
    NotFound,
}

impl SharedState {
    /// Terminal, or not found: the poller that reads it ends.
    fn is_final(&self) -> bool {
        match self {
            Self::Snapshot(snapshot) => snapshot.status.is_terminal(),
            Self::NotFound => true,
        }
    }
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

impl Watcher {
    /// Passes the database's notifications to this replica's pollers, reconnecting when the
    /// connection drops or stops answering (checked every third of a lease: a connection that
    /// died without a word is replaced within a lease), every poller then re-reading the
    /// shared row in case a notification was lost; and forgets executions nobody has watched
    /// for an hour.
    pub(super) async fn listen(self: Arc<Self>, fleet: Arc<dyn Fleet>) {
        let mut forget = tokio::time::interval(Duration::from_secs(600));
        let every = self.settings.lease / 3;
        let within = every.min(Duration::from_secs(2));
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
            let mut check = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                        // The connection dropped: listen anew (the new session is the one holders
                        // name), and what was sent meanwhile is looked for.
                        Ok(None) => {
                            tracing::warn!("lost the shared watch notifications' connection; reconnecting");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "lost the shared watch notifications; reconnecting");
                            break;
                        }
                    },
                    _ = check.tick() => {
                        if let Err(error) = fleet.check(&mut listener, within).await {
                            tracing::warn!(%error, "the shared watch notifications' connection does not answer; replacing it");
                            break;
                        }
                    }
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

    /// The poller of `arn` on a replica that shares reading with the fleet. `owner` is this
    /// poller's name in the shared rows.
    pub(super) async fn feed(
        self: Arc<Self>,
        arn: ExecutionArn,
        poller: Arc<Poller>,
        fleet: Arc<dyn Fleet>,
        owner: String,
    ) {
        self.metrics.pollers().inc();
        let _running = PollerRunning(&self.metrics);
        let lease = self.settings.lease;
        let feed = Feed {
            role: Counted::new(&self.metrics, Role::Follower),
            delay: self.interval(&arn, true),
            // Database calls are bounded: an outage must not hold the watchers' news up.
            bound: (lease / 3).min(Duration::from_secs(2)),
            lease,
            last_digest: None,
            version: 0,
            baseline: None,
            began: Utc::now(),
            pending: None,
            observed: None,
            backing_off: false,
            next_read: Instant::now(),
            idle_since: None,
            // A holder reads within a couple of seconds of a wake-up.
            answer_within: Duration::from_secs(2),
            woken: None,
            last_woken: None,
            written: None,
            watcher: self.clone(),
            arn,
            poller,
            fleet,
            owner,
        };
        feed.run().await;
    }
}

/// One shared poller's state between turns.
struct Feed {
    watcher: Arc<Watcher>,
    arn: ExecutionArn,
    poller: Arc<Poller>,
    fleet: Arc<dyn Fleet>,
    owner: String,
    role: Counted,
    lease: Duration,
    /// The longest a database call may take before this poller reads alone.
    bound: Duration,
    /// The interval of reads now (longer while backing off).
    delay: Duration,
    last_digest: Option<Vec<String>>,
    /// The shared version this poller last took, and the one it found first. What was there
    /// when it began is taken only while some poller holds the lease (it is being kept fresh):
    /// a row nobody holds may be old (a holder died, or a final word of an execution retried
    /// since, or one not found that exists now), so this poller claims it and reads SageMaker
    /// instead.
    version: i64,
    baseline: Option<i64>,
    /// When this poller began. A final word read from SageMaker before then is not taken,
    /// even from a version newer than the baseline: its holder may have read it before a
    /// retry of the execution and published it late (its watchers hear first, the row
    /// after), so SageMaker says.
    began: DateTime<Utc>,
    /// What this poller read and has not yet got into the shared row (a publication that
    /// failed, a change read alone during an outage): published once it holds the lease.
    pending: Option<SharedState>,
    /// When SageMaker was last read by this poller.
    observed: Option<DateTime<Utc>>,
    /// The last read failed: events do not hurry the next one.
    backing_off: bool,
    next_read: Instant,
    /// When the last watcher left.
    idle_since: Option<Instant>,
    /// How long a follower woken by an event gives the holder to answer (to write the shared
    /// row) before it reads SageMaker itself.
    answer_within: Duration,
    /// The first wake-up of this follower by an event that the holder is not known to have
    /// answered yet, and the latest one.
    woken: Option<Instant>,
    last_woken: Option<Instant>,
    /// When the shared row was last written, as of this poller's last look at it.
    written: Option<Instant>,
}

impl Feed {
    async fn run(mut self) {
        let finished = loop {
            let turn = tokio::time::timeout(self.bound, self.whose_turn()).await;
            match turn {
                Ok(Ok(Turn::Ended)) => break false,
                Ok(Ok(Turn::Follow)) => {
                    // The holder publishes what it reads; what this one read is not needed.
                    self.pending = None;
                    self.role.set(&self.watcher.metrics, Role::Follower);
                }
                Ok(Ok(Turn::Hold)) => self.hold(),
                Ok(Err(_)) | Err(_) => self.alone(),
            }
            let due = self.role.get() != Role::Follower && Instant::now() >= self.next_read;
            let read = if due || self.unanswered() {
                Some(self.read().await)
            } else {
                None
            };
            if self.role.get() == Role::Holder {
                self.keep().await;
            }
            match read {
                Some(Read::Changed(snapshot)) if snapshot.status.is_terminal() => break true,
                Some(Read::NotFound | Read::Ended) => break true,
                _ => {}
            }
            if self
                .watcher
                .gone(&self.arn, &self.poller, &mut self.idle_since)
            {
                break true;
            }
            if !self.sleep().await {
                break true;
            }
        };
        // The holder gives the lease up, so that a replica with watchers takes over at once
        // (after a terminal snapshot, nobody needs to: the row keeps it).
        if finished && self.role.get() == Role::Holder {
            hooks::pause(hooks::WATCH_BEFORE_RELEASE).await;
            let _ = tokio::time::timeout(
                self.bound,
                self.fleet.release(self.arn.as_str(), &self.owner),
            )
            .await;
        }
        self.watcher
            .pollers
            .remove_if(self.arn.as_str(), |_, current| {
                Arc::ptr_eq(current, &self.poller)
            });
    }

    /// Who reads SageMaker now? A follower first takes what the holder shared.
    async fn whose_turn(&mut self) -> Result<Turn, StoreError> {
        if self.role.get() == Role::Holder {
            return Ok(Turn::Hold);
        }
        if let Some(shared) = self.fleet.shared(self.arn.as_str()).await? {
            self.written = Instant::now().checked_sub(shared.quiet);
            if let Some(at) = shared.observed_at {
                self.poller
                    .last_observed
                    .store(at.timestamp_millis(), Ordering::Relaxed);
            }
            let first = *self.baseline.get_or_insert(shared.version);
            let state = shared
                .snapshot
                .as_deref()
                .map(serde_json::from_str::<SharedState>);
            // Versions only grow, unless the row was forgotten and made anew. What was there
            // when this poller began is taken only while its holder keeps it fresh, and never
            // a final word (a holder publishes one just before it gives the lease up, and the
            // execution may have been retried since): SageMaker says. A version not taken is
            // looked at again next time.
            let newer = shared.version > first;
            let fresh = match &state {
                Some(Ok(state)) if state.is_final() => {
                    newer && shared.observed_at.is_some_and(|at| at >= self.began)
                }
                Some(Ok(_)) => newer || shared.held,
                _ => newer || shared.held,
            };
            if shared.version != self.version && fresh {
                self.version = shared.version;
                let ended = match state {
                    Some(Ok(state)) => self.adopt(state),
                    Some(Err(error)) => {
                        tracing::warn!(execution = %self.arn, %error, "a shared snapshot this version cannot read: ignored");
                        false
                    }
                    None => false,
                };
                if ended {
                    return Ok(Turn::Ended);
                }
            }
            if shared.held {
                // Someone holds it: another poller, or this one from before an outage (then it
                // reads on as the holder).
                return Ok(if shared.owner == self.owner {
                    Turn::Hold
                } else {
                    Turn::Follow
                });
            }
        }
        Ok(
            if self
                .fleet
                .claim(self.arn.as_str(), &self.owner, self.lease)
                .await?
            {
                Turn::Hold
            } else {
                Turn::Follow
            },
        )
    }

    /// A follower woken by an event whose holder did not answer in time (it wrote nothing to
    /// the shared row since: it died, or is stuck): this poller reads SageMaker itself, so its
    /// watchers hear of the change now rather than when the holder's lease runs out (then it
    /// takes the lease over, at its next look).
    fn unanswered(&mut self) -> bool {
        let (Some(woken), Some(last)) = (self.woken, self.last_woken) else {
            return false;
        };
        if self.role.get() != Role::Follower {
            self.woken = None;
            return false;
        }
        // A write since a wake-up answers it, and every earlier one; the later ones wait.
        match self.written {
            Some(written) if written >= last => {
                self.woken = None;
                return false;
            }
            Some(written) if written >= woken => {
                self.woken = Some(last);
                return false;
            }
            _ => {}
        }
        if woken.elapsed() < self.answer_within {
            return false;
        }
        self.woken = None;
        tracing::info!(execution = %self.arn, "the holder did not answer a wake-up: reading SageMaker here");
        self.watcher.metrics.watch_unanswered();
        true
    }

    /// This poller holds the lease.
    fn hold(&mut self) {
        let was = self.role.get();
        if self.role.set(&self.watcher.metrics, Role::Holder) {
            // A new holder reads at once: the last holder may be long gone.
            self.next_read = Instant::now();
            if was == Role::Alone {
                tracing::info!(execution = %self.arn, "shared watching is back");
            }
        }
    }

    /// The database did not answer: this replica reads SageMaker for its own watchers until it
    /// does again (logged and counted once per outage of each poller).
    fn alone(&mut self) {
        if self.role.set(&self.watcher.metrics, Role::Alone) {
            tracing::warn!(execution = %self.arn, "the database does not answer: reading SageMaker for this server's watchers alone");
            self.watcher.metrics.watch_fallback();
        }
    }

    /// Reads SageMaker (holder or alone). SageMaker may be slow (retries, throttling): a
    /// holder keeps its lease meanwhile.
    async fn read(&mut self) -> Read {
        let holder = self.role.get() == Role::Holder;
        let events_reach = self.role.get() != Role::Alone;
        let done = {
            let reading = self.watcher.read(
                &self.arn,
                &self.poller,
                &mut self.last_digest,
                &mut self.delay,
                events_reach,
            );
            tokio::pin!(reading);
            loop {
                tokio::select! {
                    done = &mut reading => break done,
                    // Reading changes nothing: a shutdown does not wait for it.
                    () = self.watcher.stopping.cancelled() => break Read::Ended,
                    () = tokio::time::sleep(self.lease / 3), if holder => {
                        let _ = tokio::time::timeout(
                            self.bound,
                            self.fleet.renew(self.arn.as_str(), &self.owner, self.lease, None),
                        )
                        .await;
                    }
                }
            }
        };
        self.backing_off = matches!(done, Read::Failed);
        self.next_read = Instant::now() + jittered(self.delay, 0.1);
        match &done {
            Read::Changed(snapshot) => {
                self.pending = Some(SharedState::Snapshot((**snapshot).clone()));
                self.observed = Some(snapshot.observed_at);
            }
            Read::NotFound => {
                self.pending = Some(SharedState::NotFound);
                self.observed = Some(Utc::now());
            }
            Read::Same(at) => self.observed = Some(*at),
            Read::Failed | Read::Ended => {}
        }
        done
    }

    /// The holder publishes what is pending, or keeps the lease (with when SageMaker was read).
    async fn keep(&mut self) {
        let publishing = self.pending.is_some();
        if publishing {
            hooks::pause(hooks::WATCH_BEFORE_PUBLISH).await;
        }
        let kept = tokio::time::timeout(self.bound, async {
            match &self.pending {
                Some(state) => {
                    let json = serde_json::to_string(state).unwrap_or_default();
                    let at = self.observed.unwrap_or_else(Utc::now);
                    let published = self
                        .fleet
                        .publish(self.arn.as_str(), &self.owner, self.lease, &json, at)
                        .await?;
                    if let Some(published) = published {
                        self.version = published;
                    }
                    Ok(published.is_some())
                }
                None => {
                    self.fleet
                        .renew(self.arn.as_str(), &self.owner, self.lease, self.observed)
                        .await
                }
            }
        })
        .await;
        match kept {
            Ok(Ok(true)) => {
                if publishing {
                    self.pending = None;
                }
            }
            // Another poller took over (this one was too slow to renew).
            Ok(Ok(false)) => {
                self.role.set(&self.watcher.metrics, Role::Follower);
            }
            Ok(Err(_)) | Err(_) => self.alone(),
        }
    }

    /// Sleeps until the next read (holder, alone) or check (every third of a lease), or until
    /// a notification says there is news. `false` when the server is stopping.
    async fn sleep(&mut self) -> bool {
        let check = Instant::now() + self.lease / 3;
        let follower = self.role.get() == Role::Follower;
        let until = if follower {
            self.woken
                .map_or(check, |woken| check.min(woken + self.answer_within))
        } else {
            self.next_read.min(check)
        };
        let watcher = &self.watcher;
        tokio::select! {
            () = tokio::time::sleep_until(watcher.wake_at(until, self.idle_since)) => {}
            () = self.poller.shared.notified(), if follower => {}
            // An event does not hurry a poller that backs off from a failing SageMaker.
            // A follower gives the holder a moment to answer (see `unanswered`).
            () = self.poller.read.notified() => {
                if follower {
                    let now = Instant::now();
                    self.woken.get_or_insert(now);
                    self.last_woken = Some(now);
                } else if !self.backing_off {
                    self.next_read = Instant::now();
                }
            }
            () = self.poller.retime.notified() => {
                let interval = watcher.interval(&self.arn, self.role.get() != Role::Alone);
                self.next_read = self.next_read.min(Instant::now() + jittered(interval, 0.1));
            }
            () = watcher.stopping.cancelled() => return false,
        }
        true
    }

    /// Feeds this replica's watchers what the holder shared; `true` when it was final.
    fn adopt(&mut self, state: SharedState) -> bool {
        match state {
            SharedState::Snapshot(snapshot) => {
                let terminal = snapshot.status.is_terminal();
                let digest = snapshot.digest();
                if self.last_digest.as_ref() != Some(&digest) {
                    self.last_digest = Some(digest);
                    self.poller
                        .tx
                        .send_replace(Published::Snapshot(Arc::new(snapshot)));
                    self.watcher.metrics.snapshot_published();
                }
                terminal
            }
            SharedState::NotFound => {
                self.poller.tx.send_replace(Published::NotFound);
                true
            }
        }
    }
}
