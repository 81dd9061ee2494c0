//! The emulator's data: per (account, region) the pipelines, executions, callback tokens and
//! idempotency records ([`Resources`]); shared by all, the clock, the ids, the callers' keys
//! and roles, call counts and faults. Every map is sharded (DashMap), and every execution and
//! every ClientRequestToken record has its own lock, so requests about different executions
//! never wait for each other: there is no global lock on the request path.
//!
//! A call reaches only the resources of its own (account, region), so what another account
//! or region holds is invisible to it by construction, as in SageMaker.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use serde_json::Value;

use super::{
    clock::{Clock, Ids, VTime},
    definition::PipelineSpec,
    engine::ExecutionState,
    faults::Faults,
    identity::{Identity, RoleRule, Scope},
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

/// The STS actions the emulator serves on the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum StsAction {
    AssumeRole,
    GetCallerIdentity,
}

impl StsAction {
    pub(crate) const ALL: [StsAction; 2] = [Self::AssumeRole, Self::GetCallerIdentity];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AssumeRole => "AssumeRole",
            Self::GetCallerIdentity => "GetCallerIdentity",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.name() == name)
    }
}

/// A call the stats count: a SageMaker operation or an STS action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    SageMaker(Operation),
    Sts(StsAction),
}

impl Call {
    const COUNT: usize = Operation::ALL.len() + StsAction::ALL.len();

    fn index(self) -> usize {
        match self {
            Self::SageMaker(op) => op as usize,
            Self::Sts(action) => Operation::ALL.len() + action as usize,
        }
    }

    fn all() -> impl Iterator<Item = Call> {
        let sagemaker = Operation::ALL.into_iter().map(Self::SageMaker);
        sagemaker.chain(StsAction::ALL.into_iter().map(Self::Sts))
    }

    fn name(self) -> &'static str {
        match self {
            Self::SageMaker(op) => op.name(),
            Self::Sts(action) => action.name(),
        }
    }
}

/// Calls received, per (account, region) and call. Counting takes one map shard's read lock
/// (a write lock the first time a scope calls) and one atomic add.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    by_scope: DashMap<Scope, Arc<[AtomicU64; Call::COUNT]>>,
}

/// Calls per account, then region, then call name.
pub(crate) type ScopedCounts = BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, u64>>>;

