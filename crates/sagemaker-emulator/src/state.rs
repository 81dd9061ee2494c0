//! The emulator's data: pipelines, executions, callback tokens, idempotency records, call
//! counts and faults. Every map is sharded (DashMap), and every execution and every
//! ClientRequestToken record has its own lock, so requests about different executions never
//! wait for each other: there is no global lock on the request path.

use std::sync::{
    Arc, Mutex, MutexGuard,
    atomic::{AtomicU64, Ordering},
};

use dashmap::DashMap;
use serde_json::Value;

use super::{
    clock::{Clock, Ids, VTime},
    definition::PipelineSpec,
    engine::ExecutionState,
    faults::Faults,
    options::EmulatorOptions,
};

/// The operations the emulator serves, in the order stats list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Operation {
    CreatePipeline,
    DescribePipeline,
    StartPipelineExecution,
    DescribePipelineExecution,
    ListPipelineExecutions,
    ListPipelineExecutionSteps,
    StopPipelineExecution,
    SendPipelineExecutionStepSuccess,
    SendPipelineExecutionStepFailure,
    RetryPipelineExecution,
}

impl Operation {
    pub(crate) const ALL: [Operation; 10] = [
        Self::CreatePipeline,
        Self::DescribePipeline,
        Self::StartPipelineExecution,
        Self::DescribePipelineExecution,
        Self::ListPipelineExecutions,
        Self::ListPipelineExecutionSteps,
        Self::StopPipelineExecution,
        Self::SendPipelineExecutionStepSuccess,
        Self::SendPipelineExecutionStepFailure,
        Self::RetryPipelineExecution,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::CreatePipeline => "CreatePipeline",
            Self::DescribePipeline => "DescribePipeline",
            Self::StartPipelineExecution => "StartPipelineExecution",
            Self::DescribePipelineExecution => "DescribePipelineExecution",
            Self::ListPipelineExecutions => "ListPipelineExecutions",
            Self::ListPipelineExecutionSteps => "ListPipelineExecutionSteps",
            Self::StopPipelineExecution => "StopPipelineExecution",
            Self::SendPipelineExecutionStepSuccess => "SendPipelineExecutionStepSuccess",
            Self::SendPipelineExecutionStepFailure => "SendPipelineExecutionStepFailure",
            Self::RetryPipelineExecution => "RetryPipelineExecution",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.name() == name)
    }
}

/// A pipeline as CreatePipeline made it.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) name: String,
    pub(crate) arn: String,
    pub(crate) display_name: String,
    pub(crate) description: Option<String>,
    pub(crate) definition: String,
    pub(crate) spec: Arc<PipelineSpec>,
    pub(crate) role_arn: String,
    pub(crate) parallelism: Option<u32>,
    pub(crate) creation_time: VTime,
    /// Its executions' ARNs, oldest first, and when each was last started.
    pub(crate) runs: Mutex<PipelineRuns>,
}

#[derive(Debug, Default)]
pub(crate) struct PipelineRuns {
    pub(crate) executions: Vec<Arc<ExecutionCell>>,
    pub(crate) last_run_time: Option<VTime>,
}

/// One execution and what it was started with.
#[derive(Debug)]
pub(crate) struct Execution {
    pub(crate) pipeline_arn: String,
    pub(crate) pipeline_name: String,
    pub(crate) execution_id: String,
    pub(crate) display_name: String,
    pub(crate) description: Option<String>,
    pub(crate) parallelism: Option<u32>,
    pub(crate) spec: Arc<PipelineSpec>,
    pub(crate) state: ExecutionState,
    /// How many of `state.messages` have had their callback tokens registered.
    pub(crate) registered_messages: usize,
    /// Every StopPipelineExecution it received: ClientRequestToken and time.
    pub(crate) stop_requests: Vec<(String, VTime)>,
}

/// An execution behind its own lock. Critical sections are short and never await.
#[derive(Debug)]
pub(crate) struct ExecutionCell {
    pub(crate) arn: String,
    pub(crate) creation_time: VTime,
    inner: Mutex<Execution>,
}

impl ExecutionCell {
    pub(crate) fn new(arn: String, creation_time: VTime, execution: Execution) -> Self {
        Self {
            arn,
            creation_time,
            inner: Mutex::new(execution),
        }
    }
}

