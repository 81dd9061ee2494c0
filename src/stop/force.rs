//! Forcing a stuck stop (`force_after`): when the deadline of a stop comes and Callback steps
//! still hold the execution in Stopping, the service answers each with
//! SendPipelineExecutionStepFailure. Any replica carries a due force out, under a claim (a new
//! epoch and a lease) so that two never both do it; each release is recorded, also one an
//! earlier attempt made before dying. Lambda steps cannot be forced: the notes say so.

use crate::{
    domain::{ExecutionArn, ExecutionStatus, StepDetail, StepStatus},
    error::Error,
    holding, hooks,
    sagemaker::StepAnswer,
    store::StopRecord,
};

use super::{Stopper, digest};

/// What a forced stop tells a Callback step: `stopped by pipeline-control: <reason>`, cut to
/// SageMaker's 256 characters.
fn failure_reason(reason: &str) -> String {
    let text = if reason.is_empty() {
        "stopped by pipeline-control".to_string()
    } else {
        format!("stopped by pipeline-control: {reason}")
    };
    text.chars().take(256).collect()
}

impl Stopper {
    /// What a forced stop of `arn` will not be able to force, as things stand: its running
    /// Lambda steps (empty when there are none, or SageMaker cannot say now).
    pub(crate) async fn unforceable(&self, arn: &ExecutionArn) -> String {
        let Ok(sagemaker) = self.estate.client(arn).await else {
            return String::new();
        };
        let Ok(Some(snapshot)) = sagemaker.execution(arn).await else {
            return String::new();
        };
        let notes: Vec<String> = snapshot
            .steps
            .iter()
            .filter(|step| step.status.is_running())
            .filter_map(|step| match &step.detail {
                StepDetail::Lambda { function_arn } => {
                    Some(holding::lambda(&step.name, function_arn, step.start_time))
                }
                _ => None,
            })
            .collect();
        notes.join("; ")
    }

    /// Carries out the force deadlines that have come: claims each (a new epoch and a lease,
    /// so two replicas never both do it and a worker that lost the record is fenced off),
    /// answers the Callback steps that still hold the execution, and records each release and
    /// the end. Returns how many it carried out; one that fails is retried once its lease runs
    /// out (with the same upstream tokens, so SageMaker sees one answer per callback).
    pub(crate) async fn force_due(&self, limit: u32) -> Result<usize, Error> {
        let mut done = 0;
        for key in self.store.due_forces(limit).await? {
            let Some(record) = self
                .store
                .claim_force(&key, &self.worker, self.settings.lease)
                .await?
            else {
                continue; // another replica has it
            };
            match self.force(&record).await {
                Ok(()) => done += 1,
                // Worth another try once the lease runs out: SageMaker or the database were
                // unavailable, or the work was abandoned (as a crash would).
                Err(
                    error @ (Error::UpstreamUnavailable { .. }
                    | Error::StoreUnavailable(_)
                    | Error::Abandoned(_)
                    | Error::ShuttingDown),
                ) => {
                    tracing::warn!(principal = %key.principal, token = %key.token, %error, "a force deadline was not carried out; retried once its lease runs out");
                }
                // Lasting (credentials refused, the account no longer served, a refusal this
                // service does not expect): trying again would not help, so it ends with a note.
                Err(error) => {
                    tracing::warn!(principal = %key.principal, token = %key.token, %error, "a force deadline could not be carried out");
                    let note = format!("not forced: {error}");
                    if self.finish(&record, Some(&note)).await.is_ok() {
                        done += 1;
                    }
                }
            }
        }
        Ok(done)
    }

    async fn force(&self, record: &StopRecord) -> Result<(), Error> {
        let fenced = || Error::Internal("another worker took the force over".into());
        let arn = &record.pipeline_execution_arn;
        let sagemaker = self.estate.client(arn).await?;
        let mut notes = Vec::new();
        let failure = failure_reason(&record.reason);
        match sagemaker.execution(arn).await? {
            None => notes.push("the execution no longer exists".to_string()),
            Some(snapshot) => {
                // Released by an earlier attempt that did not live to record it: the step says
                // what it was told.
                for step in &snapshot.steps {
                    if let StepDetail::Callback { token, .. } = &step.detail
                        && step.status == StepStatus::Failed
                        && step.failure_reason == failure
                        && !self
                            .store
                            .record_release(
                                &record.key,
                                record.epoch,
                                &self.worker,
                                &step.name,
                                token,
                            )
                            .await?
                    {
                        return Err(fenced());
                    }
                }
                if snapshot.status != ExecutionStatus::Stopping {
                    // Stopped (or ended) by itself before the deadline: nothing to force.
                    return self.finish(record, None).await;
                }
                for step in snapshot.steps.iter().filter(|s| s.status.is_running()) {
                    match &step.detail {
                        StepDetail::Callback { token, .. } => {
                            let upstream =
                                digest(&[&record.key.principal, &record.key.token, token]);
                            let answer =
                                sagemaker.fail_step(arn, token, &failure, &upstream).await?;
                            hooks::abandon_if_set(hooks::FORCE_AFTER_RELEASE)?;
                            match answer {
                                StepAnswer::Answered => {
                                    let recorded = self
                                        .store
                                        .record_release(
                                            &record.key,
                                            record.epoch,
                                            &self.worker,
                                            &step.name,
                                            token,
                                        )
                                        .await?;
                                    if !recorded {
                                        return Err(fenced());
                                    }
                                }
                                StepAnswer::NotWaiting(why) => notes.push(format!(
                                    "the callback of step {} was not waiting any more ({why})",
                                    step.name
                                )),
                            }
                        }
                        StepDetail::Lambda { function_arn } => {
                            notes.push(holding::lambda(&step.name, function_arn, step.start_time));
                        }
                        _ => {}
                    }
                }
            }
        }
        let note = (!notes.is_empty()).then(|| notes.join("; "));
        self.finish(record, note.as_deref()).await
    }

    /// Records the force carried out, if this worker still holds the record.
    async fn finish(&self, record: &StopRecord, note: Option<&str>) -> Result<(), Error> {
        if self
            .store
            .finish_force(&record.key, record.epoch, &self.worker, note)
            .await?
        {
            Ok(())
        } else {
            Err(Error::Internal("another worker took the force over".into()))
        }
    }
}
