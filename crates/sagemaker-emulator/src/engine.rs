//! The execution state machine: how an execution and its steps move, in emulated time.
//!
//! Nothing here runs in the background. An execution is advanced to "now" whenever it is
//! looked at or acted on: every step completion due by then is applied in time order, at its
//! exact emulated time, and the steps it unblocks start at that same time. So the times
//! reported are exact whatever the time scale, and advancing in many small steps or in one
//! gives the same states at the same times. ([`ExecutionState::next_event`] says when
//! something is next due, for whoever must act on it then: the receivers of a Callback step's
//! queue, and the delivery of events.)
//!
//! A step is `Starting` for its `StartSeconds` (0 unless scripted: then it is `Starting` and
//! `Executing` at the same moment), then `Executing`: only then does a Callback step send its
//! message and a Lambda step invoke its function.
//!
//! Every status change, of the execution or of a step, is recorded in
//! [`ExecutionState::transitions`] with its emulated time and the step as it was then, in the
//! order they happened: what SageMaker's EventBridge events report (see `events`).
//!
//! The stop semantics follow SageMaker's: a stop moves an Executing execution to Stopping;
//! steps not yet started never start, and a step still Starting is Stopped at once; a
//! Callback step stays Stopping until its callback is answered, and either answer ends it
//! (SendPipelineExecutionStepFailure leaves the step Failed with its reason, yet the
//! execution ends Stopped, as SageMaker documents); a Lambda step runs on until its function
//! finishes (Stopped) or times out (Failed); other steps stop after their `StopSeconds`. The
//! execution is Stopped once nothing runs, or Failed if a step that ran on (a Lambda step)
//! failed meanwhile.

use serde_json::{Value, json};

use super::{
    clock::{Ids, VTime},
    definition::{Bindings, PipelineSpec, StepKind, StepSpec, resolve},
};

/// SageMaker's PipelineExecutionStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ExecutionStatus {
    Executing,
    Stopping,
    Stopped,
    Failed,
    Succeeded,
}

impl ExecutionStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Executing => "Executing",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Failed => "Failed",
            Self::Succeeded => "Succeeded",
        }
    }
}

/// SageMaker's StepStatus.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepStatus {
    Starting,
    Executing,
    Stopping,
    Stopped,
    Failed,
    Succeeded,
}

impl StepStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "Starting",
            Self::Executing => "Executing",
            Self::Stopping => "Stopping",
            Self::Stopped => "Stopped",
            Self::Failed => "Failed",
            Self::Succeeded => "Succeeded",
        }
    }

    fn running(self) -> bool {
        matches!(self, Self::Starting | Self::Executing | Self::Stopping)
    }
}

/// A status change, at its emulated time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Transition {
    pub(crate) at: VTime,
    pub(crate) change: Change,
}

/// What changed status.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Change {
    /// The execution (`previous` is `None` when it starts).
    Execution {
        previous: Option<ExecutionStatus>,
        current: ExecutionStatus,
    },
    /// Step `index` of the definition, as it was right after the change (its `status` is the
    /// new one). `previous` is `None` when it first starts; a step retried after it failed or
    /// stopped starts again from that status.
    Step {
        index: usize,
        previous: Option<StepStatus>,
        run: Box<StepRun>,
    },
}

/// What happens when a running step's time comes.
#[derive(Debug, Clone, PartialEq)]
enum Ending {
    Succeed,
    Fail(String),
    Stop,
}

/// The live state of one step.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepRun {
    pub(crate) status: Option<StepStatus>,
    pub(crate) start_time: Option<VTime>,
    pub(crate) end_time: Option<VTime>,
    pub(crate) failure_reason: Option<String>,
    pub(crate) attempt_count: u32,
    pub(crate) callback_token: Option<String>,
    pub(crate) outputs: Vec<(String, String)>,
    /// Set on a Condition step once it has run.
    pub(crate) condition_outcome: Option<bool>,
    /// The job name (Training, Processing, ... steps), fixed at the first attempt.
    pub(crate) job_name: Option<String>,
    /// A Callback step's arguments with references resolved, as its messages carry them.
    arguments: Option<Value>,
    /// On a branch that was not taken: never runs.
    pub(crate) skipped: bool,
    /// While Starting: when it becomes Executing.
    begins_at: Option<VTime>,
    ends_at: Option<VTime>,
    ending: Option<Ending>,
    /// Ran on after a stop and failed (a Lambda step's timeout): the execution ends Failed,
    /// not Stopped.
    failed_while_stopping: bool,
    /// Set by a retry that made the step wait again: the status it had before.
    retried_from: Option<StepStatus>,
}

impl StepRun {
    /// The step as a transition records it: everything but the arguments its messages carry.
    fn snapshot(&self) -> Box<StepRun> {
        let mut run = self.clone();
        run.arguments = None;
        Box::new(run)
    }

