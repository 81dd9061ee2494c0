//! StopExecution and GetStopRequest: the idempotency contract of DESIGN.md, over the store and
//! the SageMaker module.
//!
//! A request is keyed by (principal, client token) and fingerprinted (method, ARN, reason).
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

use dashmap::DashMap;
use sha2::{Digest as _, Sha256};
use tokio::{sync::Notify, time::Instant};

use crate::{
    audit::AuditLog,
    domain::{ClientToken, ExecutionArn, ExecutionStatus, Principal, Reason, StopOutcome},
    error::Error,
    hooks,
    jitter::jittered,
    sagemaker::{SageMaker, StopResult, UpstreamError},
    store::{
        AuditEvent, Claim, Completion, NewStopRequest, RecordState, RequestKey, StopRecord, Store,
    },
};

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
    pub(crate) arn: ExecutionArn,
    pub(crate) token: ClientToken,
    pub(crate) reason: Reason,
}

/// A completed record and whether it answered an earlier request.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) record: StopRecord,
    pub(crate) replayed: bool,
}

/// Carries out stop requests.
#[derive(Debug)]
pub(crate) struct Stopper {
    store: Arc<dyn Store>,
    sagemaker: SageMaker,
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
}

/// SHA-256 of the parts, each length-prefixed so that no two lists of parts collide; hex.
fn digest(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// The request's identity: the same key with another fingerprint is a reused key.
pub(crate) fn fingerprint(arn: &ExecutionArn, reason: &Reason) -> String {
    digest(&[METHOD, arn.as_str(), reason.as_str()])
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
        sagemaker: SageMaker,
        settings: StopSettings,
        worker: String,
    ) -> Self {
        Self {
            audit: AuditLog::start(store.clone()),
            store,
            sagemaker,
            settings,
            worker,
            inflight: DashMap::new(),
            completed: quick_cache::sync::Cache::new(REPLAY_CACHE),
            tasks: TaskTracker::new(),
        }
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
        if record.state == RecordState::Completed {
            self.completed.insert(record.key.clone(), record.clone());
        }
    }

    /// StopExecution. `deadline` is the caller's, when it sent one.
    pub(crate) async fn stop(
        self: &Arc<Self>,
        input: &StopInput,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        let fingerprint = fingerprint(&input.arn, &input.reason);
        let request = NewStopRequest {
            key: RequestKey {
                principal: input.principal.as_str().to_string(),
                token: input.token.as_str().to_string(),
            },
            upstream_token: upstream_token(&input.principal, &input.token, &fingerprint),
            fingerprint,
            method: METHOD.to_string(),
            pipeline_execution_arn: input.arn.as_str().to_string(),
            reason: input.reason.as_str().to_string(),
        };
        if let Some(record) = self.cached(&request.key) {
            return self.existing(record, &request.fingerprint);
        }
        let claim = self
            .store
            .claim(
                &request,
                &self.worker,
                self.settings.lease,
                self.settings.retention,
            )
            .await?;
        match claim {
            Claim::Acquired(record) => self.carry_out_detached(record).await,
            Claim::Existing(record)
                if record.state == RecordState::Pending
                    && record.fingerprint == request.fingerprint =>
            {
                self.wait_for(record, deadline).await
            }
            Claim::Existing(record) => {
                self.remember(&record);
                self.existing(record, &request.fingerprint)
            }
        }
    }

    /// Answers from a record that stands: a replay, or a reused key.
    fn existing(&self, record: StopRecord, fingerprint: &str) -> Result<Answer, Error> {
        if record.fingerprint != fingerprint {
            self.audit(&record, "key_reused");
            return Err(Error::IdempotencyKeyReused);
        }
        self.audit(&record, "replayed");
        Ok(Answer {
            record,
            replayed: true,
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

    /// Finishes pending requests whose owner is gone (lease run out), without any retry from
    /// their callers. Returns how many it completed.
    pub(crate) async fn complete_abandoned(&self, limit: u32) -> Result<usize, Error> {
        let mut completed = 0;
        for key in self.store.expired_leases(limit).await? {
            let Some(record) = self
                .store
                .take_over(&key, &self.worker, self.settings.lease)
                .await?
            else {
                continue; // someone else took it first
            };
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

    /// Deletes up to `batch` expired records; returns how many.
    pub(crate) async fn delete_expired(&self, batch: u32) -> Result<u64, Error> {
        Ok(self.store.delete_expired(batch).await?)
    }

    fn audit(&self, record: &StopRecord, event: &str) {
        self.audit
            .record(AuditEvent::about(record, event, &self.worker));
    }

    fn notifier(&self, key: &RequestKey) -> Arc<Notify> {
        self.inflight
            .entry(key.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone()
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
        let task = self.tasks.spawn(async move {
            let result = this.carry_out(record).await;
            if let Err(error) = &result {
                // The caller, if still there, gets the error too.
                tracing::debug!(%error, "a stop ended without an outcome");
            }
            result
        });
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
        let arn = ExecutionArn::parse(&record.pipeline_execution_arn)
            .map_err(|_| Error::Internal("a recorded ARN no longer parses".into()))?;
        let completion = match self.ask_sagemaker(&arn, &record.upstream_token).await {
            Ok(completion) => completion,
            Err(error) => {
                let released = self
                    .store
                    .release(&record.key, record.epoch, &self.worker, &error.to_string())
                    .await;
                if let Err(store_error) = released {
                    tracing::warn!(%store_error, "could not release a lease after a transient failure; it will run out");
                }
                return Err(error.into());
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
                }
            }
            None => {
                // Fenced: a newer epoch holds (or finished) the request. Its answer stands.
                tracing::info!(
                    epoch = record.epoch,
                    "lost the lease before recording; reading the newer outcome"
                );
                match self.store.get(&record.key).await? {
                    Some(newer) if newer.state == RecordState::Completed => Answer {
                        record: newer,
                        replayed: true,
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

    /// Asks SageMaker to stop, and tells what came of it. Only transient failures are errors.
    async fn ask_sagemaker(
        &self,
        arn: &ExecutionArn,
        upstream_token: &str,
    ) -> Result<Completion, UpstreamError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let result = self.sagemaker.stop_execution(arn, upstream_token).await;
            match result {
                Ok(StopResult::Requested) => {
                    return Ok(outcome(
                        StopOutcome::StopRequested,
                        ExecutionStatus::Stopping,
                    ));
                }
                Ok(StopResult::NotFound) => return Ok(error("EXECUTION_NOT_FOUND", None)),
                Ok(StopResult::NotExecuting) => match self.sagemaker.execution_status(arn).await? {
                    None => return Ok(error("EXECUTION_NOT_FOUND", None)),
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
                        return Ok(error("EXECUTION_ALREADY_TERMINAL", Some(status)));
                    }
                    // Executing again (retried meanwhile) or a status we do not know: try the
                    // stop again, within the same bound as conflicts.
                    Some(status) if tries < CONFLICT_TRIES => {
                        tracing::info!(execution = %arn, status = status.as_str(), "stop refused but the execution is not finished; trying again");
                    }
                    Some(status) => {
                        return Err(UpstreamError::Unavailable(format!(
                            "SageMaker refuses to stop an execution it reports as {}",
                            status.as_str()
                        )));
                    }
                },
                Err(UpstreamError::Conflict(message)) if tries < CONFLICT_TRIES => {
                    tracing::debug!(execution = %arn, %message, tries, "ConflictException; trying again");
                }
                Err(other) => return Err(other),
            }
            tokio::time::sleep(jittered(CONFLICT_PAUSE, 0.2)).await;
        }
    }

    /// Waits for another attempt at the same request to finish, taking over if its owner
    /// dies; bounded by the caller's deadline and `duplicate_wait`.
    async fn wait_for(
        self: &Arc<Self>,
        record: StopRecord,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        let key = record.key.clone();
        let result = self.wait_for_inner(record, deadline).await;
        // The owner may be another replica, which never wakes this process's waiters: the
        // last waiter to leave removes the entry, so waiting leaves nothing behind.
        self.inflight
            .remove_if(&key, |_, notify| Arc::strong_count(notify) == 1);
        result
    }

    async fn wait_for_inner(
        self: &Arc<Self>,
        mut record: StopRecord,
        deadline: Option<Instant>,
    ) -> Result<Answer, Error> {
        let limit = Instant::now() + self.settings.duplicate_wait;
        // Answer a little before the caller's own deadline, so the answer reaches it.
        let limit = match deadline {
            Some(d) => limit.min(d.checked_sub(Duration::from_millis(50)).unwrap_or(d)),
            None => limit,
        };
        let key = record.key.clone();
        loop {
            let notify = self.notifier(&key);
            let notified = notify.notified();
            tokio::pin!(notified);
            // Register before reading, so a completion in between is not missed.
            notified.as_mut().enable();
            match self.store.get(&key).await? {
                Some(current) if current.state == RecordState::Completed => {
                    self.remember(&current);
                    self.audit(&current, "replayed");
                    return Ok(Answer {
                        record: current,
                        replayed: true,
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
                            .take_over(&key, &self.worker, self.settings.lease)
                            .await?
                    {
                        return self.carry_out_detached(taken).await;
                    }
                    record = current;
                }
                None => {
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
                    return Err(Error::RequestInProgress {
                        retry_after: Duration::from_secs(1),
                    });
                }
            }
        }
    }
}

fn outcome(outcome: StopOutcome, status: ExecutionStatus) -> Completion {
    Completion {
        outcome: Some(outcome.as_str().to_string()),
        error_code: None,
        execution_status: Some(status.as_str().to_string()),
    }
}

fn error(code: &str, status: Option<ExecutionStatus>) -> Completion {
    Completion {
        outcome: None,
        error_code: Some(code.to_string()),
        execution_status: status.map(|s| s.as_str().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";

    fn arn() -> ExecutionArn {
        ExecutionArn::parse(ARN).unwrap()
    }

    #[test]
    fn fingerprints_tell_requests_apart() {
        let a = fingerprint(&arn(), &Reason::parse("maintenance").unwrap());
        assert_eq!(
            a,
            fingerprint(&arn(), &Reason::parse("maintenance").unwrap())
        );
        assert_ne!(a, fingerprint(&arn(), &Reason::parse("other").unwrap()));
        let other_arn = ExecutionArn::parse(&ARN.replace("abcdefghijkl", "zzzzzzzzzzzz")).unwrap();
        assert_ne!(
            a,
            fingerprint(&other_arn, &Reason::parse("maintenance").unwrap())
        );
        assert_eq!(a.len(), 64);
    }

    #[test]
    fn upstream_tokens_come_from_the_key_and_fit_sagemaker() {
        let token = ClientToken::parse("retry-me").unwrap();
        let fp = fingerprint(&arn(), &Reason::default());
        let alice = upstream_token(&Principal::new("alice"), &token, &fp);
        assert_eq!(alice, upstream_token(&Principal::new("alice"), &token, &fp));
        assert_ne!(alice, upstream_token(&Principal::new("bob"), &token, &fp));
        let other_request = fingerprint(&arn(), &Reason::parse("other").unwrap());
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
