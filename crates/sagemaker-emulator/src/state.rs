//! The emulator's data: per (account, region) the pipelines, executions, callback tokens,
//! idempotency records and SQS queues ([`Resources`]); shared by all, the clock, the ids, the callers' keys
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
    definition::{PipelineSpec, StepKind},
    engine::{ExecutionState, ExecutionStatus},
    faults::Faults,
    identity::{Identity, RoleRule, Scope},
    options::EmulatorOptions,
    queue::{Queue, QueueAttributes, parse_queue_url},
};

/// The operations the emulator serves, in the order stats list them: the 18 SageMaker
/// Pipelines operations of the API model.
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
    ListPipelines,
    DeletePipeline,
    UpdatePipeline,
    UpdatePipelineExecution,
    ListPipelineVersions,
    UpdatePipelineVersion,
    ListPipelineParametersForExecution,
    DescribePipelineDefinitionForExecution,
}

impl Operation {
    pub(crate) const ALL: [Operation; 18] = [
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
        Self::ListPipelines,
        Self::DeletePipeline,
        Self::UpdatePipeline,
        Self::UpdatePipelineExecution,
        Self::ListPipelineVersions,
        Self::UpdatePipelineVersion,
        Self::ListPipelineParametersForExecution,
        Self::DescribePipelineDefinitionForExecution,
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
            Self::ListPipelines => "ListPipelines",
            Self::DeletePipeline => "DeletePipeline",
            Self::UpdatePipeline => "UpdatePipeline",
            Self::UpdatePipelineExecution => "UpdatePipelineExecution",
            Self::ListPipelineVersions => "ListPipelineVersions",
            Self::UpdatePipelineVersion => "UpdatePipelineVersion",
            Self::ListPipelineParametersForExecution => "ListPipelineParametersForExecution",
            Self::DescribePipelineDefinitionForExecution => {
                "DescribePipelineDefinitionForExecution"
            }
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

/// The SQS actions the emulator serves on the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SqsAction {
    CreateQueue,
    GetQueueUrl,
    ListQueues,
    SendMessage,
    ReceiveMessage,
    DeleteMessage,
    ChangeMessageVisibility,
    PurgeQueue,
}

impl SqsAction {
    pub(crate) const ALL: [SqsAction; 8] = [
        Self::CreateQueue,
        Self::GetQueueUrl,
        Self::ListQueues,
        Self::SendMessage,
        Self::ReceiveMessage,
        Self::DeleteMessage,
        Self::ChangeMessageVisibility,
        Self::PurgeQueue,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::CreateQueue => "CreateQueue",
            Self::GetQueueUrl => "GetQueueUrl",
            Self::ListQueues => "ListQueues",
            Self::SendMessage => "SendMessage",
            Self::ReceiveMessage => "ReceiveMessage",
            Self::DeleteMessage => "DeleteMessage",
            Self::ChangeMessageVisibility => "ChangeMessageVisibility",
            Self::PurgeQueue => "PurgeQueue",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|action| action.name() == name)
    }
}

/// A call the stats count: a SageMaker operation, an STS action or an SQS action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Call {
    SageMaker(Operation),
    Sts(StsAction),
    Sqs(SqsAction),
}

impl Call {
    const COUNT: usize = Operation::ALL.len() + StsAction::ALL.len() + SqsAction::ALL.len();

    fn index(self) -> usize {
        match self {
            Self::SageMaker(op) => op as usize,
            Self::Sts(action) => Operation::ALL.len() + action as usize,
            Self::Sqs(action) => Operation::ALL.len() + StsAction::ALL.len() + action as usize,
        }
    }

    fn all() -> impl Iterator<Item = Call> {
        let sagemaker = Operation::ALL.into_iter().map(Self::SageMaker);
        let sts = StsAction::ALL.into_iter().map(Self::Sts);
        sagemaker
            .chain(sts)
            .chain(SqsAction::ALL.into_iter().map(Self::Sqs))
    }