    /// The step's `Metadata`, as ListPipelineExecutionSteps reports it (and the step events'
    /// `metadata`): its job (once it has one), callback, function or outcome. Job ARNs name
    /// `region` and `account`.
    pub(crate) fn metadata(&self, def: &StepSpec, region: &str, account: &str) -> Value {
        let resource = |kind: &str| {
            format!(
                "arn:aws:sagemaker:{region}:{account}:{kind}/{}",
                self.job_name.clone().unwrap_or_default()
            )
        };
        let outputs = || {
            Value::Array(
                self.outputs
                    .iter()
                    .map(|(name, value)| json!({ "Name": name, "Value": value }))
                    .collect(),
            )
        };
        match (&def.kind, def.step_type.as_str()) {
            // No job yet while the step is Starting.
            (StepKind::Job, _) if self.job_name.is_none() => json!({}),
            (StepKind::Callback { sqs_queue_url }, _) => {
                let mut callback = json!({
                    "SqsQueueUrl": sqs_queue_url,
                    "OutputParameters": outputs(),
                });
                // None while the step is Starting: it has sent nothing yet.
                if let Some(token) = &self.callback_token {
                    callback["CallbackToken"] = json!(token);
                }
                json!({ "Callback": callback })
            }
            (StepKind::Lambda { function_arn, .. }, _) => json!({ "Lambda": {
                "Arn": function_arn,
                "OutputParameters": outputs(),
            }}),
            (StepKind::Condition { .. }, _) => match self.condition_outcome {
                Some(outcome) => {
                    json!({ "Condition": { "Outcome": if outcome { "True" } else { "False" } } })
                }
                None => json!({ "Condition": {} }),
            },
            (StepKind::Fail { error_message }, _) => {
                json!({ "Fail": { "ErrorMessage": error_message } })
            }
            (StepKind::Job, "Training") => {
                json!({ "TrainingJob": { "Arn": resource("training-job") } })
            }
            (StepKind::Job, "Processing") => {
                json!({ "ProcessingJob": { "Arn": resource("processing-job") } })
            }
            (StepKind::Job, "Transform") => {
                json!({ "TransformJob": { "Arn": resource("transform-job") } })
            }
            (StepKind::Job, "Tuning") => {
                json!({ "TuningJob": { "Arn": resource("hyper-parameter-tuning-job") } })
            }
            (StepKind::Job, "AutoML") => {
                json!({ "AutoMLJob": { "Arn": resource("automl-job") } })
            }
            (StepKind::Job, "Model") => json!({ "Model": { "Arn": resource("model") } }),
            (StepKind::Job, "RegisterModel") => {
                json!({ "RegisterModel": { "Arn": resource("model-package") } })
            }
            (StepKind::Job, "EMR") => {
                json!({ "EMR": { "ClusterId": "j-EMULATOR", "StepId": self.job_name, "StepName": def.name } })
            }
            (StepKind::Job, "QualityCheck") => {
                json!({ "QualityCheck": { "CheckType": "DATA_QUALITY", "CheckJobArn": resource("processing-job") } })
            }
            (StepKind::Job, "ClarifyCheck") => {
                json!({ "ClarifyCheck": { "CheckType": "DATA_BIAS", "CheckJobArn": resource("processing-job") } })
            }
            _ => json!({}),
        }
    }
}

/// A message SageMaker would have sent to a Callback step's SQS queue.
#[derive(Debug, Clone)]
pub(crate) struct CallbackMessage {
    pub(crate) queue_url: String,
    pub(crate) step_name: String,
    pub(crate) sent_at: VTime,
    pub(crate) body: Value,
}

/// Why an action on an execution was refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refusal {
    /// The execution is not in a state that allows it (ValidationException).
    WrongStatus(String),
    /// The callback token names no waiting step (ValidationException).
    NotWaiting(String),
}

/// One execution's state.
#[derive(Debug, Clone)]
pub(crate) struct ExecutionState {
    pub(crate) arn: String,
    pub(crate) status: ExecutionStatus,
    pub(crate) failure_reason: Option<String>,
    pub(crate) creation_time: VTime,
    pub(crate) last_modified_time: VTime,
    pub(crate) steps: Vec<StepRun>,
    /// Callback messages, in the order they were sent.
    pub(crate) messages: Vec<CallbackMessage>,
    /// At most this many steps run at once (ParallelismConfiguration).
    pub(crate) max_parallel: Option<u32>,
    /// The execution id (for job names).
    execution_id: String,
    /// Parameter values: the definition's defaults overridden by StartPipelineExecution's.
    parameters: Vec<(String, String)>,
    /// Status changes not yet taken by the caller, oldest first (see `state::Locked`).
    pub(crate) transitions: Vec<Transition>,
}

/// The failure reason SageMaker gives an execution whose steps failed.
pub(crate) const STEP_FAILURE: &str = "Step failure: One or multiple steps failed.";

impl ExecutionState {
    /// A new execution, started at `now`: its first steps start at once.
    pub(crate) fn start(
        arn: String,
        execution_id: String,
        spec: &PipelineSpec,
        parameters: Vec<(String, String)>,
        max_parallel: Option<u32>,
        now: VTime,
        ids: &Ids,
    ) -> Self {
        let mut state = Self {
            parameters,
            arn,
            status: ExecutionStatus::Executing,
            failure_reason: None,
            creation_time: now,
            last_modified_time: now,
            steps: vec![StepRun::default(); spec.steps.len()],
            messages: Vec::new(),
            max_parallel,
            execution_id,
            transitions: vec![Transition {
                at: now,
                change: Change::Execution {
                    previous: None,
                    current: ExecutionStatus::Executing,
                },
            }],
        };
        state.settle(spec, now, ids);
        state.advance(spec, now, ids);
        state
    }