impl Stats {
    pub(crate) fn count(&self, scope: &Scope, call: Call) {
        let counts = match self.by_scope.get(scope) {
            Some(counts) => counts.clone(),
            None => self
                .by_scope
                .entry(scope.clone())
                .or_insert_with(|| Arc::new(Default::default()))
                .clone(),
        };
        counts[call.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Every SageMaker operation's calls, summed over all accounts and regions.
    pub(crate) fn totals(&self) -> Vec<(Operation, u64)> {
        let mut totals: Vec<(Operation, u64)> =
            Operation::ALL.into_iter().map(|op| (op, 0)).collect();
        for counts in &self.by_scope {
            for (op, total) in &mut totals {
                *total += counts[Call::SageMaker(*op).index()].load(Ordering::Relaxed);
            }
        }
        totals
    }

    /// The calls made, STS's included, by account and region; calls never made are left out.
    pub(crate) fn by_scope(&self) -> ScopedCounts {
        let mut out = ScopedCounts::new();
        for entry in &self.by_scope {
            let (scope, counts) = (entry.key(), entry.value());
            let made: BTreeMap<&'static str, u64> = Call::all()
                .map(|call| (call.name(), counts[call.index()].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect();
            if !made.is_empty() {
                out.entry(scope.account.clone())
                    .or_default()
                    .insert(scope.region.clone(), made);
            }
        }
        out
    }

    /// Sets every count to zero. The counters stay in place, so a call counted while this runs
    /// is either before the reset or after it, never lost in a counter no one reads.
    pub(crate) fn reset(&self) {
        for counts in &self.by_scope {
            for count in counts.iter() {
                count.store(0, Ordering::Relaxed);
            }
        }
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
    resources: &'a Resources,
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
                self.resources
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

/// What one (account, region) holds.
#[derive(Debug)]
pub(crate) struct Resources {
    pub(crate) scope: Scope,
    /// By lowercase name (pipeline names are unique regardless of case).
    pub(crate) pipelines: DashMap<String, Arc<Pipeline>>,
    pub(crate) executions: DashMap<String, Arc<ExecutionCell>>,
    /// Callback token → the execution holding it.
    pub(crate) callback_tokens: DashMap<String, Arc<ExecutionCell>>,
    idempotency: DashMap<(Operation, String), TokenRecord>,
}

impl Resources {
    pub(crate) fn new(scope: Scope) -> Self {
        Self {
            scope,
            pipelines: DashMap::new(),
            executions: DashMap::new(),
            callback_tokens: DashMap::new(),
            idempotency: DashMap::new(),
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
}

/// Everything the emulator holds.
#[derive(Debug)]
pub(crate) struct Emulator {
    pub(crate) clock: Clock,
    pub(crate) ids: Ids,
    /// The region of calls whose signature names none.
    pub(crate) region: String,
    /// The account of calls not made with a key the emulator's STS issued.
    pub(crate) account_id: String,
    scopes: DashMap<Scope, Arc<Resources>>,
    pub(crate) identity: Identity,
    pub(crate) stats: Stats,
    pub(crate) faults: Faults,
}

impl Emulator {
    pub(crate) fn new(options: &EmulatorOptions) -> Self {
        let ids = Ids::new(options.seed);
        let roles = options
            .role_external_ids
            .iter()
            .map(|(role_arn, external_id)| RoleRule {
                role_arn: role_arn.clone(),
                external_id: Some(external_id.clone()),
                refuse: false,
            });
        let user_id = ids.unique_id("AIDA", &options.account_id);
        Self {
            clock: Clock::new(options.time_scale),
            identity: Identity::new(&options.region, &options.account_id, user_id, roles),
            ids,
            region: options.region.clone(),
            account_id: options.account_id.clone(),
            scopes: DashMap::new(),
            stats: Stats::default(),
            faults: Faults::default(),
        }
    }

    /// What `scope` holds, made empty on its first call.
    pub(crate) fn resources(&self, scope: &Scope) -> Arc<Resources> {
        if let Some(resources) = self.scopes.get(scope) {
            return resources.clone();
        }
        self.scopes
            .entry(scope.clone())
            .or_insert_with(|| Arc::new(Resources::new(scope.clone())))
            .clone()
    }

    /// The execution `arn` names, in the account and region the ARN names: how the admin
    /// surface finds an execution of any account.
    pub(crate) fn execution_by_arn(
        &self,
        arn: &str,
    ) -> Option<(Arc<Resources>, Arc<ExecutionCell>)> {
        let resources = self.scopes.get(&Scope::of_arn(arn)?)?.clone();
        let cell = resources.executions.get(arn)?.clone();
        Some((resources, cell))
    }

    /// What every account and region holds.
    pub(crate) fn all_resources(&self) -> Vec<Arc<Resources>> {
        self.scopes.iter().map(|r| r.value().clone()).collect()
    }

    /// Locks an execution of `resources` and advances it to now (see the engine's module
    /// doc).
    pub(crate) fn lock<'a>(
        &'a self,
        resources: &'a Resources,
        cell: &'a Arc<ExecutionCell>,
    ) -> Locked<'a> {
        // A panic while holding the lock cannot leave the state half-updated in a way the
        // engine cannot continue from, so a poisoned lock is still used.
        let mut execution = cell.inner.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.clock.now();
        let spec = execution.spec.clone();
        execution.state.advance(&spec, now, &self.ids);
        Locked {
            execution,
            cell,
            resources,
            now,
        }
    }
}
