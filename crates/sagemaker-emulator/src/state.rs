//! The emulator's data: per (account, region) the pipelines, executions, callback tokens,
//! idempotency records and SQS queues ([`Resources`]); shared by all, the clock, the ids, the callers' keys
//! and roles, call counts and faults. Every map is sharded (DashMap), and every execution and
//! every ClientRequestToken record has its own lock, so requests about different executions
//! never wait for each other: there is no global lock on the request path.
//!
//! A call reaches only the resources of its own (account, region), so what another account
//! or region holds is invisible to it by construction, as in SageMaker.
//!
//! Whoever locks an execution advances it (see `engine`), and the status changes that made
//! become SageMaker's EventBridge events there and then: kept with the execution, and sent to
//! the SQS queues that receive its (account, region)'s events (see `events`). So that those
//! queues get every event when it is due even if nobody looks at the execution, the event
//! pump ([`Emulator::pump_events`], a task of the server) wakes at the next step change of
//! each running execution that has such queues, and locks it then. While no queue receives
//! events the pump has nothing to do and sleeps.

use std::{
    cmp,
    collections::{BTreeMap, BinaryHeap},
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
};

use dashmap::DashMap;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{
    clock::{Clock, Ids, VTime},
    definition::{PipelineSpec, StepKind},
    engine::{ExecutionState, ExecutionStatus},
    events::{EventTarget, Events, ExecutionInfo, render},
    faults::Faults,
    identity::{Identity, Principal, RoleRule, Scope, StaticKey},
    options::EmulatorOptions,
    queue::{Queue, QueueAttributes, parse_queue_url},
    quotas::Quotas,
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
    AssumeRoleWithWebIdentity,
    GetCallerIdentity,
}

impl StsAction {
    pub(crate) const ALL: [StsAction; 3] = [
        Self::AssumeRole,
        Self::AssumeRoleWithWebIdentity,
        Self::GetCallerIdentity,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AssumeRole => "AssumeRole",
            Self::AssumeRoleWithWebIdentity => "AssumeRoleWithWebIdentity",
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
    DeleteMessageBatch,
    ChangeMessageVisibility,
    PurgeQueue,
}

impl SqsAction {
    pub(crate) const ALL: [SqsAction; 9] = [
        Self::CreateQueue,
        Self::GetQueueUrl,
        Self::ListQueues,
        Self::SendMessage,
        Self::ReceiveMessage,
        Self::DeleteMessage,
        Self::DeleteMessageBatch,
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
            Self::DeleteMessageBatch => "DeleteMessageBatch",
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
    /// Of those, the calls answered ThrottlingException (by a quota or a fault).
    throttled: DashMap<Scope, Arc<[AtomicU64; Call::COUNT]>>,
}

/// Calls per account, then region, then call name.
pub(crate) type ScopedCounts = BTreeMap<String, BTreeMap<String, BTreeMap<&'static str, u64>>>;

impl Stats {
    pub(crate) fn count(&self, scope: &Scope, call: Call) {
        Self::add(&self.by_scope, scope, call);
    }

    /// Counts a call answered ThrottlingException.
    pub(crate) fn count_throttled(&self, scope: &Scope, call: Call) {
        Self::add(&self.throttled, scope, call);
    }