    /// Applies everything due by `now`, in time order: steps that stop Starting and steps
    /// that end.
    pub(crate) fn advance(&mut self, spec: &PipelineSpec, now: VTime, ids: &Ids) {
        loop {
            let next = self
                .steps
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s.status {
                    Some(StepStatus::Starting) => s.begins_at.map(|t| (i, t)),
                    Some(status) if status.running() => s.ends_at.map(|t| (i, t)),
                    _ => None,
                })
                .filter(|&(_, t)| t <= now)
                .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let Some((i, at)) = next else { return };
            if self.steps[i].status == Some(StepStatus::Starting) {
                self.begin_step(spec, i, at, ids);
            } else {
                self.end_step(spec, i, at);
                self.settle(spec, at, ids);
            }
        }
    }

    /// When something is next due (a step stops Starting or ends), if anything is.
    pub(crate) fn next_event(&self) -> Option<VTime> {
        self.steps
            .iter()
            .filter_map(|s| match s.status {
                Some(StepStatus::Starting) => s.begins_at,
                Some(status) if status.running() => s.ends_at,
                _ => None,
            })
            .min_by(f64::total_cmp)
    }

    /// The execution's status becomes `status` at `at`.
    fn set_status(&mut self, status: ExecutionStatus, at: VTime) {
        let previous = self.status;
        self.status = status;
        if previous != status {
            self.transitions.push(Transition {
                at,
                change: Change::Execution {
                    previous: Some(previous),
                    current: status,
                },
            });
        }
    }

    /// Records that step `i`, whose status was `previous`, changed at `at` to what it is now.
    fn record_step(&mut self, i: usize, previous: Option<StepStatus>, at: VTime) {
        let run = &self.steps[i];
        if run.status.is_none() || run.status == previous {
            return;
        }
        let run = run.snapshot();
        self.transitions.push(Transition {
            at,
            change: Change::Step {
                index: i,
                previous,
                run,
            },
        });
    }

    /// ParallelismConfiguration changed (UpdatePipelineExecution) at `now`: steps waiting for
    /// a free slot start at once if there is one now.
    pub(crate) fn set_max_parallel(
        &mut self,
        spec: &PipelineSpec,
        max_parallel: Option<u32>,
        now: VTime,
        ids: &Ids,
    ) {
        self.advance(spec, now, ids);
        self.max_parallel = max_parallel;
        self.settle(spec, now, ids);
        self.advance(spec, now, ids);
    }

    fn end_step(&mut self, spec: &PipelineSpec, i: usize, at: VTime) {
        let stopping = self.status == ExecutionStatus::Stopping;
        let previous = self.steps[i].status;
        let step = &mut self.steps[i];
        let ending = step.ending.take().unwrap_or(Ending::Succeed);
        step.ends_at = None;
        step.end_time = Some(at);
        match ending {
            Ending::Succeed if stopping && step.status == Some(StepStatus::Stopping) => {
                // An uninterruptible step that finished after the stop: it counts as stopped.
                step.status = Some(StepStatus::Stopped);
            }
            Ending::Succeed => {
                step.status = Some(StepStatus::Succeeded);
                if let StepKind::Lambda { outputs, .. } = &spec.steps[i].kind {
                    step.outputs = outputs.clone();
                }
                if let StepKind::Condition { outcome } = spec.steps[i].kind {
                    step.condition_outcome = Some(outcome);
                    for (j, other) in spec.steps.iter().enumerate() {
                        if other.branch.is_some_and(|(c, on)| c == i && on != outcome) {
                            self.steps[j].skipped = true;
                        }
                    }
                }
            }
            Ending::Fail(reason) => {
                step.status = Some(StepStatus::Failed);
                step.failure_reason = Some(reason.clone());
                step.failed_while_stopping = stopping;
                if let StepKind::Fail { error_message } = &spec.steps[i].kind
                    && self.failure_reason.is_none()
                    && !error_message.is_empty()
                {
                    self.failure_reason = Some(error_message.clone());
                }
            }
            Ending::Stop => step.status = Some(StepStatus::Stopped),
        }
        self.last_modified_time = at;
        self.record_step(i, previous, at);
    }

    /// After a change at `at`: start what can start, and end the execution if nothing runs.
    fn settle(&mut self, spec: &PipelineSpec, at: VTime, ids: &Ids) {
        if self.status == ExecutionStatus::Executing && !self.any_failed() {
            self.start_ready_steps(spec, at, ids);
        }
        if self
            .steps
            .iter()
            .any(|s| s.status.is_some_and(StepStatus::running))
        {
            return;
        }
        let final_status = match self.status {
            ExecutionStatus::Executing if self.any_failed() => ExecutionStatus::Failed,
            ExecutionStatus::Executing => {
                let unfinished = self
                    .steps
                    .iter()
                    .any(|s| !s.skipped && s.status != Some(StepStatus::Succeeded));
                if unfinished {
                    // Waiting for nothing yet unable to go on: cannot happen with a valid
                    // graph, but never leave an execution hanging.
                    ExecutionStatus::Failed
                } else {
                    ExecutionStatus::Succeeded
                }
            }
            ExecutionStatus::Stopping if self.steps.iter().any(|s| s.failed_while_stopping) => {
                ExecutionStatus::Failed
            }
            ExecutionStatus::Stopping => ExecutionStatus::Stopped,
            _ => return,
        };
        if final_status == ExecutionStatus::Failed && self.failure_reason.is_none() {
            self.failure_reason = Some(STEP_FAILURE.to_string());
        }
        self.set_status(final_status, at);
        self.last_modified_time = at;
    }

    fn any_failed(&self) -> bool {
        self.steps
            .iter()
            .any(|s| s.status == Some(StepStatus::Failed))
    }

    fn start_ready_steps(&mut self, spec: &PipelineSpec, at: VTime, ids: &Ids) {
        let mut running = self
            .steps
            .iter()
            .filter(|s| s.status.is_some_and(StepStatus::running))
            .count();
        for i in 0..spec.steps.len() {
            if let Some(max) = self.max_parallel
                && running >= max as usize
            {
                return;
            }
            let step = &self.steps[i];
            if step.status.is_some() || step.skipped {
                continue;
            }
            let ready = spec.steps[i].depends_on.iter().all(|&d| {
                self.steps[d].skipped || self.steps[d].status == Some(StepStatus::Succeeded)
            });
            if ready {
                self.start_step(spec, i, at, ids);
                running += 1;
            }
        }
    }

    /// A step's arguments with the references resolved that can be by now.
    fn resolved_arguments(&self, spec: &PipelineSpec, i: usize) -> Value {
        let outputs = |step: &str, name: &str| {
            let j = spec.steps.iter().position(|s| s.name == step)?;
            self.steps[j]
                .outputs
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let bindings = Bindings {
            parameters: &self.parameters,
            execution_arn: &self.arn,
            execution_id: &self.execution_id,
            outputs: &outputs,
        };
        resolve(&spec.steps[i].arguments, &bindings)
    }

    fn start_step(&mut self, spec: &PipelineSpec, i: usize, at: VTime, ids: &Ids) {
        let def = &spec.steps[i];
        let step = &mut self.steps[i];
        step.attempt_count += 1;
        step.start_time = Some(at);
        step.end_time = None;
        step.failure_reason = None;
        step.failed_while_stopping = false;
        step.ends_at = None;
        step.ending = None;
        // A new attempt waits with a token of its own, issued when it begins.
        step.callback_token = None;
        let previous = step.retried_from.take();
        step.status = Some(StepStatus::Starting);
        self.record_step(i, previous, at);
        if def.start_seconds > 0.0 {
            self.steps[i].begins_at = Some(at + def.start_seconds);
        } else {
            self.begin_step(spec, i, at, ids);
        }
    }

    /// A started step becomes Executing at `at`: a Callback step sends its message, the
    /// others are scheduled to end.
    fn begin_step(&mut self, spec: &PipelineSpec, i: usize, at: VTime, ids: &Ids) {
        let def = &spec.steps[i];
        let execution_id = self.execution_id.clone();
        let arguments =
            matches!(def.kind, StepKind::Callback { .. }).then(|| self.resolved_arguments(spec, i));
        let step = &mut self.steps[i];
        let previous = step.status;
        step.status = Some(StepStatus::Executing);
        step.begins_at = None;
        let scripted_failure = step.attempt_count <= def.fail_attempts;
        let ending = if scripted_failure {
            Ending::Fail(def.failure_reason.clone())
        } else {
            Ending::Succeed
        };
        match &def.kind {
            StepKind::Callback { sqs_queue_url } => {
                let token = ids.callback_token();
                step.callback_token = Some(token.clone());
                step.ends_at = None;
                step.ending = None;
                step.arguments = arguments.clone();
                self.messages.push(CallbackMessage {
                    queue_url: sqs_queue_url.clone(),
                    step_name: def.name.clone(),
                    sent_at: at,
                    body: json!({
                        "token": token,
                        "pipelineExecutionArn": self.arn,
                        "arguments": arguments.unwrap_or_default(),
                    }),
                });
            }
            StepKind::Lambda { timeout, .. } => {
                if def.duration > *timeout {
                    step.ends_at = Some(at + timeout);
                    step.ending = Some(Ending::Fail(lambda_timeout_reason(*timeout)));
                } else {
                    step.ends_at = Some(at + def.duration);
                    step.ending = Some(ending);
                }
            }
            StepKind::Fail { error_message } => {
                step.ends_at = Some(at + def.duration);
                step.ending = Some(Ending::Fail(if error_message.is_empty() {
                    "Fail step reached.".to_string()
                } else {
                    error_message.clone()
                }));
            }
            StepKind::Condition { .. } | StepKind::Job => {
                if step.job_name.is_none() && def.kind == StepKind::Job {
                    step.job_name = Some(job_name(&execution_id, &def.name, ids));
                }
                step.ends_at = Some(at + def.duration);
                step.ending = Some(ending);
            }
        }
        self.record_step(i, previous, at);
    }

    /// Refuses an action that only an execution in status `wanted` allows, in SageMaker's words.
    fn require(&self, wanted: ExecutionStatus, action: &str) -> Result<(), Refusal> {
        if self.status == wanted {
            return Ok(());
        }
        Err(Refusal::WrongStatus(format!(
            "Pipeline execution with ARN {} status is {}. Only pipelines with '{}' status can be {action}.",
            self.arn,
            self.status.as_str(),
            wanted.as_str()
        )))
    }

    /// StopPipelineExecution at `now`.
    pub(crate) fn stop(
        &mut self,
        spec: &PipelineSpec,
        now: VTime,
        ids: &Ids,
    ) -> Result<(), Refusal> {
        self.advance(spec, now, ids);
        self.require(ExecutionStatus::Executing, "stopped")?;
        self.set_status(ExecutionStatus::Stopping, now);
        self.last_modified_time = now;
        for (i, def) in spec.steps.iter().enumerate() {
            let step = &mut self.steps[i];
            let previous = step.status;
            if step.status == Some(StepStatus::Starting) {
                // Nothing began yet (no message sent, no function invoked): stopped at once.
                step.status = Some(StepStatus::Stopped);
                step.begins_at = None;
                step.end_time = Some(now);
                self.record_step(i, previous, now);
                continue;
            }
            if step.status != Some(StepStatus::Executing) {
                continue;
            }
            step.status = Some(StepStatus::Stopping);
            match &def.kind {
                StepKind::Callback { sqs_queue_url } => {
                    let token = step.callback_token.clone().unwrap_or_default();
                    self.messages.push(CallbackMessage {
                        queue_url: sqs_queue_url.clone(),
                        step_name: def.name.clone(),
                        sent_at: now,
                        body: json!({
                            "token": token,
                            "pipelineExecutionArn": self.arn,
                            "arguments": step.arguments.clone().unwrap_or_default(),
                            "status": "Stopping",
                        }),
                    });
                }
                // Cannot be interrupted: it ends when it ends (scheduled at its start).
                StepKind::Lambda { .. } => {}
                StepKind::Condition { .. } | StepKind::Fail { .. } | StepKind::Job => {
                    step.ends_at = Some(now + def.stop_seconds);
                    step.ending = Some(Ending::Stop);
                }
            }
            self.record_step(i, previous, now);
        }
        self.settle(spec, now, ids);
        self.advance(spec, now, ids);
        Ok(())
    }

    /// SendPipelineExecutionStepSuccess (`Ok(outputs)`) or Failure (`Err(reason)`) for the
    /// Callback step holding `token`, at `now`.
    pub(crate) fn answer_callback(
        &mut self,
        spec: &PipelineSpec,
        token: &str,
        answer: Result<Vec<(String, String)>, String>,
        now: VTime,
        ids: &Ids,
    ) -> Result<(), Refusal> {
        self.advance(spec, now, ids);
        let Some(i) = self.steps.iter().position(|s| {
            s.callback_token.as_deref() == Some(token) && s.status.is_some_and(StepStatus::running)
        }) else {
            return Err(Refusal::NotWaiting(format!(
                "The step with callback token {token} is not waiting for a callback."
            )));
        };
        let previous = self.steps[i].status;
        let stopping = previous == Some(StepStatus::Stopping);
        let step = &mut self.steps[i];
        step.end_time = Some(now);
        match answer {
            Ok(outputs) => {
                step.outputs = outputs;
                step.status = Some(if stopping {
                    StepStatus::Stopped
                } else {
                    StepStatus::Succeeded
                });
            }
            Err(reason) => {
                // While stopping, the step records the failure but the execution still ends
                // Stopped: "Only when SageMaker Pipelines receives one of these calls will it
                // stop the pipeline execution" (unlike a Lambda step's timeout, which fails it).
                step.status = Some(StepStatus::Failed);
                step.failure_reason = Some(reason);
                step.failed_while_stopping = false;
            }
        }
        self.last_modified_time = now;
        self.record_step(i, previous, now);
        self.settle(spec, now, ids);
        self.advance(spec, now, ids);
        Ok(())
    }

    /// RetryPipelineExecution at `now`: failed (and stopped) steps run again, as new attempts.
    pub(crate) fn retry(
        &mut self,
        spec: &PipelineSpec,
        now: VTime,
        ids: &Ids,
    ) -> Result<(), Refusal> {
        self.advance(spec, now, ids);
        self.require(ExecutionStatus::Failed, "retried")?;
        for step in &mut self.steps {
            if matches!(
                step.status,
                Some(StepStatus::Failed) | Some(StepStatus::Stopped)
            ) {
                step.retried_from = step.status.take();
                step.failed_while_stopping = false;
            }
        }
        self.set_status(ExecutionStatus::Executing, now);
        self.failure_reason = None;
        self.last_modified_time = now;
        self.settle(spec, now, ids);
        self.advance(spec, now, ids);
        Ok(())
    }
}

