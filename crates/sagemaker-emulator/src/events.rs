//! SageMaker's EventBridge events, as an EventBridge rule with an SQS target delivers them to
//! a queue: what an event says ([`render`]), which queues receive the events of which
//! (account, region) ([`Events`]), and what reaches them under the faults in force
//! ([`Events::plan`]).
//!
//! SageMaker sends `SageMaker Model Building Pipeline Execution Status Change` on every change
//! of an execution's status (its start, `Executing`, included) and `SageMaker Model Building
//! Pipeline Execution Step Status Change` on every change of a step's. The rule's target gets
//! the whole event as the message body, in EventBridge's envelope: `version` "0", `id`,
//! `detail-type`, `source` "aws.sagemaker", `account`, `time` (the emulated moment of the
//! change, in whole seconds as EventBridge writes it), `region`, `resources` (the pipeline's
//! and the execution's ARNs) and `detail`.
//!
//! A target is a queue of the emulator's own SQS, in one (account, region): it receives the
//! events of that (account, region)'s executions only, as a rule of that account and region
//! would. The queue is made on first use if it does not exist, as a Callback step's is. An
//! event is rendered once, when its change is applied; the faults change what is sent, never
//! what was generated (the admin surface lists that).

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use dashmap::DashMap;
use serde::Serialize;
use serde_json::{Value, json};

use super::{
    clock::{Ids, VTime, iso8601},
    definition::PipelineSpec,
    engine::{Change, ExecutionStatus, StepStatus, Transition},
    faults::EventFaults,
    identity::Scope,
};

/// The detail-type of an execution's status change.
pub(crate) const EXECUTION_STATUS_CHANGE: &str =
    "SageMaker Model Building Pipeline Execution Status Change";
/// The detail-type of a step's status change.
pub(crate) const STEP_STATUS_CHANGE: &str =
    "SageMaker Model Building Pipeline Execution Step Status Change";

/// A queue that receives events, as the admin surface lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct EventTarget {
    pub(crate) queue_name: String,
    pub(crate) account: String,
    pub(crate) region: String,
}

/// Where an event's execution is, what it is called, and its definition: what an event says
/// besides the change itself.
#[derive(Debug)]
pub(crate) struct ExecutionInfo<'a> {
    pub(crate) scope: &'a Scope,
    pub(crate) pipeline_arn: &'a str,
    pub(crate) execution_arn: &'a str,
    pub(crate) display_name: &'a str,
    pub(crate) description: Option<&'a str>,
    pub(crate) start_time: VTime,
    pub(crate) spec: &'a PipelineSpec,
}

/// The event SageMaker sends for `transition`, with a new id.
pub(crate) fn render(info: &ExecutionInfo<'_>, transition: &Transition, ids: &Ids) -> Value {
    let (detail_type, detail) = match &transition.change {
        Change::Execution { previous, current } => {
            let mut detail = json!({
                "currentPipelineExecutionStatus": current.as_str(),
                "pipelineExecutionArn": info.execution_arn,
                "pipelineArn": info.pipeline_arn,
                "executionStartTime": iso8601(info.start_time),
                "pipelineExecutionDisplayName": info.display_name,
                "pipelineExecutionDescription": info.description.unwrap_or_default(),
            });
            if let Some(previous) = previous {
                detail["previousPipelineExecutionStatus"] = json!(previous.as_str());
            }
            if matches!(
                current,
                ExecutionStatus::Stopped | ExecutionStatus::Failed | ExecutionStatus::Succeeded
            ) {
                detail["executionEndTime"] = json!(iso8601(transition.at));
            }
            (EXECUTION_STATUS_CHANGE, detail)
        }
        Change::Step {
            index,
            previous,
            run,
        } => {
            let current = run.status.map_or("Starting", StepStatus::as_str);
            let (name, step_type, metadata) = match info.spec.steps.get(*index) {
                Some(def) => (
                    def.name.as_str(),
                    def.step_type.as_str(),
                    run.metadata(def, &info.scope.region, &info.scope.account),
                ),
                None => ("", "", json!({})),
            };
            let mut detail = json!({
                "stepName": name,
                "stepType": step_type,
                "currentStepStatus": current,
                "metadata": metadata,
                "pipelineExecutionArn": info.execution_arn,
                "pipelineArn": info.pipeline_arn,
            });
            if let Some(previous) = previous {
                detail["previousStepStatus"] = json!(previous.as_str());
            }
            if let Some(t) = run.start_time {
                detail["stepStartTime"] = json!(iso8601(t));
            }
            if let Some(t) = run.end_time {
                detail["stepEndTime"] = json!(iso8601(t));
            }
            if run.status == Some(StepStatus::Failed)
                && let Some(reason) = &run.failure_reason
            {
                detail["failureReason"] = json!(reason);
            }
            (STEP_STATUS_CHANGE, detail)
        }
    };
    json!({
        "version": "0",
        "id": ids.event_id(),
        "detail-type": detail_type,
        "source": "aws.sagemaker",
        "account": info.scope.account,
        "time": iso8601(transition.at),
        "region": info.scope.region,
        "resources": [info.pipeline_arn, info.execution_arn],
        "detail": detail,
    })
}

