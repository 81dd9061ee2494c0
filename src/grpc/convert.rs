//! Conversions between the domain and the proto: statuses and outcomes to enums, records to
//! messages, times to `Timestamp`, and the request deadline from `grpc-timeout`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::metadata::MetadataMap;

use crate::{
    domain::{ExecutionSnapshot, ExecutionStatus, StepDetail, StepStatus, StopOutcome},
    pb,
    stop::Answer,
    store::{Completion, RecordState, Release, StopRecord},
    watch::{WatchEvent, WatchEventKind},
};

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or_default(),
    }
}

pub(crate) fn execution_status(status: Option<&ExecutionStatus>) -> pb::ExecutionStatus {
    use pb::ExecutionStatus as P;
    match status {
        Some(ExecutionStatus::Executing) => P::Executing,
        Some(ExecutionStatus::Stopping) => P::Stopping,
        Some(ExecutionStatus::Stopped) => P::Stopped,
        Some(ExecutionStatus::Failed) => P::Failed,
        Some(ExecutionStatus::Succeeded) => P::Succeeded,
        Some(ExecutionStatus::CompletedWithFailures) => P::CompletedWithFailures,
        Some(ExecutionStatus::Unknown(_)) | None => P::Unspecified,
    }
}

fn step_status(status: &StepStatus) -> pb::StepStatus {
    match status {
        StepStatus::Starting => pb::StepStatus::Starting,
        StepStatus::Executing => pb::StepStatus::Executing,
        StepStatus::Stopping => pb::StepStatus::Stopping,
        StepStatus::Stopped => pb::StepStatus::Stopped,
        StepStatus::Failed => pb::StepStatus::Failed,
        StepStatus::Succeeded => pb::StepStatus::Succeeded,
        StepStatus::Unknown(_) => pb::StepStatus::Unspecified,
    }
}

/// An execution snapshot as the Execution message, with each step's blocking reason.
pub(crate) fn execution(snapshot: &ExecutionSnapshot) -> pb::Execution {
    pb::Execution {
        pipeline_execution_arn: snapshot.arn.clone(),
        pipeline_arn: snapshot.pipeline_arn.clone(),
        display_name: snapshot.display_name.clone(),
        status: execution_status(Some(&snapshot.status)).into(),
        failure_reason: snapshot.failure_reason.clone(),
        creation_time: snapshot.creation_time.map(timestamp),
        last_modified_time: snapshot.last_modified_time.map(timestamp),
        steps: snapshot
            .steps
            .iter()
            .map(|step| pb::Step {
                name: step.name.clone(),
                display_name: step.display_name.clone(),
                r#type: step.step_type.clone(),
                status: step_status(&step.status).into(),
                start_time: step.start_time.map(timestamp),
                end_time: step.end_time.map(timestamp),
                failure_reason: step.failure_reason.clone(),
                attempt_count: step.attempt_count,
                blocking_reason: snapshot.blocking_reason(step),
                metadata: match &step.detail {
                    StepDetail::Callback { token, queue_url } => {
                        Some(pb::step::Metadata::Callback(pb::CallbackMetadata {
                            callback_token: token.clone(),
                            sqs_queue_url: queue_url.clone(),
                        }))
                    }
                    StepDetail::Lambda { function_arn } => {
                        Some(pb::step::Metadata::Lambda(pb::LambdaMetadata {
                            function_arn: function_arn.clone(),
                        }))
                    }
                    StepDetail::Job { arn } => Some(pb::step::Metadata::JobArn(arn.clone())),
                    StepDetail::None => None,
                },
            })
            .collect(),
        observed_at: Some(timestamp(snapshot.observed_at)),
    }
}

/// A watch stream's event as its message.
pub(crate) fn watch_response(event: &WatchEvent) -> pb::WatchExecutionResponse {
    use pb::watch_execution_response::Event;
    pb::WatchExecutionResponse {
        sequence: event.sequence,
        event: Some(match &event.kind {
            WatchEventKind::Snapshot(snapshot) => Event::Execution(execution(snapshot)),
            WatchEventKind::Heartbeat { last_observed_at } => Event::Heartbeat(pb::Heartbeat {
                last_observed_at: last_observed_at.map(timestamp),
            }),
        }),
    }
}

