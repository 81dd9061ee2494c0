//! GetExecution's reads of SageMaker, shared: however many callers read one execution, it is
//! read about once per poll interval.
//!
//! A read is answered, in this order:
//! 1. from the execution's last read (*snapshot*) while it is younger than the poll interval,
//!    whoever made it: its poller on this replica, or another GetExecution ([`crate::recent`]);
//! 2. by joining a read of it already in flight (*shared*): concurrent reads cost one;
//! 3. by reading SageMaker (*upstream*): DescribePipelineExecution and every page of
//!    ListPipelineExecutionSteps.
//!
//! Neither a snapshot nor a read in flight answers once this process changed the execution
//! after that read began (a stop, an answered callback): a GetExecution after a StopExecution
//! shows the stop. Only found executions are kept: "not found" and errors go to the reads in
//! flight with them and no further (an execution just started may not be visible yet).
//!
//! A read in flight is held by the callers waiting for it alone (the table of reads in flight,
//! bounded in entries, has a weak handle): when the last of them goes away (its deadline,
//! say), the call is dropped, and the next read starts afresh.

use std::{sync::Arc, time::Duration};

use futures_util::{
    FutureExt as _,
    future::{BoxFuture, Shared, WeakShared},
};
use quick_cache::sync::{Cache, EntryAction, EntryResult};

use crate::{
    domain::{ExecutionArn, ExecutionSnapshot},
    error::Error,
    estate::Estate,
    metrics::Metrics,
    recent::Stamp,
    sagemaker::{SageMaker, UpstreamError},
};

/// Executions with a read in flight, at most (more are read without being shared).
const IN_FLIGHT: usize = 10_000;

/// DescribePipelineExecution and every page of ListPipelineExecutionSteps.
type Reading = BoxFuture<'static, Result<Option<Arc<ExecutionSnapshot>>, UpstreamError>>;

/// One read of SageMaker, which every concurrent reader of the execution awaits.
type Flight = Shared<Reading>;

/// A read in flight, and when it began.
#[derive(Clone)]
struct InFlight {
    began: Stamp,
    flight: WeakShared<Reading>,
}

/// Where an answer came from: the `source` label of `pipeline_control_reads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Upstream,
    Shared,
    Snapshot,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Shared => "shared",
            Self::Snapshot => "snapshot",
        }
    }
}

/// The reads of every execution.
pub(crate) struct Reads {
    estate: Arc<Estate>,
    /// How long a read answers for its execution: the poll interval.
    max_age: Duration,
    in_flight: Cache<String, InFlight>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Reads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reads")
            .field("max_age", &self.max_age)
            .field("in_flight", &self.in_flight.len())
            .finish_non_exhaustive()
    }
}

impl Reads {
    /// Reads through `estate`'s clients, each answering for `max_age` (the poll interval).
    pub(crate) fn new(estate: Arc<Estate>, max_age: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            estate,
            max_age,
            in_flight: Cache::new(IN_FLIGHT),
            metrics,
        }
    }

    /// The execution as read within the poll interval, counted by where it came from.
    pub(crate) async fn execution(
        &self,
        arn: &ExecutionArn,
    ) -> Result<Arc<ExecutionSnapshot>, Error> {
        // Refused (an account or region no longer served) before any answer, kept or not.
        let sagemaker = self.estate.client(arn).await?;
        let (source, answer) = self.read(arn, sagemaker).await;
        self.metrics.read_answered(source.as_str());
        answer?.ok_or(Error::ExecutionNotFound)
    }

    async fn read(
        &self,
        arn: &ExecutionArn,
        sagemaker: SageMaker,
    ) -> (
        Source,
        Result<Option<Arc<ExecutionSnapshot>>, UpstreamError>,
    ) {
        let recent = self.estate.recent();
        if let Some(snapshot) = recent.fresh(arn.as_str(), self.max_age) {
            return (Source::Snapshot, Ok(Some(snapshot)));
        }
        // Under the table's lock for this execution: one reader starts a read, the others
        // find it.
        let looked = self
            .in_flight
            .entry_async(arn.as_str(), |_, entry| {
                match entry.flight.upgrade() {
                    Some(flight) if recent.current(arn.as_str(), entry.began) => {
                        EntryAction::Retain(flight)
                    }
                    // Begun before a change, or everyone who waited for it went away.
                    _ => EntryAction::ReplaceWithGuard,
                }
            })
            .await;
        let (source, flight) = match looked {
            EntryResult::Retained(flight) => (Source::Shared, flight),
            EntryResult::Vacant(placeholder) | EntryResult::Replaced(placeholder, _) => {
                // Stamped before the call is made (the read starts when first awaited).
                let began = recent.stamp();
                let flight = fly(sagemaker, arn);
                if let Some(weak) = flight.downgrade() {
                    let _ = placeholder.insert(InFlight {
                        began,
                        flight: weak,
                    });
                }
                (Source::Upstream, flight)
            }
            // Neither comes of `entry_async` with this callback: read, unshared.
            EntryResult::Removed(..) | EntryResult::Timeout => {
                (Source::Upstream, fly(sagemaker, arn))
            }
        };
        let answer = flight.clone().await;
        // Done: later reads find its snapshot (kept by the client) or start their own.
        self.in_flight.remove_if(arn.as_str(), |entry| {
            entry
                .flight
                .upgrade()
                .is_none_or(|other| other.ptr_eq(&flight))
        });
        (source, answer)
    }
}

/// A read of `arn`, made when first awaited.
fn fly(sagemaker: SageMaker, arn: &ExecutionArn) -> Flight {
    let arn = arn.clone();
    async move { sagemaker.execution(&arn).await }
        .boxed()
        .shared()
}
