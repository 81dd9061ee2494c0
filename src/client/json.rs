//! `--output json`: messages in the proto JSON mapping (lowerCamelCase names, enum names,
//! RFC 3339 times, durations as `"600s"`, 64-bit integers as strings, fields at their default
//! left out), as grpcurl prints them, one object a line. The mapping is prost-reflect's,
//! driven by the contract's own descriptor set, so it follows the proto without code of ours
//! per message; `google.rpc` error details inside a `Status` come out with their `@type`.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};

use crate::pb;

/// The contract's messages (and google.rpc's, and the well-known types).
static POOL: LazyLock<Result<DescriptorPool, String>> =
    LazyLock::new(|| DescriptorPool::decode(pb::FILE_DESCRIPTOR_SET).map_err(|e| e.to_string()));

/// A message of the contract, with its full proto name.
pub(crate) trait ProtoName: Message + Sized {
    const NAME: &'static str;
}

macro_rules! proto_names {
    ($($message:ident),* $(,)?) => {
        $(impl ProtoName for pb::$message {
            const NAME: &'static str = concat!("pipelinecontrol.v1.", stringify!($message));
        })*
    };
}

proto_names!(
    StopExecutionResponse,
    Execution,
    WatchExecutionResponse,
    StopRequest,
    StopExecutionsResponse,
);

/// `message` as one line of proto JSON.
pub(crate) fn line<M: ProtoName>(message: &M) -> Result<String, String> {
    let pool = POOL.as_ref().map_err(Clone::clone)?;
    let descriptor = pool
        .get_message_by_name(M::NAME)
        .ok_or_else(|| format!("{} is not in the contract's descriptor set", M::NAME))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .map_err(|e| format!("{}: {e}", M::NAME))?;
    serde_json::to_string(&dynamic).map_err(|e| format!("{}: {e}", M::NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_is_grpcurls() {
        let response = pb::StopExecutionResponse {
            pipeline_execution_arn: "arn:x".into(),
            client_request_token: "t-1".into(),
            outcome: pb::StopOutcome::StopRequested.into(),
            status: pb::ExecutionStatus::Stopping.into(),
            replayed: false,
            first_requested_at: Some(prost_types::Timestamp {
                seconds: 1_796_112_000,
                nanos: 500_000_000,
            }),
            force_at: None,
            force_note: String::new(),
        };
        let json: serde_json::Value = serde_json::from_str(&line(&response).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pipelineExecutionArn": "arn:x",
                "clientRequestToken": "t-1",
                "outcome": "STOP_OUTCOME_STOP_REQUESTED",
                "status": "EXECUTION_STATUS_STOPPING",
                "firstRequestedAt": "2026-12-01T08:00:00.500Z",
            })
        );

        let watch = pb::WatchExecutionResponse {
            sequence: 7,
            event: Some(pb::watch_execution_response::Event::Heartbeat(
                pb::Heartbeat::default(),
            )),
        };
        assert_eq!(line(&watch).unwrap(), r#"{"sequence":"7","heartbeat":{}}"#);
    }

    #[test]
    fn error_details_keep_their_type() {
        let info = tonic_types::pb::ErrorInfo {
            reason: "PERMISSION_DENIED".into(),
            domain: "pipelinecontrol.v1".into(),
            metadata: Default::default(),
        };
        let result = pb::StopExecutionsResponse {
            response: Some(pb::stop_executions_response::Response::Result(
                pb::ExecutionStopResult {
                    pipeline_execution_arn: "arn:x".into(),
                    result: Some(pb::execution_stop_result::Result::Error(
                        tonic_types::pb::Status {
                            code: 7,
                            message: "no".into(),
                            details: vec![prost_types::Any {
                                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                                value: info.encode_to_vec(),
                            }],
                        },
                    )),
                },
            )),
        };
        let json: serde_json::Value = serde_json::from_str(&line(&result).unwrap()).unwrap();
        assert_eq!(
            json["result"]["error"]["details"][0],
            serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "PERMISSION_DENIED",
                "domain": "pipelinecontrol.v1",
            })
        );
    }
}