/// An execution locked and advanced to `now`. When it is released, the callback tokens its
/// steps issued meanwhile become findable by SendPipelineExecutionStep*, so a token is known
/// from the moment anyone can have seen it.
pub(crate) struct Locked<'a> {
    execution: MutexGuard<'a, Execution>,
    cell: &'a Arc<ExecutionCell>,
    emulator: &'a Emulator,
    /// Emulated time at the moment the lock was taken: every change made under this lock
    /// happens at this time, so an execution's times never go backwards.
    pub(crate) now: VTime,
}

impl std::ops::Deref for Locked<'_> {
    type Target = Execution;
    fn deref(&self) -> &Execution {
        &self.execution
    }
}

impl std::ops::DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Execution {
        &mut self.execution
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Lock order: an execution, then a shard of the callback-token map; nothing takes
        // them the other way round.
        let execution = &mut *self.execution;
        for message in &execution.state.messages[execution.registered_messages..] {
            if let Some(token) = message.body.get("token").and_then(|t| t.as_str()) {
                self.emulator
                    .callback_tokens
                    .entry(token.to_string())
                    .or_insert_with(|| self.cell.clone());
            }
        }
        execution.registered_messages = execution.state.messages.len();
    }
}

/// A successful answer kept for a ClientRequestToken, with the request it answered.
#[derive(Debug, Clone)]
pub(crate) struct IdempotentAnswer {
    pub(crate) request: Value,
    pub(crate) response: Value,
}

/// What one operation keeps for one ClientRequestToken: empty until a call with it succeeds.
/// A call holds the lock from its look-up to its recording (see `ops::idempotent`); like an
/// execution's, it is never held across an await.
pub(crate) type TokenRecord = Arc<Mutex<Option<IdempotentAnswer>>>;

/// Everything the emulator holds.
#[derive(Debug)]
pub(crate) struct Emulator {
    pub(crate) clock: Clock,
    pub(crate) ids: Ids,
    pub(crate) region: String,
    pub(crate) account_id: String,
    /// By lowercase name (pipeline names are unique regardless of case).
    pub(crate) pipelines: DashMap<String, Arc<Pipeline>>,
    pub(crate) executions: DashMap<String, Arc<ExecutionCell>>,
    /// Callback token → the execution holding it.
    pub(crate) callback_tokens: DashMap<String, Arc<ExecutionCell>>,
    idempotency: DashMap<(Operation, String), TokenRecord>,
    calls: [AtomicU64; 10],
    pub(crate) faults: Faults,
}

impl Emulator {
    pub(crate) fn new(options: &EmulatorOptions) -> Self {
        Self {
            clock: Clock::new(options.time_scale),
            ids: Ids::new(options.seed),
            region: options.region.clone(),
            account_id: options.account_id.clone(),
            pipelines: DashMap::new(),
            executions: DashMap::new(),
            callback_tokens: DashMap::new(),
            idempotency: DashMap::new(),
            calls: Default::default(),
            faults: Faults::default(),
        }
    }

    /// Locks an execution and advances it to now (see the engine's module doc).
    pub(crate) fn lock<'a>(&'a self, cell: &'a Arc<ExecutionCell>) -> Locked<'a> {
        // A panic while holding the lock cannot leave the state half-updated in a way the
        // engine cannot continue from, so a poisoned lock is still used.
        let mut execution = cell.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let spec = execution.spec.clone();
        execution.state.advance(&spec, now, &self.ids);
        Locked {
            execution,
            cell,
            emulator: self,
            now,
        }
    }

    /// The record `op` keeps for `token`, made empty if there is none yet. The map's shard is
    /// locked only for the look-up; callers lock the record itself.
    pub(crate) fn token_record(&self, op: Operation, token: &str) -> TokenRecord {
        self.idempotency
            .entry((op, token.to_string()))
            .or_default()
            .clone()
    }

    pub(crate) fn count_call(&self, op: Operation) {
        self.calls[op as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn call_counts(&self) -> Vec<(Operation, u64)> {
        Operation::ALL
            .into_iter()
            .map(|op| (op, self.calls[op as usize].load(Ordering::Relaxed)))
            .collect()
    }

    pub(crate) fn reset_call_counts(&self) {
        for count in &self.calls {
            count.store(0, Ordering::Relaxed);
        }
    }
}
