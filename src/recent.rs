//! What this process lately read of executions and changed, so that reads of SageMaker can be
//! shared without ever answering for an execution as it was before a change the service made.
//!
//! Every read of an execution (DescribePipelineExecution and its steps, by a poller or a
//! GetExecution) is stamped when it begins, and the last of each execution is kept in a cache
//! bounded by the steps it holds ([`STEPS_KEPT`]). Every call that changes an execution (a
//! stop sent, a callback answered) records a change of it once SageMaker has answered, or once
//! the call was abandoned: the change's stamp comes after every read begun before SageMaker
//! acted. A read is *current* while no change of its execution is stamped after it, and
//! answers for the execution while current and younger than the poll interval
//! ([`Recent::fresh`]). So a read begun after a StopExecution has answered sees the stop, and
//! no read begun before it answers anyone any more.
//!
//! The changes of at most [`CHANGES_KEPT`] executions are kept; beyond that all are forgotten
//! at once and every read begun before is taken as changed (a floor), which costs a read of
//! SageMaker each, never a stale answer. Changes made through other replicas are not known
//! here: like a poller's snapshot, a read shared within the poll interval may miss them.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use quick_cache::{
    Weighter,
    sync::{Cache, EntryAction, EntryResult},
};
use tokio::time::Instant;

use crate::domain::ExecutionSnapshot;

/// Executions whose last change is kept.
const CHANGES_KEPT: usize = 10_000;

/// Steps of the last reads kept, all executions together (each read weighs one more than its
/// steps): a few thousand executions of ordinary pipelines.
const STEPS_KEPT: u64 = 100_000;

/// When a read began: in the order of changes, and on the clock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    order: u64,
    at: Instant,
}

/// A read kept, with when it began.
type Kept = (Arc<ExecutionSnapshot>, Stamp);

/// Weighs a read kept by its steps.
#[derive(Debug, Clone, Copy)]
struct Steps;

impl Weighter<String, Kept> for Steps {
    fn weight(&self, _arn: &String, (snapshot, _): &Kept) -> u64 {
        1 + snapshot.steps.len() as u64
    }
}

/// What this process lately read and changed.
pub(crate) struct Recent {
    clock: AtomicU64,
    changes: Mutex<Changes>,
    reads: Cache<String, Kept, Steps>,
}

#[derive(Debug, Default)]
struct Changes {
    /// The stamp of each execution's last change.
    last: HashMap<String, u64>,
    /// Reads begun at or before this are taken as changed (changes were forgotten).
    floor: u64,
}

impl std::fmt::Debug for Recent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("reads_kept", &self.reads.len())
            .finish_non_exhaustive()
    }
}

impl Default for Recent {
    fn default() -> Self {
        Self {
            clock: AtomicU64::new(0),
            changes: Mutex::default(),
            reads: Cache::with_weighter(10_000, STEPS_KEPT, Steps),
        }
    }
}

impl Recent {
    /// The stamp of a read about to begin.
    pub(crate) fn stamp(&self) -> Stamp {
        Stamp {
            order: self.clock.fetch_add(1, Ordering::SeqCst) + 1,
            at: Instant::now(),
        }
    }

    /// Keeps what a read that began at `began` found of its execution, unless a read begun
    /// later is kept.
    pub(crate) fn read(&self, snapshot: &Arc<ExecutionSnapshot>, began: Stamp) {
        let kept = (snapshot.clone(), began);
        let no_wait = Some(Duration::ZERO);
        match self.reads.entry(&snapshot.arn, no_wait, |_, old| {
            if old.1.order < began.order {
                *old = kept.clone();
            }
            EntryAction::Retain(())
        }) {
            EntryResult::Vacant(placeholder) => {
                let _ = placeholder.insert(kept);
            }
            // Another read is putting its own in at this moment: either is as good.
            EntryResult::Retained(()) | EntryResult::Timeout => {}
            EntryResult::Removed(..) | EntryResult::Replaced(..) => {}
        }
    }

    /// The last read of `arn`, if it still tells the execution's state: no change of it since
    /// the read began, and begun less than `max_age` ago.
    pub(crate) fn fresh(&self, arn: &str, max_age: Duration) -> Option<Arc<ExecutionSnapshot>> {
        let (snapshot, began) = self.reads.get(arn)?;
        (began.at.elapsed() < max_age && self.current(arn, began)).then_some(snapshot)
    }

