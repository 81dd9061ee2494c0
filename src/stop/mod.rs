//! StopExecution and GetStopRequest: the idempotency contract, over the store and the SageMaker
//! module. Forcing a stuck stop (`force_after`) has a file of its own (`force`).
//!
//! A request is keyed by (principal, client token) and fingerprinted (method, ARN, reason).
//! How the principal was proven is recorded with the request, and each audit row keeps how
//! the caller of its own call was (a replay's may differ); it is neither key nor fingerprint,
//! so a caller proven another way (a static token replaced by a JWT naming the same
//! principal) replays its own requests.
//! It is claimed in the database (pending, with a lease and a fencing epoch) before anything
//! is sent upstream; no transaction is open during the AWS call. SageMaker gets an upstream
//! token derived from the key, the same on every attempt by any replica, so SageMaker
//! deduplicates too. Deterministic outcomes are recorded and replayed; transient failures give
//! the lease back and answer UNAVAILABLE, and a retry (or the background completer) resumes.
//!
//! Concurrent duplicates wait for the first attempt's outcome: woken at once in this process,
//! polling the store for other replicas, bounded by their deadline and `duplicate_wait`.

use std::{sync::Arc, time::Duration};

use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use tokio::{sync::Notify, time::Instant};

mod force;

use crate::{
    audit::AuditLog,
    domain::{ClientToken, ExecutionArn, ExecutionStatus, Principal, Proof, Reason, StopOutcome},
    error::Error,
    estate::Estate,
    hooks,
    jitter::jittered,
    metrics::Metrics,
    sagemaker::{SageMaker, StopResult, UpstreamError},
    store::{
        AuditEvent, AuditKind, Completion, NewStopRequest, RecordedError, Release, RequestKey,
        StopRecord, Store, StoreError,
    },
};

/// What claiming a key found.
#[derive(Debug)]
enum Claim {
    /// This worker now holds the lease at `record.epoch`: new, or taken over from a lease that
    /// ran out.
    Acquired(StopRecord),
    /// Someone else's record: completed, in progress under a live lease, or made by a
    /// different request (compare fingerprints).
    Existing(StopRecord),
}

/// The RPC name in fingerprints and records.
const METHOD: &str = "StopExecution";

/// ConflictException is a transient race between steps: peers retry it 5 times, 0.3 s apart.
const CONFLICT_TRIES: u32 = 5;
const CONFLICT_PAUSE: Duration = Duration::from_millis(300);

/// How often a waiting duplicate re-reads the store (another replica may hold the lease).
const WAIT_POLL: Duration = Duration::from_millis(100);

/// Completed records kept in memory for replays.
const REPLAY_CACHE: usize = 50_000;

/// Tuning of the idempotency machinery.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StopSettings {
    /// How long a claim is held before another worker may take it over.
    pub(crate) lease: Duration,
    /// How long records are kept (and so how long a token is remembered).
    pub(crate) retention: Duration,
    /// The longest a duplicate waits for the first attempt's outcome.
    pub(crate) duplicate_wait: Duration,
}

/// A validated stop request.
#[derive(Debug, Clone)]
pub(crate) struct StopInput {
    pub(crate) principal: Principal,
    /// How the principal was proven.
    pub(crate) proof: Proof,
    pub(crate) arn: ExecutionArn,
    pub(crate) token: ClientToken,
    pub(crate) reason: Reason,
    /// Answer the Callback steps still holding the execution this long after the stop.
    pub(crate) force_after: Option<Duration>,
}

impl StopInput {
    /// The record to claim for this request.
    fn request(&self) -> NewStopRequest {
        let fingerprint = fingerprint(&self.arn, &self.reason, self.force_after);
        NewStopRequest {
            key: RequestKey {
                principal: self.principal.as_str().to_string(),
                token: self.token.as_str().to_string(),
            },
            upstream_token: upstream_token(&self.principal, &self.token, &fingerprint),
            fingerprint,
            method: METHOD.to_string(),
            pipeline_execution_arn: self.arn.clone(),
            reason: self.reason.as_str().to_string(),
            force_after: self.force_after,
            proof: self.proof.clone(),
        }
    }
}

