//! Conversions between the domain and the proto: statuses and outcomes to enums, records to
//! messages, times to `Timestamp`, and the request deadline from `grpc-timeout`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::metadata::MetadataMap;

use super::pb;
use crate::{
    domain::{ExecutionStatus, StopOutcome},
    store::{RecordState, StopRecord},
};

pub(crate) fn timestamp(t: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or_default(),
    }
}

pub(crate) fn execution_status(status: Option<&str>) -> pb::ExecutionStatus {
    use pb::ExecutionStatus as P;
    match status.map(ExecutionStatus::parse) {
        Some(ExecutionStatus::Executing) => P::Executing,
        Some(ExecutionStatus::Stopping) => P::Stopping,
        Some(ExecutionStatus::Stopped) => P::Stopped,
        Some(ExecutionStatus::Failed) => P::Failed,
        Some(ExecutionStatus::Succeeded) => P::Succeeded,
        Some(ExecutionStatus::CompletedWithFailures) => P::CompletedWithFailures,
        Some(ExecutionStatus::Unknown(_)) | None => P::Unspecified,
    }
}

pub(crate) fn stop_outcome(outcome: Option<&str>) -> pb::StopOutcome {
    match outcome.and_then(StopOutcome::parse) {
        Some(StopOutcome::StopRequested) => pb::StopOutcome::StopRequested,
        Some(StopOutcome::AlreadyStopping) => pb::StopOutcome::AlreadyStopping,
        Some(StopOutcome::AlreadyStopped) => pb::StopOutcome::AlreadyStopped,
        None => pb::StopOutcome::Unspecified,
    }
}

pub(crate) fn stop_response(record: &StopRecord, replayed: bool) -> pb::StopExecutionResponse {
    pb::StopExecutionResponse {
        pipeline_execution_arn: record.pipeline_execution_arn.clone(),
        client_request_token: record.key.token.clone(),
        outcome: stop_outcome(record.outcome.as_deref()).into(),
        status: execution_status(record.execution_status.as_deref()).into(),
        replayed,
        first_requested_at: Some(timestamp(record.created_at)),
    }
}

pub(crate) fn stop_request(record: &StopRecord) -> pb::StopRequest {
    pb::StopRequest {
        client_request_token: record.key.token.clone(),
        pipeline_execution_arn: record.pipeline_execution_arn.clone(),
        reason: record.reason.clone(),
        principal: record.key.principal.clone(),
        state: match record.state {
            RecordState::Pending => pb::StopRequestState::Pending,
            RecordState::Completed => pb::StopRequestState::Completed,
        }
        .into(),
        outcome: stop_outcome(record.outcome.as_deref()).into(),
        error_code: record.error_code.clone().unwrap_or_default(),
        status: execution_status(record.execution_status.as_deref()).into(),
        attempts: i32::try_from(record.attempts).unwrap_or(i32::MAX),
        first_requested_at: Some(timestamp(record.created_at)),
        last_attempted_at: Some(timestamp(record.updated_at)),
        completed_at: record.completed_at.map(timestamp),
        expires_at: Some(timestamp(record.expires_at)),
    }
}

/// The caller's deadline from the `grpc-timeout` header (`<digits><unit>`, unit one of
/// H M S m u n), if it sent one.
pub(crate) fn deadline(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
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
        assert_eq!(
            execution_status(Some("Stopping")),
            pb::ExecutionStatus::Stopping
        );
        assert_eq!(
            execution_status(Some("CompletedWithFailures")),
            pb::ExecutionStatus::CompletedWithFailures
        );
        assert_eq!(
            execution_status(Some("Paused")),
            pb::ExecutionStatus::Unspecified
        );
        assert_eq!(execution_status(None), pb::ExecutionStatus::Unspecified);
        assert_eq!(
            stop_outcome(Some("ALREADY_STOPPED")),
            pb::StopOutcome::AlreadyStopped
        );
    }
}