    fn name(self) -> &'static str {
        match self {
            Self::SageMaker(op) => op.name(),
            Self::Sts(action) => action.name(),
            Self::Sqs(action) => action.name(),
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

    /// The calls made, STS's and SQS's included, by account and region; calls never made are left out.
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

/// A pipeline as CreatePipeline made it and UpdatePipeline changed it.
#[derive(Debug)]
pub(crate) struct Pipeline {
    pub(crate) name: String,
    pub(crate) arn: String,
    pub(crate) creation_time: VTime,
    /// Everything that changes, behind one lock. Lock order: a pipeline, then one of its
    /// executions (DeletePipeline looks at each while holding it), then a map shard; nothing
    /// takes a pipeline while holding an execution.
    state: Mutex<PipelineState>,
}

impl Pipeline {
    pub(crate) fn new(
        name: String,
        arn: String,
        creation_time: VTime,
        state: PipelineState,
    ) -> Self {
        Self {
            name,
            arn,
            creation_time,
            state: Mutex::new(state),
        }
    }

    /// The pipeline's state, locked. Critical sections are short and never await.
    pub(crate) fn lock(&self) -> MutexGuard<'_, PipelineState> {
        // Every change under this lock leaves the state whole, so a poisoned lock is still used.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What UpdatePipeline changes, the versions it made, and the pipeline's executions.
#[derive(Debug)]
pub(crate) struct PipelineState {
    pub(crate) display_name: String,
    pub(crate) description: Option<String>,
    pub(crate) role_arn: String,
    pub(crate) parallelism: Option<u32>,
    pub(crate) last_modified_time: VTime,
    /// Oldest first: version N is `versions[N - 1]`, and there is always at least one.
    pub(crate) versions: Vec<PipelineVersion>,
    /// Its executions, oldest first, and when one was last started.
    pub(crate) executions: Vec<Arc<ExecutionCell>>,
    pub(crate) last_run_time: Option<VTime>,
    /// Set by DeletePipeline, so that a call that found the pipeline just before cannot start
    /// an execution of it or change it afterwards.
    pub(crate) deleted: bool,
}

impl PipelineState {
    /// The newest version: what DescribePipeline shows and StartPipelineExecution runs.
    pub(crate) fn latest(&self) -> &PipelineVersion {
        // `versions` is never empty (see above); an empty one would be a bug of this module.
        &self.versions[self.versions.len() - 1]
    }

    /// Version `id`, or the newest when `None`.
    pub(crate) fn version(&self, id: Option<i64>) -> Option<&PipelineVersion> {
        match id {
            None => Some(self.latest()),
            Some(id) => usize::try_from(id)
                .ok()
                .and_then(|id| id.checked_sub(1))
                .and_then(|i| self.versions.get(i)),
        }
    }
}

/// One version of a pipeline's definition: CreatePipeline makes version 1, each
/// UpdatePipeline the next.
#[derive(Debug)]
pub(crate) struct PipelineVersion {
    pub(crate) id: u64,
    pub(crate) definition: Arc<str>,
    pub(crate) spec: Arc<PipelineSpec>,
    pub(crate) creation_time: VTime,
    pub(crate) display_name: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) last_execution_arn: Option<String>,
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
    /// The version of the pipeline it runs, and that version's definition.
    pub(crate) pipeline_version_id: u64,
    pub(crate) definition: Arc<str>,
    pub(crate) definition_time: VTime,
    /// The parameters it started with, the definition's defaults filled in, in the
    /// definition's order.
    pub(crate) parameters: Vec<(String, String)>,
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
    /// The queues its Callback steps send to, (account, name): what a receiver on one of
    /// them must advance (see [`Emulator::advance_senders`]).
    sends_to: Vec<(String, String)>,
    inner: Mutex<Execution>,
}

impl ExecutionCell {
    pub(crate) fn new(arn: String, creation_time: VTime, execution: Execution) -> Self {
        let mut sends_to: Vec<(String, String)> = Vec::new();
        for step in &execution.spec.steps {
            if let StepKind::Callback { sqs_queue_url } = &step.kind
                && let Some((account, name)) = parse_queue_url(sqs_queue_url)
                && !sends_to.iter().any(|(a, n)| a == account && n == name)
            {
                sends_to.push((account.to_string(), name.to_string()));
            }
        }
        Self {
            arn,
            creation_time,
            sends_to,
            inner: Mutex::new(execution),
        }
    }
}

/// An execution locked and advanced to `now`. When it is released, the callback tokens its
/// steps issued meanwhile become findable by SendPipelineExecutionStep*, so a token is known
/// from the moment anyone can have seen it, and the messages its Callback steps sent
/// meanwhile reach the SQS queues their `SqsQueueUrl` names.
pub(crate) struct Locked<'a> {
    execution: MutexGuard<'a, Execution>,
    cell: &'a Arc<ExecutionCell>,
    resources: &'a Resources,
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
        // Lock order: an execution, then a shard of the callback-token map or of the scope
        // and queue maps, then a queue; nothing takes them the other way round.
        let execution = &mut *self.execution;
        for message in &execution.state.messages[execution.registered_messages..] {
            if let Some(token) = message.body.get("token").and_then(|t| t.as_str()) {
                self.resources
                    .callback_tokens
                    .entry(token.to_string())
                    .or_insert_with(|| self.cell.clone());
            }
            // A queue of the URL's account in the execution's region, made on first use.
            if let Some((account, name)) = parse_queue_url(&message.queue_url) {
                let scope = Scope {
                    account: account.to_string(),
                    region: self.resources.scope.region.clone(),
                };
                let queue = self.emulator.queue(&scope, name);
                queue.send(message.body.to_string(), None, &self.emulator.ids);
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
    /// SQS queues by name.
    pub(crate) queues: DashMap<String, Arc<Queue>>,
}

impl Resources {
    pub(crate) fn new(scope: Scope) -> Self {
        Self {
            scope,
            pipelines: DashMap::new(),
            executions: DashMap::new(),
            callback_tokens: DashMap::new(),
            idempotency: DashMap::new(),
            queues: DashMap::new(),
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

    /// The SQS queue `name` of `scope`, made with the default attributes if there is none:
    /// where a Callback step's messages go.
    pub(crate) fn queue(&self, scope: &Scope, name: &str) -> Arc<Queue> {
        self.resources(scope)
            .queues
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Queue::new(QueueAttributes::default())))
            .clone()
    }

    /// Advances every execution of `region` (any account) whose Callback steps send to the
    /// queue `name` of `account`, so that the messages due by now are in it: nothing runs in
    /// the background, and a consumer waiting on SQS may be the only one looking. Answers the
    /// emulated time of the next step change of those executions, when the receiver must
    /// look again.
    pub(crate) fn advance_senders(&self, account: &str, region: &str, name: &str) -> Option<VTime> {
        let scopes: Vec<Arc<Resources>> = self
            .scopes
            .iter()
            .filter(|r| r.key().region == region)
            .map(|r| r.value().clone())
            .collect();
        let mut next: Option<VTime> = None;
        for resources in scopes {
            let cells: Vec<Arc<ExecutionCell>> = resources
                .executions
                .iter()
                .filter(|c| c.sends_to.iter().any(|(a, n)| a == account && n == name))
                .map(|c| c.value().clone())
                .collect();
            for cell in &cells {
                // Locking advances it, and releasing the lock delivers its new messages.
                let execution = self.lock(&resources, cell);
                if matches!(
                    execution.state.status,
                    ExecutionStatus::Executing | ExecutionStatus::Stopping
                ) && let Some(t) = execution.state.next_event()
                {
                    next = Some(next.map_or(t, |n| n.min(t)));
                }
            }
        }
        next
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
            emulator: self,
            now,
        }
    }
}