/// Why an attempt at a stop produced nothing to record.
#[derive(Debug)]
enum Failure {
    /// Throttling, 5xx, network: the lease is given back and a retry (or the completer)
    /// resumes.
    Transient(UpstreamError),
    /// An answer for the caller that is not recorded: the attempt is discarded.
    NotRecorded(Error),
}

impl From<UpstreamError> for Failure {
    /// Transient failures leave the request to be resumed; the service's own credentials
    /// refused (or any other refusal) are answered and not recorded, so that a retry after
    /// the fix works.
    fn from(error: UpstreamError) -> Self {
        if error.is_transient() {
            Failure::Transient(error)
        } else {
            Failure::NotRecorded(error.into())
        }
    }
}

/// A completed record and whether it answered an earlier request.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) record: StopRecord,
    pub(crate) replayed: bool,
    /// For a forced stop: what its deadline will not be able to force (running Lambda steps),
    /// as things stand when it is answered; empty otherwise.
    pub(crate) force_note: String,
}

/// Carries out stop requests.
#[derive(Debug)]
pub(crate) struct Stopper {
    store: Arc<dyn Store>,
    /// The SageMaker client of each execution's account and region.
    estate: Arc<Estate>,
    settings: StopSettings,
    /// Identifies this worker in leases and the audit trail.
    worker: String,
    /// Waiters on keys being worked on in this process.
    inflight: DashMap<RequestKey, Arc<Notify>>,
    /// Completed records by key. A completed record never changes until it expires, so any
    /// replica may answer a replay from memory; an entry is trusted only until its expiry.
    completed: quick_cache::sync::Cache<RequestKey, StopRecord>,
    /// Replays and reused keys, written behind.
    audit: AuditLog,
    /// Claimed stops, each carried out on a task of its own (see [`Stopper::carry_out_detached`]),
    /// so that shutdown can wait for them.
    tasks: TaskTracker,
    metrics: Arc<Metrics>,
    /// Stops of StopExecutions batches running at once, all batches of an (account, region)
    /// together: a stream holds no permit of the guard's once its first message is out, so
    /// this bounds what many batches together ask of one (account, region)'s SageMaker. Per
    /// (account, region), as SageMaker's quotas are: stops waiting for a throttled account's
    /// pace hold none of another account's permits. Across accounts nothing here bounds
    /// them: batches over N accounts run up to N x 16 stops at once, and what they ask of
    /// the database waits for the store's pool (`--database-max-connections`).
    batch_stops: DashMap<(String, String), Arc<tokio::sync::Semaphore>>,
}

/// Stops of all StopExecutions batches of one (account, region) together at once (each batch
/// runs a few itself).
const BATCH_STOPS_AT_ONCE: usize = 16;

/// The `outcome` label of a StopExecution answer in the metrics: the outcome, or the error's
/// reason (the recorded one for a replayed refusal).
pub(crate) fn outcome_label(result: &Result<Answer, Error>) -> (&'static str, bool) {
    match result {
        Ok(Answer {
            record, replayed, ..
        }) => match record.state.completion() {
            Some(Completion::Stopped { outcome, .. }) => (outcome.as_str(), *replayed),
            Some(Completion::Refused { error, status }) => {
                (Error::recorded(*error, status.as_ref()).reason(), *replayed)
            }
            None => ("PENDING", *replayed),
        },
        Err(error) => (error.reason(), false),
    }
}

/// SHA-256 of the parts, each length-prefixed so that no two lists of parts collide; hex.
pub(crate) fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The request's identity: the same key with another fingerprint is a reused key. Without
/// `force_after` it is what it always was, so records made before `force_after` existed
/// still match their retries.
pub(crate) fn fingerprint(
    arn: &ExecutionArn,
    reason: &Reason,
    force_after: Option<Duration>,
) -> String {
    match force_after {
        None => digest(&[METHOD, arn.as_str(), reason.as_str()]),
        Some(after) => digest(&[
            METHOD,
            arn.as_str(),
            reason.as_str(),
            &format!("force_after={}ms", after.as_millis()),
        ]),
    }
}