fn lambda_timeout_reason(timeout: f64) -> String {
    format!(
        "Lambda function did not finish within its timeout of {timeout} seconds: Task timed out."
    )
}

/// A job name as Pipelines makes them: `pipelines-<execution id>-<step>-<suffix>`, at most 63
/// characters of `[a-zA-Z0-9-]`.
fn job_name(execution_id: &str, step: &str, ids: &Ids) -> String {
    let step: String = step
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(30)
        .collect();
    let name = format!("pipelines-{execution_id}-{step}-{}", ids.job_suffix());
    name.chars()
        .take(63)
        .collect::<String>()
        .trim_end_matches('-')
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definition::parse;
    use serde_json::json;

    const ARN: &str = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";

    fn spec(steps: Value) -> PipelineSpec {
        parse(&json!({"Version": "2020-12-01", "Steps": steps}).to_string()).unwrap()
    }

    fn start(spec: &PipelineSpec, ids: &Ids) -> ExecutionState {
        ExecutionState::start(
            ARN.into(),
            "abcdefghijkl".into(),
            spec,
            Vec::new(),
            None,
            1000.0,
            ids,
        )
    }

    fn status(state: &ExecutionState, i: usize) -> Option<StepStatus> {
        state.steps[i].status
    }

    /// Each recorded change: (time, the execution or the step's name, previous, current).
    fn changes(
        state: &mut ExecutionState,
        spec: &PipelineSpec,
    ) -> Vec<(VTime, String, Option<&'static str>, &'static str)> {
        std::mem::take(&mut state.transitions)
            .into_iter()
            .map(|t| match t.change {
                Change::Execution { previous, current } => (
                    t.at,
                    "execution".to_string(),
                    previous.map(ExecutionStatus::as_str),
                    current.as_str(),
                ),
                Change::Step {
                    index,
                    previous,
                    run,
                } => (
                    t.at,
                    spec.steps[index].name.clone(),
                    previous.map(StepStatus::as_str),
                    run.status.map_or("none", StepStatus::as_str),
                ),
            })
            .collect()
    }

    #[test]
    fn every_status_change_is_recorded_in_order_with_the_step_as_it_was() {
        let ids = Ids::new(Some(12));
        let spec = spec(json!([
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"},
            {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 10}}},
            {"Name": "After", "Type": "Training", "DependsOn": ["Train"],
             "Arguments": {"Emulator": {"DurationSeconds": 100}}}
        ]));
        let mut state = start(&spec, &ids);
        let starting = state.transitions.iter().find_map(|t| match &t.change {
            Change::Step { index: 0, run, .. } if run.status == Some(StepStatus::Starting) => {
                Some(run.callback_token.clone())
            }
            _ => None,
        });
        assert_eq!(starting, Some(None), "no token while Starting");
        let executing = state.transitions.iter().find_map(|t| match &t.change {
            Change::Step { index: 0, run, .. } if run.status == Some(StepStatus::Executing) => {
                run.callback_token.clone()
            }
            _ => None,
        });
        assert_eq!(executing, state.steps[0].callback_token);
        assert_eq!(
            changes(&mut state, &spec),
            [
                (1000.0, "execution".into(), None, "Executing"),
                (1000.0, "Approve".into(), None, "Starting"),
                (1000.0, "Approve".into(), Some("Starting"), "Executing"),
                (1000.0, "Train".into(), None, "Starting"),
                (1000.0, "Train".into(), Some("Starting"), "Executing"),
            ]
        );
        state.advance(&spec, 1015.0, &ids);
        assert_eq!(
            changes(&mut state, &spec),
            [
                (1010.0, "Train".into(), Some("Executing"), "Succeeded"),
                (1010.0, "After".into(), None, "Starting"),
                (1010.0, "After".into(), Some("Starting"), "Executing"),
            ]
        );
        state.advance(&spec, 1016.0, &ids);
        assert!(state.transitions.is_empty(), "nothing changed");
        state.stop(&spec, 1020.0, &ids).unwrap();
        assert_eq!(
            changes(&mut state, &spec),
            [
                (1020.0, "execution".into(), Some("Executing"), "Stopping"),
                (1020.0, "Approve".into(), Some("Executing"), "Stopping"),
                (1020.0, "After".into(), Some("Executing"), "Stopping"),
                (1020.0, "After".into(), Some("Stopping"), "Stopped"),
            ]
        );
        let token = state.steps[0].callback_token.clone().unwrap();
        state
            .answer_callback(&spec, &token, Ok(vec![]), 1030.0, &ids)
            .unwrap();
        assert_eq!(
            changes(&mut state, &spec),
            [
                (1030.0, "Approve".into(), Some("Stopping"), "Stopped"),
                (1030.0, "execution".into(), Some("Stopping"), "Stopped"),
            ]
        );

        // A retried step starts again from the status it failed with.
        let failing = self::spec(json!([
            {"Name": "A", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 10, "FailAttempts": 1, "FailureReason": "oom"}}}
        ]));
        let mut state = start(&failing, &ids);
        state.advance(&failing, 1010.0, &ids);
        let failed = state.transitions.iter().find_map(|t| match &t.change {
            Change::Step { run, .. } if run.status == Some(StepStatus::Failed) => {
                run.failure_reason.clone()
            }
            _ => None,
        });
        assert_eq!(failed.as_deref(), Some("oom"));
        changes(&mut state, &failing);
        state.retry(&failing, 1100.0, &ids).unwrap();
        assert_eq!(
            changes(&mut state, &failing),
            [
                (1100.0, "execution".into(), Some("Failed"), "Executing"),
                (1100.0, "A".into(), Some("Failed"), "Starting"),
                (1100.0, "A".into(), Some("Starting"), "Executing"),
            ]
        );
    }

    #[test]
    fn advancing_in_small_steps_changes_nothing_of_what_happens_or_when() {
        let definition = json!([
            {"Name": "Prep", "Type": "Processing", "Arguments": {"Emulator": {"StartSeconds": 3, "DurationSeconds": 7}}},
            {"Name": "Train", "Type": "Training", "DependsOn": ["Prep"], "Arguments": {"Emulator": {"DurationSeconds": 42.5}}},
            {"Name": "Notify", "Type": "Lambda", "FunctionArn": "arn:f", "DependsOn": ["Prep"],
             "Arguments": {"Emulator": {"DurationSeconds": 200, "TimeoutSeconds": 120}}},
            {"Name": "Check", "Type": "Condition", "DependsOn": ["Train"], "Arguments": {
                "IfSteps": [{"Name": "Deploy", "Type": "Model", "Arguments": {"Emulator": {"DurationSeconds": 5}}}],
                "ElseSteps": []}}
        ]);
        let spec = spec(definition);
        let (ids_once, ids_often) = (Ids::new(Some(13)), Ids::new(Some(13)));
        let mut once = start(&spec, &ids_once);
        let mut often = start(&spec, &ids_often);
        once.advance(&spec, 1300.0, &ids_once);
        let mut t = 1000.0;
        while t < 1300.0 {
            t += 0.25;
            often.advance(&spec, t, &ids_often);
        }
        assert_eq!(once.status, ExecutionStatus::Failed, "the Lambda timed out");
        assert_eq!(once.status, often.status);
        assert_eq!(once.last_modified_time, often.last_modified_time);
        assert_eq!(once.steps, often.steps);
        assert_eq!(once.transitions, often.transitions);
        assert_eq!(once.transitions.len(), 17);
    }

    #[test]
    fn steps_run_in_dependency_order_and_in_parallel_where_possible() {
        let ids = Ids::new(Some(1));
        let spec = spec(json!([
            {"Name": "A", "Type": "Processing", "Arguments": {"Emulator": {"DurationSeconds": 10}}},
            {"Name": "B", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 20}}},
            {"Name": "C", "Type": "Transform", "DependsOn": ["A", "B"], "Arguments": {"Emulator": {"DurationSeconds": 5}}}
        ]));
        let mut state = start(&spec, &ids);
        assert_eq!(status(&state, 0), Some(StepStatus::Executing));
        assert_eq!(status(&state, 1), Some(StepStatus::Executing));
        assert_eq!(status(&state, 2), None);

        state.advance(&spec, 1015.0, &ids);
        assert_eq!(status(&state, 0), Some(StepStatus::Succeeded));
        assert_eq!(state.steps[0].end_time, Some(1010.0));
        assert_eq!(status(&state, 2), None, "C waits for B too");

        state.advance(&spec, 1100.0, &ids);
        assert_eq!(state.steps[2].start_time, Some(1020.0));
        assert_eq!(state.steps[2].end_time, Some(1025.0));
        assert_eq!(state.status, ExecutionStatus::Succeeded);
        assert_eq!(state.last_modified_time, 1025.0);
        assert!(
            state.steps[1]
                .job_name
                .as_deref()
                .is_some_and(|n| n.starts_with("pipelines-abcdefghijkl-B-"))
        );
    }

    #[test]
    fn a_callback_step_holds_a_stop_until_answered() {
        let ids = Ids::new(Some(2));
        let spec = spec(json!([
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q", "Arguments": {"x": 1}},
            {"Name": "After", "Type": "Training", "DependsOn": ["Approve"]}
        ]));
        let mut state = start(&spec, &ids);
        let token = state.steps[0].callback_token.clone().unwrap();
        assert_eq!(state.messages.len(), 1);
        assert_eq!(state.messages[0].body["token"], token);
        assert!(state.messages[0].body.get("status").is_none());

        state.stop(&spec, 1010.0, &ids).unwrap();
        assert_eq!(state.status, ExecutionStatus::Stopping);
        assert_eq!(status(&state, 0), Some(StepStatus::Stopping));
        assert_eq!(state.messages[1].body["status"], "Stopping");
        state.advance(&spec, 1_000_000.0, &ids);
        assert_eq!(
            state.status,
            ExecutionStatus::Stopping,
            "no timeout on a callback"
        );

        let again = state.stop(&spec, 1_000_001.0, &ids).unwrap_err();
        assert!(
            matches!(again, Refusal::WrongStatus(m) if m.contains("Only pipelines with 'Executing' status can be stopped"))
        );

        state
            .answer_callback(&spec, &token, Ok(vec![]), 1_000_002.0, &ids)
            .unwrap();
        assert_eq!(status(&state, 0), Some(StepStatus::Stopped));
        assert_eq!(status(&state, 1), None, "steps not started never start");
        assert_eq!(state.status, ExecutionStatus::Stopped);
        assert_eq!(state.last_modified_time, 1_000_002.0);
        assert!(
            state
                .answer_callback(&spec, &token, Ok(vec![]), 1_000_003.0, &ids)
                .is_err()
        );
    }

    #[test]
    fn a_callback_failed_while_stopping_ends_the_execution_stopped() {
        let ids = Ids::new(Some(9));
        let spec = spec(json!([
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"}
        ]));
        let mut state = start(&spec, &ids);
        let token = state.steps[0].callback_token.clone().unwrap();
        state.stop(&spec, 1010.0, &ids).unwrap();
        state
            .answer_callback(&spec, &token, Err("consumer gave up".into()), 1020.0, &ids)
            .unwrap();
        assert_eq!(status(&state, 0), Some(StepStatus::Failed));
        assert_eq!(
            state.steps[0].failure_reason.as_deref(),
            Some("consumer gave up")
        );
        assert_eq!(state.status, ExecutionStatus::Stopped);
        assert_eq!(state.failure_reason, None);
        assert_eq!(state.last_modified_time, 1020.0);
    }

    #[test]
    fn a_step_is_starting_for_its_start_seconds_then_executing() {
        let ids = Ids::new(Some(10));
        let spec = spec(json!([
            {"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q",
             "Arguments": {"Emulator": {"StartSeconds": 5}}},
            {"Name": "Train", "Type": "Training",
             "Arguments": {"Emulator": {"StartSeconds": 2, "DurationSeconds": 10}}}
        ]));
        let mut state = start(&spec, &ids);
        assert_eq!(status(&state, 0), Some(StepStatus::Starting));
        assert_eq!(status(&state, 1), Some(StepStatus::Starting));
        assert_eq!(state.steps[0].start_time, Some(1000.0));
        assert!(state.messages.is_empty(), "no message before it executes");
        assert_eq!(state.steps[0].callback_token, None);

        state.advance(&spec, 1003.0, &ids);
        assert_eq!(status(&state, 1), Some(StepStatus::Executing));
        assert_eq!(status(&state, 0), Some(StepStatus::Starting));
        state.advance(&spec, 1005.0, &ids);
        assert_eq!(status(&state, 0), Some(StepStatus::Executing));
        assert_eq!(state.messages.len(), 1);
        assert_eq!(state.messages[0].sent_at, 1005.0);
        state.advance(&spec, 1012.5, &ids);
        assert_eq!(status(&state, 1), Some(StepStatus::Succeeded));
        assert_eq!(
            state.steps[1].end_time,
            Some(1012.0),
            "runs after it starts"
        );

        // A stop while a step is Starting stops it at once: nothing began.
        let mut state = start(&spec, &ids);
        state.stop(&spec, 1001.0, &ids).unwrap();
        assert_eq!(status(&state, 0), Some(StepStatus::Stopped));
        assert_eq!(status(&state, 1), Some(StepStatus::Stopped));
        assert!(state.messages.is_empty());
        assert_eq!(state.status, ExecutionStatus::Stopped);
    }

    #[test]
    fn a_larger_parallelism_starts_waiting_steps_at_once() {
        let ids = Ids::new(Some(11));
        let spec = spec(json!([
            {"Name": "A", "Type": "Training"},
            {"Name": "B", "Type": "Training"}
        ]));
        let mut state = ExecutionState::start(
            ARN.into(),
            "x".into(),
            &spec,
            Vec::new(),
            Some(1),
            0.0,
            &ids,
        );
        assert_eq!(status(&state, 1), None);
        state.set_max_parallel(&spec, Some(2), 5.0, &ids);
        assert_eq!(status(&state, 1), Some(StepStatus::Executing));
        assert_eq!(state.steps[1].start_time, Some(5.0));
    }

    #[test]
    fn a_lambda_step_finishes_after_a_stop_or_times_out() {
        let ids = Ids::new(Some(3));
        let quick = spec(
            json!([{"Name": "L", "Type": "Lambda", "FunctionArn": "arn:f",
            "Arguments": {"Emulator": {"DurationSeconds": 60, "TimeoutSeconds": 120}}}]),
        );
        let mut state = start(&quick, &ids);
        state.stop(&quick, 1010.0, &ids).unwrap();
        assert_eq!(state.status, ExecutionStatus::Stopping);
        assert_eq!(status(&state, 0), Some(StepStatus::Stopping));
        state.advance(&quick, 1059.0, &ids);
        assert_eq!(state.status, ExecutionStatus::Stopping);
        state.advance(&quick, 1061.0, &ids);
        assert_eq!(status(&state, 0), Some(StepStatus::Stopped));
        assert_eq!(state.status, ExecutionStatus::Stopped);
        assert_eq!(state.last_modified_time, 1060.0);

        let slow = spec(
            json!([{"Name": "L", "Type": "Lambda", "FunctionArn": "arn:f",
            "Arguments": {"Emulator": {"DurationSeconds": 600, "TimeoutSeconds": 120}}}]),
        );
        let mut state = start(&slow, &ids);
        state.stop(&slow, 1010.0, &ids).unwrap();
        state.advance(&slow, 2000.0, &ids);
        assert_eq!(status(&state, 0), Some(StepStatus::Failed));
        assert_eq!(state.steps[0].end_time, Some(1120.0));
        assert!(
            state.steps[0]
                .failure_reason
                .as_deref()
                .unwrap()
                .contains("timeout of 120 seconds")
        );
        assert_eq!(state.status, ExecutionStatus::Failed);
        assert_eq!(state.failure_reason.as_deref(), Some(STEP_FAILURE));
    }

    #[test]
    fn other_steps_stop_promptly_and_unstarted_steps_never_start() {
        let ids = Ids::new(Some(4));
        let spec = spec(json!([
            {"Name": "T", "Type": "Training"},
            {"Name": "P", "Type": "Processing", "Arguments": {"Emulator": {"StopSeconds": 5}}},
            {"Name": "Later", "Type": "Training", "DependsOn": ["T"]}
        ]));
        let mut state = start(&spec, &ids);
        state.stop(&spec, 1001.0, &ids).unwrap();
        assert_eq!(status(&state, 0), Some(StepStatus::Stopped));
        assert_eq!(status(&state, 1), Some(StepStatus::Stopping));
        assert_eq!(state.status, ExecutionStatus::Stopping);
        state.advance(&spec, 1006.0, &ids);
        assert_eq!(status(&state, 1), Some(StepStatus::Stopped));
        assert_eq!(status(&state, 2), None);
        assert_eq!(state.status, ExecutionStatus::Stopped);
    }

    #[test]
    fn a_failed_execution_retries_its_failed_steps() {
        let ids = Ids::new(Some(5));
        let spec = spec(json!([
            {"Name": "A", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 10}}},
            {"Name": "B", "Type": "Training", "DependsOn": ["A"], "Arguments": {"Emulator": {"DurationSeconds": 10, "FailAttempts": 1, "FailureReason": "out of memory"}}}
        ]));
        let mut state = start(&spec, &ids);
        assert!(
            state.retry(&spec, 1001.0, &ids).is_err(),
            "only Failed executions retry"
        );
        state.advance(&spec, 1100.0, &ids);
        assert_eq!(state.status, ExecutionStatus::Failed);
        assert_eq!(
            state.steps[1].failure_reason.as_deref(),
            Some("out of memory")
        );
        assert_eq!(state.failure_reason.as_deref(), Some(STEP_FAILURE));

        state.retry(&spec, 1200.0, &ids).unwrap();
        assert_eq!(state.status, ExecutionStatus::Executing);
        assert_eq!(state.failure_reason, None);
        assert_eq!(status(&state, 0), Some(StepStatus::Succeeded));
        assert_eq!(status(&state, 1), Some(StepStatus::Executing));
        assert_eq!(state.steps[1].attempt_count, 2);
        state.advance(&spec, 1300.0, &ids);
        assert_eq!(state.status, ExecutionStatus::Succeeded);
        assert_eq!(state.steps[0].attempt_count, 1);
    }

    #[test]
    fn a_failing_step_lets_running_steps_finish_then_fails_the_execution() {
        let ids = Ids::new(Some(6));
        let spec = spec(json!([
            {"Name": "Bad", "Type": "Processing", "Arguments": {"Emulator": {"DurationSeconds": 1, "FailAttempts": 1}}},
            {"Name": "Slow", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 50}}},
            {"Name": "Next", "Type": "Training", "DependsOn": ["Slow"]}
        ]));
        let mut state = start(&spec, &ids);
        state.advance(&spec, 1010.0, &ids);
        assert_eq!(status(&state, 0), Some(StepStatus::Failed));
        assert_eq!(state.status, ExecutionStatus::Executing);
        state.advance(&spec, 1100.0, &ids);
        assert_eq!(status(&state, 1), Some(StepStatus::Succeeded));
        assert_eq!(
            status(&state, 2),
            None,
            "nothing new starts after a failure"
        );
        assert_eq!(state.status, ExecutionStatus::Failed);
        assert_eq!(state.last_modified_time, 1050.0);
    }

    #[test]
    fn conditions_choose_a_branch_and_fail_steps_fail_with_their_message() {
        let ids = Ids::new(Some(7));
        let spec = spec(json!([
            {"Name": "Check", "Type": "Condition", "Arguments": {
                "IfSteps": [{"Name": "Deploy", "Type": "Model"}],
                "ElseSteps": [{"Name": "Reject", "Type": "Fail", "Arguments": {"ErrorMessage": "accuracy too low"}}],
                "Emulator": {"Outcome": false}}}
        ]));
        let mut state = start(&spec, &ids);
        state.advance(&spec, 1001.0, &ids);
        assert_eq!(state.steps[0].condition_outcome, Some(false));
        assert!(state.steps[1].skipped);
        assert_eq!(status(&state, 2), Some(StepStatus::Failed));
        assert_eq!(state.status, ExecutionStatus::Failed);
        assert_eq!(state.failure_reason.as_deref(), Some("accuracy too low"));
    }

    #[test]
    fn parallelism_limits_running_steps() {
        let ids = Ids::new(Some(8));
        let spec = spec(json!([
            {"Name": "A", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 10}}},
            {"Name": "B", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 10}}},
            {"Name": "C", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 10}}}
        ]));
        let mut state = ExecutionState::start(
            ARN.into(),
            "x".into(),
            &spec,
            Vec::new(),
            Some(2),
            0.0,
            &ids,
        );
        assert_eq!(status(&state, 2), None);
        state.advance(&spec, 10.0, &ids);
        assert_eq!(state.steps[2].start_time, Some(10.0));
        state.advance(&spec, 20.0, &ids);
        assert_eq!(state.status, ExecutionStatus::Succeeded);
    }
}
