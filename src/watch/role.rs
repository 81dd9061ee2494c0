//! A poller's role, and the gauge of pollers by role (`pipeline_control_watch_pollers`).

use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

/// Who reads SageMaker for a watched execution, as seen from one replica's poller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    /// This poller reads SageMaker and publishes to the other replicas.
    Holder,
    /// Another replica's poller reads; this one feeds its watchers from the shared row.
    Follower,
    /// This poller reads SageMaker for its own watchers only: one process (SQLite), or the
    /// database does not answer.
    Alone,
}

impl Role {
    /// The label of the gauge.
    fn label(self) -> &'static str {
        match self {
            Self::Holder => "holder",
            Self::Follower => "follower",
            Self::Alone => "alone",
        }
    }
}

/// A poller's current role, counted in the gauge of its role while it lasts.
pub(super) struct Counted {
    role: Role,
    gauge: Gauge,
}

impl Counted {
    pub(super) fn new(metrics: &Metrics, role: Role) -> Self {
        let gauge = metrics.watch_role(role.label());
        gauge.inc();
        Self { role, gauge }
    }

    pub(super) fn get(&self) -> Role {
        self.role
    }

    /// Moves to `role`; `true` when that is a change.
    pub(super) fn set(&mut self, metrics: &Metrics, role: Role) -> bool {
        if self.role == role {
            return false;
        }
        *self = Self::new(metrics, role);
        true
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