/// A region as the admin surface accepts it: 1 to 32 lowercase letters, digits and hyphens
/// (`us-east-1`, `eu-west-1`).
pub(crate) fn valid_region(region: &str) -> bool {
    (1..=32).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The queues that receive events, per (account, region), and the faults of their delivery.
/// Looking a scope up is one sharded-map read, and none at all while no queue receives
/// events.
#[derive(Debug, Default)]
pub(crate) struct Events {
    targets: DashMap<Scope, Vec<String>>,
    /// Targets added since the last clear: 0 means none, so delivery looks nothing up.
    count: AtomicUsize,
    pub(crate) faults: EventFaults,
}

impl Events {
    /// Events with the queues `names` of `scope` (the emulator's default) as targets.
    pub(crate) fn new(scope: &Scope, names: &[String]) -> Self {
        let events = Self::default();
        for name in names {
            events.add(&EventTarget {
                queue_name: name.clone(),
                account: scope.account.clone(),
                region: scope.region.clone(),
            });
        }
        events
    }

    /// Adds a target: false if it was one already.
    pub(crate) fn add(&self, target: &EventTarget) -> bool {
        let scope = Scope {
            account: target.account.clone(),
            region: target.region.clone(),
        };
        let added = {
            let mut names = self.targets.entry(scope).or_default();
            let new = !names.contains(&target.queue_name);
            if new {
                names.push(target.queue_name.clone());
            }
            new
        };
        // After the insertion, so that a non-zero count never hides a target from delivery.
        if added {
            self.count.fetch_add(1, Ordering::Release);
        }
        added
    }

    /// Every target, by account and region, then in the order they were added.
    pub(crate) fn list(&self) -> Vec<EventTarget> {
        let mut scopes: Vec<(Scope, Vec<String>)> = self
            .targets
            .iter()
            .map(|entry| (entry.key().clone(), entry.value().clone()))
            .collect();
        scopes.sort_by(|a, b| a.0.cmp(&b.0));
        scopes
            .into_iter()
            .flat_map(|(scope, names)| {
                names.into_iter().map(move |queue_name| EventTarget {
                    queue_name,
                    account: scope.account.clone(),
                    region: scope.region.clone(),
                })
            })
            .collect()
    }

    /// Removes every target.
    pub(crate) fn clear(&self) {
        self.count.store(0, Ordering::Release);
        self.targets.clear();
    }

    /// Whether any queue receives events.
    pub(crate) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) > 0
    }

    /// The queues that receive the events of `scope`'s executions.
    pub(crate) fn queues_of(&self, scope: &Scope) -> Vec<String> {
        if !self.any() {
            return Vec::new();
        }
        self.targets
            .get(scope)
            .map(|names| names.clone())
            .unwrap_or_default()
    }

    /// What one target receives of `events` (consecutive events of one execution, oldest
    /// first) under the faults in force: each message body, in the order sent, with how long
    /// it is held back. Without faults, each event once, in order, at once.
    pub(crate) fn plan(&self, events: &[Value], ids: &Ids) -> Vec<(String, Duration)> {
        let mut bodies: Vec<String> = events.iter().map(Value::to_string).collect();
        let Some(faults) = self.faults.current() else {
            return bodies.into_iter().map(|b| (b, Duration::ZERO)).collect();
        };
        if faults.reorder() {
            for pair in bodies.chunks_mut(2) {
                pair.reverse();
            }
        }
        let delay = faults.delay();
        let mut out = Vec::with_capacity(bodies.len());
        for body in bodies {
            if faults.drops(ids) {
                continue;
            }
            if faults.duplicates(ids) {
                out.push((body.clone(), delay));
            }
            out.push((body, delay));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        definition::parse,
        engine::ExecutionState,
        faults::{EventFaultConfig, FaultRule},
    };

    fn scope(account: &str, region: &str) -> Scope {
        Scope {
            account: account.into(),
            region: region.into(),
        }
    }

    #[test]
    fn events_say_what_changed_in_eventbridges_envelope() {
        let ids = Ids::new(Some(1));
        let spec = parse(
            &json!({"Version": "2020-12-01", "Steps": [
                {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 60}}}
            ]})
            .to_string(),
        )
        .unwrap();
        let pipeline = "arn:aws:sagemaker:eu-west-1:111111111111:pipeline/p";
        let arn = format!("{pipeline}/execution/abcdefabcdef");
        let mut state = ExecutionState::start(
            arn.clone(),
            "abcdefabcdef".into(),
            &spec,
            Vec::new(),
            None,
            1_796_126_400.0,
            &ids,
        );
        state.advance(&spec, 1_796_126_460.0, &ids);
        let where_ = scope("111111111111", "eu-west-1");
        let info = ExecutionInfo {
            scope: &where_,
            pipeline_arn: pipeline,
            execution_arn: &arn,
            display_name: "nightly",
            description: None,
            start_time: 1_796_126_400.0,
            spec: &spec,
        };
        let events: Vec<Value> = state
            .transitions
            .iter()
            .map(|t| render(&info, t, &ids))
            .collect();
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|e| {
                let detail = &e["detail"];
                let status = detail["currentPipelineExecutionStatus"]
                    .as_str()
                    .or(detail["currentStepStatus"].as_str())
                    .unwrap();
                (e["detail-type"].as_str().unwrap(), status)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                (EXECUTION_STATUS_CHANGE, "Executing"),
                (STEP_STATUS_CHANGE, "Starting"),
                (STEP_STATUS_CHANGE, "Executing"),
                (STEP_STATUS_CHANGE, "Succeeded"),
                (EXECUTION_STATUS_CHANGE, "Succeeded"),
            ]
        );
        let first = &events[0];
        assert_eq!(first["version"], "0");
        assert_eq!(first["source"], "aws.sagemaker");
        assert_eq!(first["account"], "111111111111");
        assert_eq!(first["region"], "eu-west-1");
        assert_eq!(first["time"], "2026-12-01T12:00:00Z");
        assert_eq!(first["resources"], json!([pipeline, arn]));
        assert_eq!(first["id"].as_str().unwrap().len(), 36);
        assert!(
            first["detail"]
                .get("previousPipelineExecutionStatus")
                .is_none()
        );
        assert!(first["detail"].get("executionEndTime").is_none());
        assert_eq!(first["detail"]["pipelineExecutionDescription"], "");
        let succeeded = &events[3]["detail"];
        assert_eq!(succeeded["stepName"], "Train");
        assert_eq!(succeeded["stepType"], "Training");
        assert_eq!(succeeded["previousStepStatus"], "Executing");
        assert_eq!(succeeded["stepEndTime"], "2026-12-01T12:01:00Z");
        assert!(
            succeeded["metadata"]["TrainingJob"]["Arn"]
                .as_str()
                .unwrap()
                .starts_with("arn:aws:sagemaker:eu-west-1:111111111111:training-job/pipelines-")
        );
        let last = &events[4];
        assert_eq!(last["time"], "2026-12-01T12:01:00Z");
        assert_eq!(last["detail"]["executionEndTime"], "2026-12-01T12:01:00Z");
        assert_eq!(last["detail"]["executionStartTime"], "2026-12-01T12:00:00Z");
        let distinct: std::collections::HashSet<&str> =
            events.iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(distinct.len(), events.len());
    }

    #[test]
    fn targets_are_per_account_and_region() {
        let default = scope("123456789012", "us-east-1");
        let events = Events::new(&default, &["a".into()]);
        assert!(events.any());
        let other = EventTarget {
            queue_name: "b".into(),
            account: "111111111111".into(),
            region: "eu-west-1".into(),
        };
        assert!(events.add(&other));
        assert!(!events.add(&other), "once");
        assert_eq!(events.queues_of(&default), ["a"]);
        assert_eq!(events.queues_of(&scope("111111111111", "eu-west-1")), ["b"]);
        assert!(
            events
                .queues_of(&scope("111111111111", "us-east-1"))
                .is_empty()
        );
        assert_eq!(
            events
                .list()
                .iter()
                .map(|t| t.queue_name.as_str())
                .collect::<Vec<_>>(),
            ["b", "a"]
        );
        events.clear();
        assert!(!events.any());
        assert!(events.queues_of(&default).is_empty());
        assert!(events.list().is_empty());
    }

    #[test]
    fn the_plan_follows_the_faults() {
        let ids = Ids::new(Some(2));
        let events = Events::default();
        let batch: Vec<Value> = (0..5).map(|n| json!({ "n": n })).collect();
        let bodies = |plan: Vec<(String, Duration)>| -> Vec<String> {
            plan.into_iter().map(|(b, _)| b).collect()
        };
        let plain = events.plan(&batch, &ids);
        assert_eq!(
            bodies(plain.clone()),
            [
                "{\"n\":0}",
                "{\"n\":1}",
                "{\"n\":2}",
                "{\"n\":3}",
                "{\"n\":4}"
            ]
        );
        assert!(plain.iter().all(|(_, d)| d.is_zero()));

        let count = |n| {
            Some(FaultRule {
                count: Some(n),
                fraction: None,
            })
        };
        events.faults.set(&EventFaultConfig {
            reorder: true,
            ..Default::default()
        });
        assert_eq!(
            bodies(events.plan(&batch, &ids)),
            [
                "{\"n\":1}",
                "{\"n\":0}",
                "{\"n\":3}",
                "{\"n\":2}",
                "{\"n\":4}"
            ]
        );
        events.faults.set(&EventFaultConfig {
            duplicate: count(1),
            drop: count(1),
            delay_ms: Some(40),
            reorder: false,
        });
        let planned = events.plan(&batch, &ids);
        assert_eq!(
            bodies(planned.clone()),
            [
                "{\"n\":1}",
                "{\"n\":1}",
                "{\"n\":2}",
                "{\"n\":3}",
                "{\"n\":4}"
            ],
            "the first dropped, the next sent twice"
        );
        assert!(planned.iter().all(|(_, d)| *d == Duration::from_millis(40)));
        events.faults.clear();
        assert_eq!(events.plan(&batch, &ids).len(), 5);
    }
}