pub(crate) fn stop_outcome(outcome: Option<StopOutcome>) -> pb::StopOutcome {
    match outcome {
        Some(StopOutcome::StopRequested) => pb::StopOutcome::StopRequested,
        Some(StopOutcome::AlreadyStopping) => pb::StopOutcome::AlreadyStopping,
        Some(StopOutcome::AlreadyStopped) => pb::StopOutcome::AlreadyStopped,
        None => pb::StopOutcome::Unspecified,
    }
}

pub(crate) fn stop_response(answer: &Answer) -> pb::StopExecutionResponse {
    let Answer {
        record,
        replayed,
        force_note,
    } = answer;
    let completion = record.state.completion();
    pb::StopExecutionResponse {
        pipeline_execution_arn: record.pipeline_execution_arn.to_string(),
        client_request_token: record.key.token.clone(),
        outcome: stop_outcome(completion.and_then(Completion::outcome)).into(),
        status: execution_status(completion.and_then(Completion::status)).into(),
        replayed: *replayed,
        first_requested_at: Some(timestamp(record.created_at)),
        force_at: record.force_at.map(timestamp),
        force_note: force_note.clone(),
    }
}

/// A recorded stop request, with the callbacks its force released.
pub(crate) fn stop_request(record: &StopRecord, releases: &[Release]) -> pb::StopRequest {
    let completion = record.state.completion();
    pb::StopRequest {
        client_request_token: record.key.token.clone(),
        pipeline_execution_arn: record.pipeline_execution_arn.to_string(),
        reason: record.reason.clone(),
        principal: record.key.principal.clone(),
        auth_method: record
            .auth_method
            .map(|method| method.as_str().to_string())
            .unwrap_or_default(),
        state: match record.state {
            RecordState::Pending => pb::StopRequestState::Pending,
            RecordState::Completed(_) => pb::StopRequestState::Completed,
        }
        .into(),
        outcome: stop_outcome(completion.and_then(Completion::outcome)).into(),
        error_code: completion
            .and_then(Completion::error)
            .map(|e| e.as_str().to_string())
            .unwrap_or_default(),
        status: execution_status(completion.and_then(Completion::status)).into(),
        attempts: i32::try_from(record.attempts).unwrap_or(i32::MAX),
        first_requested_at: Some(timestamp(record.created_at)),
        last_attempted_at: Some(timestamp(record.updated_at)),
        completed_at: record.completed_at.map(timestamp),
        expires_at: Some(timestamp(record.expires_at)),
        force_at: record.force_at.map(timestamp),
        forced_at: record.forced_at.map(timestamp),
        force_note: record.force_note.clone().unwrap_or_default(),
        released_callbacks: releases
            .iter()
            .map(|release| pb::ReleasedCallback {
                step_name: release.step_name.clone(),
                callback_token: release.callback_token.clone(),
                released_at: Some(timestamp(release.released_at)),
            })
            .collect(),
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, unit one of
/// H M S m u n), if it sent one.
pub(crate) fn deadline(metadata: &MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value (`1-8 digits` and a unit: H, M, S, m, u, n).
pub(crate) fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        let mut metadata = MetadataMap::new();
        assert_eq!(deadline(&metadata), None);
        for (text, expected) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("100u", Some(Duration::from_micros(100))),
            ("7n", Some(Duration::from_nanos(7))),
            ("5x", None),
            ("S", None),
            ("1234567890S", None),
        ] {
            metadata.insert("grpc-timeout", text.parse().unwrap());
            assert_eq!(deadline(&metadata), expected, "{text}");
        }
    }

    #[test]
    fn statuses_map_to_the_proto_enum() {
        let status = |s: &str| execution_status(Some(&ExecutionStatus::parse(s)));
        assert_eq!(status("Stopping"), pb::ExecutionStatus::Stopping);
        assert_eq!(
            status("CompletedWithFailures"),
            pb::ExecutionStatus::CompletedWithFailures
        );
        assert_eq!(status("Paused"), pb::ExecutionStatus::Unspecified);
        assert_eq!(execution_status(None), pb::ExecutionStatus::Unspecified);
        assert_eq!(
            stop_outcome(StopOutcome::parse("ALREADY_STOPPED")),
            pb::StopOutcome::AlreadyStopped
        );
    }
}