/// What differs between the request a token was first used with and `request` (whose
/// fingerprint differs): the execution, the reason, or else what only the fingerprint holds,
/// `force_after`.
fn differences(record: &StopRecord, request: &NewStopRequest) -> String {
    let mut differs = Vec::new();
    if record.pipeline_execution_arn != request.pipeline_execution_arn {
        differs.push("execution");
    }
    if record.reason != request.reason {
        differs.push("reason");
    }
    if differs.is_empty() {
        differs.push("force_after");
    }
    differs.join(" and ")
}

/// SageMaker's ClientRequestToken for a request: 64 hex characters (SageMaker takes 32 to
/// 128), derived from the key and the request's fingerprint. Every attempt at one request
/// sends the same one; a token reused for another request once its record has expired gets
/// another, so SageMaker never mistakes it for the old request.
pub(crate) fn upstream_token(
    principal: &Principal,
    token: &ClientToken,
    fingerprint: &str,
) -> String {
    digest(&[principal.as_str(), token.as_str(), fingerprint])
}

impl Stopper {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        estate: Arc<Estate>,
        settings: StopSettings,
        worker: String,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            audit: AuditLog::new(store.clone(), metrics.clone()),
            metrics,
            store,
            estate,
            settings,
            worker,
            inflight: DashMap::new(),
            completed: quick_cache::sync::Cache::new(REPLAY_CACHE),
            tasks: TaskTracker::new(),
            batch_stops: DashMap::new(),
        }
    }

    /// Starts writing audit events behind (replays, reused keys).
    pub(crate) fn start(&self) {
        self.audit.start();
    }

    /// Waits (at most `within`) for the stops still running on their own tasks, then writes
    /// the queued audit events; call once serving has stopped.
    pub(crate) async fn shutdown(&self, within: Duration) {
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.tasks.len(),
                "stops still running at shutdown; their leases will run out and another replica or the next start completes them"
            );
        }
        self.audit.flush_and_stop().await;
    }

    /// The completed record under `key` from memory, if it is there and not expired.
    fn cached(&self, key: &RequestKey) -> Option<StopRecord> {
        let record = self.completed.get(key)?;
        if record.expires_at > chrono::Utc::now() {
            Some(record)
        } else {
            self.completed.remove(key);
            None
        }
    }

    fn remember(&self, record: &StopRecord) {
        if !record.state.is_pending() {
            self.completed.insert(record.key.clone(), record.clone());
        }
    }

    /// StopExecution. `deadline` is the caller's, when it sent one. A forced stop that stopped
    /// says at once what its deadline cannot force.
    pub(crate) async fn stop(
        self: &Arc<Self>,
        input: &StopInput,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        let mut answer = self.stop_in_batch(input, deadline).await?;
        if answer.record.force_at.is_some()
            && answer
                .record
                .state
                .completion()
                .is_some_and(|completion| completion.outcome().is_some())
        {
            answer.force_note = self.unforceable(&input.arn).await;
        }
        Ok(answer)
    }

    /// One stop of a StopExecutions batch: as [`Stopper::stop`], without the force note.
    pub(crate) async fn stop_in_batch(
        self: &Arc<Self>,
        input: &StopInput,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        // An account or region this service does not serve: refused before anything is
        // recorded or sent.
        self.estate.check(&input.arn)?;
        let request = input.request();
        if let Some(record) = self.cached(&request.key) {
            return self.existing(record, &request);
        }
        match self.claim(&request).await? {
            Claim::Acquired(record) => self.carry_out_detached(record).await,
            Claim::Existing(record)
                if record.state.is_pending() && record.fingerprint == request.fingerprint =>
            {
                self.wait_for(record, &request.proof, deadline).await
            }
            Claim::Existing(record) => {
                self.remember(&record);
                self.existing(record, &request)
            }
        }
    }

    /// Claims a request: records it when new, takes over a pending record of the same request
    /// whose lease ran out, or returns the record that stands.
    async fn claim(&self, request: &NewStopRequest) -> Result<Claim, Error> {
        let (owner, lease) = (&self.worker, self.settings.lease);
        // Twice at most: a record can vanish between the insert and the read only by being
        // swept after its expiry, and then the next insert succeeds.
        for _ in 0..2 {
            let inserted = self
                .store
                .insert_new(request, owner, lease, self.settings.retention)
                .await?;
            if let Some(record) = inserted {
                return Ok(Claim::Acquired(record));
            }
            let Some(existing) = self.store.get(&request.key).await? else {
                continue;
            };
            if existing.state.is_pending() && existing.fingerprint == request.fingerprint {
                // Conditional on the lease having run out; a live lease is left alone.
                let by = Some(&request.proof);
                if let Some(record) = self.store.take_over(&request.key, owner, lease, by).await? {
                    self.metrics.takeover("caller");
                    return Ok(Claim::Acquired(record));
                }
            }
            return Ok(Claim::Existing(existing));
        }
        Err(StoreError::Unavailable(sqlx::Error::RowNotFound).into())
    }

    /// Answers `request` from a record that stands: a replay, or a reused key (audited with
    /// how this request's caller was proven).
    fn existing(&self, record: StopRecord, request: &NewStopRequest) -> Result<Answer, Error> {
        let by = &request.proof;
        if record.fingerprint != request.fingerprint {
            self.audit(&record, AuditKind::KeyReused, by);
            return Err(Error::IdempotencyKeyReused {
                differs: differences(&record, request),
            });
        }
        self.audit(&record, AuditKind::Replayed, by);
        Ok(Answer {
            record,
            replayed: true,
            force_note: String::new(),
        })
    }

    /// GetStopRequest: the caller's own record.
    pub(crate) async fn get(
        &self,
        principal: &Principal,
        token: &ClientToken,
    ) -> Result<StopRecord, Error> {
        let key = RequestKey {
            principal: principal.as_str().to_string(),
            token: token.as_str().to_string(),
        };
        self.store
            .get(&key)
            .await?
            .ok_or(Error::StopRequestNotFound)
    }

    /// A permit to run one stop of a batch in the execution's (account, region), waiting for
    /// one when all are in use.
    pub(crate) async fn batch_stop_permit(
        &self,
        arn: &ExecutionArn,
    ) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let scope = (arn.account().to_string(), arn.region().to_string());
        let permits = self
            .batch_stops
            .entry(scope)
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(BATCH_STOPS_AT_ONCE)))
            .clone();
        permits.acquire_owned().await.ok()
    }

    /// The callbacks the force of `record` released (none without `force_after`).
    pub(crate) async fn releases(&self, record: &StopRecord) -> Result<Vec<Release>, Error> {
        if record.force_at.is_none() {
            return Ok(Vec::new());
        }
        Ok(self.store.releases(&record.key).await?)
    }

    /// Finishes pending requests whose owner is gone (lease run out), without any retry from
    /// their callers. Returns how many it completed.
    pub(crate) async fn complete_abandoned(&self, limit: u32) -> Result<usize, Error> {
        let mut completed = 0;
        let expired = self.store.expired_leases(limit).await?;
        self.metrics.set_leases_expired(expired.len());
        for key in expired {
            let Some(record) = self
                .store
                .take_over(&key, &self.worker, self.settings.lease, None)
                .await?
            else {
                continue; // someone else took it first
            };
            self.metrics.takeover("completer");
            tracing::info!(principal = %key.principal, token = %key.token, epoch = record.epoch, "completing an abandoned stop request");
            match self.carry_out(record).await {
                Ok(_) => completed += 1,
                Err(error) => {
                    tracing::warn!(principal = %key.principal, token = %key.token, %error, "abandoned stop request still not complete");
                }
            }
        }
        Ok(completed)
    }

    /// Queues `kind` about `record`, in a call of a caller proven `by`.
    fn audit(&self, record: &StopRecord, kind: AuditKind, by: &Proof) {
        self.audit
            .record(AuditEvent::about(record, kind, by, &self.worker));
    }

    fn wake_waiters(&self, key: &RequestKey) {
        if let Some((_, notify)) = self.inflight.remove(key) {
            notify.notify_waiters();
        }
    }

    /// [`Stopper::carry_out`] on a task of its own: once claimed, a stop runs to its recorded
    /// end even when the caller goes away or the server's request timeout ends the call (else
    /// it would stay pending, leased to this worker, until the completer took it over).
    async fn carry_out_detached(self: &Arc<Self>, record: StopRecord) -> Result<Answer, Error> {
        let this = Arc::clone(self);
        // Still part of the call's trace, even if its caller goes away before it ends.
        let task = self.tasks.spawn(
            async move {
                let result = this.carry_out(record).await;
                if let Err(error) = &result {
                    // The caller, if still there, gets the error too.
                    tracing::debug!(%error, "a stop ended without an outcome");
                }
                result
            }
            .instrument(tracing::Span::current()),
        );
        task.await
            .map_err(|e| Error::Internal(format!("the stop task failed: {e}")))?
    }

    /// Carries out a request whose lease this worker holds, at `record.epoch`.
    async fn carry_out(&self, record: StopRecord) -> Result<Answer, Error> {
        let key = record.key.clone();
        let result = self.carry_out_inner(record).await;
        self.wake_waiters(&key);
        result
    }

    async fn carry_out_inner(&self, record: StopRecord) -> Result<Answer, Error> {
        hooks::abandon_if_set(hooks::STOP_AFTER_CLAIM)?;
        let arn = &record.pipeline_execution_arn;
        let completion = match self.estate.client(arn).await {
            Ok(sagemaker) => {
                self.ask_sagemaker(&sagemaker, arn, &record.upstream_token)
                    .await
            }
            // The accounts file changed since the claim: no longer served.
            Err(error) => Err(Failure::NotRecorded(error)),
        };
        let completion = match completion {
            Ok(completion) => completion,
            Err(Failure::Transient(error)) => {
                let released = self
                    .store
                    .release(&record.key, record.epoch, &self.worker, &error.to_string())
                    .await;
                if let Err(store_error) = released {
                    tracing::warn!(%store_error, "could not release a lease after a transient failure; it will run out");
                }
                return Err(error.into());
            }
            Err(Failure::NotRecorded(error)) => {
                // Neither transient (retrying at once changes nothing; the completer must not
                // keep trying) nor final (the cause may go away): the record goes, so that a
                // retry with the same token starts afresh.
                let discarded = self
                    .store
                    .discard(&record.key, record.epoch, &self.worker, error.reason())
                    .await;
                if let Err(store_error) = discarded {
                    tracing::warn!(%store_error, "could not discard a stop request; its lease will run out and it will be tried again");
                }
                return Err(error);
            }
        };
        hooks::abandon_if_set(hooks::STOP_AFTER_UPSTREAM)?;
        let done = self
            .store
            .complete(&record.key, record.epoch, &self.worker, &completion)
            .await?;
        let answer = match done {
            Some(record) => {
                self.remember(&record);
                Answer {
                    record,
                    replayed: false,
                    force_note: String::new(),
                }
            }
            None => {
                // Fenced: a newer epoch holds (or finished) the request. Its answer stands.
                tracing::info!(
                    epoch = record.epoch,
                    "lost the lease before recording; reading the newer outcome"
                );
                match self.store.get(&record.key).await? {
                    Some(newer) if !newer.state.is_pending() => Answer {
                        record: newer,
                        replayed: true,
                        force_note: String::new(),
                    },
                    _ => {
                        return Err(Error::RequestInProgress {
                            retry_after: Duration::from_secs(1),
                        });
                    }
                }
            }
        };
        hooks::abandon_if_set(hooks::STOP_AFTER_RECORD)?;
        Ok(answer)
    }

    /// Asks SageMaker to stop, and tells what came of it: a completion to record, or why not.
    async fn ask_sagemaker(
        &self,
        sagemaker: &SageMaker,
        arn: &ExecutionArn,
        upstream_token: &str,
    ) -> Result<Completion, Failure> {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = sagemaker.stop_execution(arn, upstream_token).await;
            match result {
                Ok(StopResult::Requested) => {
                    return Ok(outcome(
                        StopOutcome::StopRequested,
                        ExecutionStatus::Stopping,
                    ));
                }
                Ok(StopResult::NotFound) => {
                    return Ok(refused(RecordedError::ExecutionNotFound, None));
                }
                Ok(StopResult::NotExecuting) => match sagemaker
                    .execution_status(arn)
                    .await
                    .map_err(Failure::from)?
                {
                    None => return Ok(refused(RecordedError::ExecutionNotFound, None)),
                    Some(ExecutionStatus::Stopping) => {
                        return Ok(outcome(
                            StopOutcome::AlreadyStopping,
                            ExecutionStatus::Stopping,
                        ));
                    }
                    Some(ExecutionStatus::Stopped) => {
                        return Ok(outcome(
                            StopOutcome::AlreadyStopped,
                            ExecutionStatus::Stopped,
                        ));
                    }
                    Some(status) if status.is_terminal_unstopped() => {
                        return Ok(refused(
                            RecordedError::ExecutionAlreadyTerminal,
                            Some(status),
                        ));
                    }
                    // Executing again (retried meanwhile) or a status we do not know: try the
                    // stop again, within the same bound as conflicts.
                    Some(status) if tries < CONFLICT_TRIES => {
                        tracing::info!(execution = %arn, status = status.as_str(), "stop refused but the execution is not finished; trying again");
                    }
                    // A status this version does not know, which SageMaker will not stop: say
                    // so plainly rather than have callers retry forever.
                    Some(ExecutionStatus::Unknown(status)) => {
                        return Err(Failure::NotRecorded(Error::ExecutionStatusUnknown {
                            status,
                        }));
                    }
                    Some(status) => {
                        return Err(Failure::Transient(UpstreamError::Unavailable(format!(
                            "SageMaker refuses to stop an execution it reports as {}",
                            status.as_str()
                        ))));
                    }
                },
                Err(UpstreamError::Conflict(message)) if tries < CONFLICT_TRIES => {
                    tracing::debug!(execution = %arn, %message, tries, "ConflictException; trying again");
                    self.metrics.upstream_retry("StopPipelineExecution");
                }
                Err(other) => return Err(Failure::from(other)),
            }
            tokio::time::sleep(jittered(CONFLICT_PAUSE, 0.2)).await;
        }
    }

    /// Waits for another attempt at the same request to finish, taking over if its owner
    /// dies; bounded by the caller's deadline and `duplicate_wait`. `by`: how the waiting
    /// caller was proven.
    async fn wait_for(
        self: &Arc<Self>,
        mut record: StopRecord,
        by: &Proof,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        let limit = Instant::now() + self.settings.duplicate_wait;
        // Answer a little before the caller's own deadline, so the answer reaches it.
        let limit = match deadline {
            Some(d) => limit.min(d.checked_sub(Duration::from_millis(50)).unwrap_or(d)),
            None => limit,
        };
        let key = record.key.clone();
        // The owner may be another replica, which never wakes this process's waiters: the
        // guard removes the entry when the last local waiter leaves, however it leaves (with
        // an answer, an error, or dropped because its caller went away).
        let mut waiting = Waiting::new(&self.inflight, key.clone());
        loop {
            let notify = waiting.refresh();
            let notified = notify.notified();
            tokio::pin!(notified);
            // Register before reading, so a completion in between is not missed.
            notified.as_mut().enable();
            match self.store.get(&key).await? {
                Some(current) if !current.state.is_pending() => {
                    self.metrics.duplicate("answered");
                    self.remember(&current);
                    self.audit(&current, AuditKind::Replayed, by);
                    return Ok(Answer {
                        record: current,
                        replayed: true,
                        force_note: String::new(),
                    });
                }
                Some(current) => {
                    // The owner may be gone. The take-over is conditional in the database, so
                    // the local clock only decides when trying is worth a write.
                    let lease_over = current
                        .lease_expires_at
                        .is_none_or(|t| t <= chrono::Utc::now());
                    if lease_over
                        && let Some(taken) = self
                            .store
                            .take_over(&key, &self.worker, self.settings.lease, Some(by))
                            .await?
                    {
                        drop(waiting);
                        self.metrics.duplicate("took_over");
                        self.metrics.takeover("caller");
                        return self.carry_out_detached(taken).await;
                    }
                    record = current;
                }
                None => {
                    self.metrics.duplicate("aborted");
                    return Err(Error::RequestInProgress {
                        retry_after: Duration::from_millis(100),
                    });
                }
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(WAIT_POLL) => {}
                () = tokio::time::sleep_until(limit) => {
                    tracing::debug!(epoch = record.epoch, "a duplicate gave up waiting");
                    self.metrics.duplicate("aborted");
                    return Err(Error::RequestInProgress {
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        }
    }

    /// Keys with waiters in this process (for tests).
    #[cfg(test)]
    fn inflight_keys(&self) -> usize {
        self.inflight.len()
    }
}

/// A duplicate's registration as a waiter on its key's in-flight entry. Dropping it (on any
/// exit, a cancelled call included) removes the entry if no other local waiter holds it.
struct Waiting<'a> {
    inflight: &'a DashMap<RequestKey, Arc<Notify>>,
    key: RequestKey,
    notify: Option<Arc<Notify>>,
}

impl<'a> Waiting<'a> {
    fn new(inflight: &'a DashMap<RequestKey, Arc<Notify>>, key: RequestKey) -> Self {
        Self {
            inflight,
            key,
            notify: None,
        }
    }

    /// The key's current notifier (the owner removes the entry when it finishes, and a later
    /// owner may make a new one), held until the next refresh or the drop.
    fn refresh(&mut self) -> Arc<Notify> {
        let notify = self
            .inflight
            .entry(self.key.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        self.notify = Some(notify.clone());
        notify
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        drop(self.notify.take());
        self.inflight
            .remove_if(&self.key, |_, notify| Arc::strong_count(notify) == 1);
    }
}

fn outcome(outcome: StopOutcome, status: ExecutionStatus) -> Completion {
    Completion::Stopped { outcome, status }
}

fn refused(error: RecordedError, status: Option<ExecutionStatus>) -> Completion {
    Completion::Refused { error, status }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AuthMethod;

    #[tokio::test]
    async fn a_duplicate_whose_caller_goes_away_leaves_no_in_flight_entry() {
        let dir = tempfile::tempdir().unwrap();
        let url = dir.path().join("stops.db").display().to_string();
        let store = crate::store::connect(&crate::config::DatabaseArgs::new(url).store())
            .await
            .unwrap();
        store.migrate().await.unwrap();
        let hour = Duration::from_secs(3600);
        let stopper = Arc::new(Stopper::new(
            store.clone(),
            // Never called: the request is another replica's, under a live lease.
            Arc::new(
                Estate::load(
                    crate::estate::EstateSettings {
                        endpoint: Some("http://127.0.0.1:9".into()),
                        sts_endpoint: Some("http://127.0.0.1:9".into()),
                        sqs_endpoint: None,
                        static_credentials: Some(("AKIDTEST".into(), "secret".into())),
                        region: Some("us-east-1".into()),
                        accounts_file: None,
                        max_connections_per_endpoint: 4,
                    },
                    crate::sagemaker::CallPolicy::default(),
                    Arc::default(),
                )
                .await
                .unwrap(),
            ),
            StopSettings {
                lease: hour,
                retention: hour,
                duplicate_wait: hour,
            },
            "this-replica".into(),
            Arc::default(),
        ));
        let input = StopInput {
            principal: Principal::anonymous(),
            proof: AuthMethod::Anonymous.into(),
            arn: arn(),
            token: ClientToken::parse("held-elsewhere").unwrap(),
            reason: Reason::default(),
            force_after: None,
        };
        let held = store
            .insert_new(&input.request(), "other-replica", hour, hour)
            .await
            .unwrap();
        assert!(held.is_some());

        let duplicate = tokio::spawn({
            let stopper = stopper.clone();
            let input = input.clone();
            async move { stopper.stop(&input, None).await }
        });
        for _ in 0..500 {
            if stopper.inflight_keys() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(stopper.inflight_keys(), 1, "the duplicate waits");
        // The caller goes away: its call's future is dropped mid-wait.
        duplicate.abort();
        assert!(duplicate.await.unwrap_err().is_cancelled());
        assert_eq!(stopper.inflight_keys(), 0);
    }

    const ARN: &str = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";

    fn arn() -> ExecutionArn {
        ExecutionArn::parse(ARN).unwrap()
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let maintenance = || Reason::parse("maintenance").unwrap();
        let a = fingerprint(&arn(), &maintenance(), None);
        assert_eq!(a, fingerprint(&arn(), &maintenance(), None));
        assert_ne!(
            a,
            fingerprint(&arn(), &Reason::parse("other").unwrap(), None)
        );
        let other_arn = ExecutionArn::parse(&ARN.replace("abcdefghijkl", "zzzzzzzzzzzz")).unwrap();
        assert_ne!(a, fingerprint(&other_arn, &maintenance(), None));
        assert_eq!(a.len(), 64);
        // force_after is part of the request; none is the fingerprint it always was.
        let forced = fingerprint(&arn(), &maintenance(), Some(Duration::from_secs(60)));
        assert_ne!(a, forced);
        assert_ne!(
            forced,
            fingerprint(&arn(), &maintenance(), Some(Duration::ZERO))
        );
        assert_eq!(a, digest(&[METHOD, ARN, "maintenance"]));
    }

    #[test]
    fn how_the_caller_was_proven_is_recorded_but_keys_nothing() {
        let by = |method: AuthMethod| {
            StopInput {
                principal: Principal::new("spiffe://example.org/billing"),
                proof: method.into(),
                arn: arn(),
                token: ClientToken::parse("retry-me").unwrap(),
                reason: Reason::default(),
                force_after: None,
            }
            .request()
        };
        let (token, mtls) = (by(AuthMethod::Token), by(AuthMethod::Mtls));
        assert_eq!(
            (token.proof.method, mtls.proof.method),
            (AuthMethod::Token, AuthMethod::Mtls)
        );
        assert_eq!(token.key, mtls.key);
        assert_eq!(token.fingerprint, mtls.fingerprint);
        assert_eq!(token.upstream_token, mtls.upstream_token);
    }

    #[test]
    fn upstream_tokens_come_from_the_key_and_fit_sagemaker() {
        let token = ClientToken::parse("retry-me").unwrap();
        let fp = fingerprint(&arn(), &Reason::default(), None);
        let alice = upstream_token(&Principal::new("alice"), &token, &fp);
        assert_eq!(alice, upstream_token(&Principal::new("alice"), &token, &fp));
        assert_ne!(alice, upstream_token(&Principal::new("bob"), &token, &fp));
        let other_request = fingerprint(&arn(), &Reason::parse("other").unwrap(), None);
        assert_ne!(
            alice,
            upstream_token(&Principal::new("alice"), &token, &other_request)
        );
        // Length-prefixed parts: "ab"+"c" and "a"+"bc" differ.
        assert_ne!(
            upstream_token(
                &Principal::new("ab"),
                &ClientToken::parse("c").unwrap(),
                &fp
            ),
            upstream_token(
                &Principal::new("a"),
                &ClientToken::parse("bc").unwrap(),
                &fp
            )
        );
        assert!((32..=128).contains(&alice.len()));
    }
}