    fn add(counts: &DashMap<Scope, Arc<[AtomicU64; Call::COUNT]>>, scope: &Scope, call: Call) {
        let counts = match counts.get(scope) {
            Some(counts) => counts.clone(),
            None => counts
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
        Self::scoped(&self.by_scope)
    }

    /// The calls answered ThrottlingException, by account and region, likewise.
    pub(crate) fn throttled_by_scope(&self) -> ScopedCounts {
        Self::scoped(&self.throttled)
    }

    fn scoped(counts: &DashMap<Scope, Arc<[AtomicU64; Call::COUNT]>>) -> ScopedCounts {
        let mut out = ScopedCounts::new();
        for entry in counts {
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
        for counts in self.by_scope.iter().chain(self.throttled.iter()) {
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
    /// The EventBridge events its status changes made, oldest first, as generated (before
    /// any fault of their delivery).
    pub(crate) events: Vec<Value>,
    /// The time of its next step change that the event pump was told of.
    pub(crate) event_due: Option<VTime>,
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

impl Locked<'_> {
    /// Turns the status changes made so far into events: kept with the execution, and sent
    /// to the queues that receive its (account, region)'s events. Then, if there are such
    /// queues, tells the event pump when the execution next changes.
    fn flush_events(&mut self) {
        let scope = &self.resources.scope;
        let emulator = self.emulator;
        let execution = &mut *self.execution;
        let queues = emulator.events.queues_of(scope);
        if !execution.state.transitions.is_empty() {
            let transitions = std::mem::take(&mut execution.state.transitions);
            let info = ExecutionInfo {
                scope,
                pipeline_arn: &execution.pipeline_arn,
                execution_arn: &self.cell.arn,
                display_name: &execution.display_name,
                description: execution.description.as_deref(),
                start_time: execution.state.creation_time,
                spec: &execution.spec,
            };
            let events: Vec<Value> = transitions
                .iter()
                .map(|t| render(&info, t, &emulator.ids))
                .collect();
            for name in &queues {
                let queue = emulator.queue(scope, name);
                for (body, after) in emulator.events.plan(&events, &emulator.ids) {
                    queue.send_after(body, after, &emulator.ids);
                }
            }
            execution.events.extend(events);
        }
        if queues.is_empty() {
            return;
        }
        let next = execution.state.next_event();
        if execution.event_due != next {
            execution.event_due = next;
            if let Some(at) = next {
                emulator.schedule(Due {
                    at,
                    scope: scope.clone(),
                    arn: self.cell.arn.clone(),
                });
            }
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // Lock order: an execution, then a shard of the callback-token map or of the scope
        // and queue maps, then a queue; nothing takes them the other way round.
        self.flush_events();
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

/// An execution whose next step change is due at `at`: when the event pump must lock it.
#[derive(Debug)]
pub(crate) struct Due {
    at: VTime,
    scope: Scope,
    arn: String,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == cmp::Ordering::Equal
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    /// The soonest is the greatest, so that a (max-)heap gives it first.
    fn cmp(&self, other: &Self) -> cmp::Ordering {
        other.at.total_cmp(&self.at)
    }
}

/// Everything the emulator holds.
#[derive(Debug)]
pub(crate) struct Emulator {
    pub(crate) clock: Clock,
    pub(crate) ids: Ids,
    /// The region of calls whose signature names none.
    pub(crate) region: String,
    /// The default account (`--account-id`): of every key but those STS issued and those
    /// given with another account.
    pub(crate) account_id: String,
    scopes: DashMap<Scope, Arc<Resources>>,
    pub(crate) identity: Identity,
    pub(crate) stats: Stats,
    pub(crate) faults: Faults,
    pub(crate) quotas: Quotas,
    /// The queues that receive events, and the faults of their delivery.
    pub(crate) events: Events,
    /// To the event pump: executions to lock when their next step change is due.
    due: mpsc::UnboundedSender<Due>,
    /// The event pump's end, until the pump takes it.
    due_receiver: Mutex<Option<mpsc::UnboundedReceiver<Due>>>,
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
        // Every key but those STS issues belongs to the IAM user of its account.
        let user = |account: &str| Principal::user(account, ids.unique_id("AIDA", account));
        let keys: Vec<(String, StaticKey)> = options
            .access_keys
            .iter()
            .map(|key| {
                let account = key.account_id.as_deref().unwrap_or(&options.account_id);
                let key_of = StaticKey {
                    principal: user(account),
                    secret_access_key: key.secret_access_key.clone(),
                };
                (key.access_key_id.clone(), key_of)
            })
            .collect();
        let identity = Identity::new(
            &options.region,
            user(&options.account_id),
            keys,
            roles,
            options.web_identity_issuers.clone(),
        );
        let default_scope = Scope {
            account: options.account_id.clone(),
            region: options.region.clone(),
        };
        let (due, due_receiver) = mpsc::unbounded_channel();
        Self {
            clock: Clock::new(options.time_scale),
            identity,
            ids,
            region: options.region.clone(),
            account_id: options.account_id.clone(),
            scopes: DashMap::new(),
            stats: Stats::default(),
            faults: Faults::default(),
            quotas: {
                let quotas = Quotas::default();
                for setting in &options.quotas {
                    quotas.set(&setting.operation, None, setting.quota);
                }
                quotas
            },
            events: Events::new(&default_scope, &options.events_queues),
            due,
            due_receiver: Mutex::new(Some(due_receiver)),
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
        let mut locked = Locked {
            execution,
            cell,
            resources,
            emulator: self,
            now,
        };
        // What the holder reads of the events includes those of this advance.
        locked.flush_events();
        locked
    }

    /// Adds a queue that receives events, and tells the event pump of the running executions
    /// of its (account, region): false if it was one already.
    pub(crate) fn add_event_target(&self, target: &EventTarget) -> bool {
        if !self.events.add(target) {
            return false;
        }
        let scope = Scope {
            account: target.account.clone(),
            region: target.region.clone(),
        };
        let resources = self.resources(&scope);
        let cells: Vec<Arc<ExecutionCell>> = resources
            .executions
            .iter()
            .map(|c| c.value().clone())
            .collect();
        for cell in &cells {
            let mut execution = self.lock(&resources, cell);
            // The pump may have dropped it while there was no target: tell it again.
            execution.event_due = None;
        }
        true
    }

    fn schedule(&self, due: Due) {
        // Refused only once the pump has ended with the server: nothing is due any more.
        let _ = self.due.send(due);
    }

    /// The event pump, until the task running it is ended: locks each running execution
    /// whose (account, region) has queues that receive events when its next step change is
    /// due, so that the change is applied and its events sent then, even if nobody looks at
    /// the execution. Locking again when the lock is released schedules the next one. It
    /// waits on its channel while nothing is due, so it costs nothing while no queue
    /// receives events. Only the first call pumps; any other returns at once.
    pub(crate) async fn pump_events(self: Arc<Self>) {
        let taken = self
            .due_receiver
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut receiver) = taken else { return };
        let mut due: BinaryHeap<Due> = BinaryHeap::new();
        loop {
            let now = self.clock.now();
            while let Some(next) = due.peek()
                && next.at <= now
            {
                if let Some(next) = due.pop() {
                    self.advance_due(&next);
                }
            }
            let wake = due
                .peek()
                .map(|next| tokio::time::Instant::from_std(self.clock.instant_at(next.at)));
            let sleep = async {
                match wake {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                received = receiver.recv() => match received {
                    Some(next) => due.push(next),
                    None => return,
                },
                () = sleep => {}
            }
        }
    }

    /// Locks (so advances, and delivers the events of) the execution `due` names, if it is
    /// still there.
    fn advance_due(&self, due: &Due) {
        let Some(resources) = self.scopes.get(&due.scope).map(|r| r.value().clone()) else {
            return;
        };
        let Some(cell) = resources
            .executions
            .get(&due.arn)
            .map(|c| c.value().clone())
        else {
            return;
        };
        drop(self.lock(&resources, &cell));
    }
}