    /// Whether no change of `arn` came after the read that began at `stamp`.
    pub(crate) fn current(&self, arn: &str, stamp: Stamp) -> bool {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        stamp.order > changes.floor
            && changes
                .last
                .get(arn)
                .is_none_or(|changed| stamp.order > *changed)
    }

    /// Records a change of `arn` when the returned guard is dropped: hold it across the call
    /// that changes the execution, so that the change is stamped after SageMaker's answer,
    /// whether the call ends or is abandoned.
    pub(crate) fn changing<'a>(&'a self, arn: &'a str) -> Changing<'a> {
        Changing { recent: self, arn }
    }

    fn changed(&self, arn: &str) {
        let order = self.stamp().order;
        let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        if changes.last.len() >= CHANGES_KEPT && !changes.last.contains_key(arn) {
            changes.floor = order;
            changes.last.clear();
        }
        changes.last.insert(arn.to_string(), order);
    }
}

/// Records a change of its execution when dropped ([`Recent::changing`]).
#[derive(Debug)]
pub(crate) struct Changing<'a> {
    recent: &'a Recent,
    arn: &'a str,
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        self.recent.changed(self.arn);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/a";
    const B: &str = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/b";
    const LONG: Duration = Duration::from_secs(3600);

    fn snapshot(arn: &str, name: &str) -> Arc<ExecutionSnapshot> {
        Arc::new(ExecutionSnapshot {
            arn: arn.to_string(),
            pipeline_arn: String::new(),
            display_name: name.to_string(),
            status: crate::domain::ExecutionStatus::Executing,
            failure_reason: String::new(),
            creation_time: None,
            last_modified_time: None,
            steps: Vec::new(),
            observed_at: chrono::Utc::now(),
        })
    }

    #[test]
    fn a_read_begun_before_a_change_of_its_execution_no_longer_answers() {
        let recent = Recent::default();
        let before = recent.stamp();
        recent.read(&snapshot(A, "before"), before);
        recent.read(&snapshot(B, "other"), before);
        assert!(recent.fresh(A, LONG).is_some());
        drop(recent.changing(A));
        assert!(recent.fresh(A, LONG).is_none(), "read before the change");
        assert!(recent.fresh(B, LONG).is_some(), "another execution");
        recent.read(&snapshot(A, "after"), recent.stamp());
        assert_eq!(recent.fresh(A, LONG).unwrap().display_name, "after");
    }

    #[test]
    fn a_change_in_progress_counts_once_it_is_over() {
        let recent = Recent::default();
        let changing = recent.changing(A);
        // Begun while SageMaker was acting: it may or may not have seen the change.
        let during = recent.stamp();
        assert!(recent.current(A, during));
        drop(changing);
        assert!(!recent.current(A, during));
    }

    #[test]
    fn the_read_begun_last_is_kept_whichever_ends_first() {
        let recent = Recent::default();
        let (first, second) = (recent.stamp(), recent.stamp());
        recent.read(&snapshot(A, "second"), second);
        recent.read(&snapshot(A, "first"), first);
        assert_eq!(recent.fresh(A, LONG).unwrap().display_name, "second");
    }

    #[test]
    fn a_read_answers_within_its_age() {
        let recent = Recent::default();
        recent.read(&snapshot(A, "a"), recent.stamp());
        assert!(recent.fresh(A, LONG).is_some());
        assert!(recent.fresh(A, Duration::ZERO).is_none(), "older than that");
    }

    #[test]
    fn forgetting_changes_takes_every_earlier_read_as_changed() {
        let recent = Recent::default();
        let before = recent.stamp();
        for i in 0..CHANGES_KEPT {
            drop(recent.changing(&format!("{B}{i}")));
        }
        assert!(recent.current(A, before));
        drop(recent.changing(A));
        assert_eq!(recent.changes.lock().unwrap().last.len(), 1);
        assert!(!recent.current(B, before), "forgotten: taken as changed");
        assert!(recent.current(&format!("{B}0"), recent.stamp()));
    }

    #[test]
    fn reads_kept_are_bounded_by_their_steps() {
        let recent = Recent::default();
        for i in 0..(STEPS_KEPT * 2) {
            recent.read(&snapshot(&format!("{A}{i}"), "x"), recent.stamp());
        }
        assert!(recent.reads.weight() <= STEPS_KEPT);
    }
}
