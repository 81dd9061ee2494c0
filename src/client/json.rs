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

/// A failure for `--output json`: `google.rpc.Status` in the proto JSON mapping (its
/// `details` with their `@type`), except that the code is named (`NOT_FOUND`, as grpcurl and
/// the docs spell it), with the ErrorInfo reason beside it for scripts that branch on it.
#[derive(Debug)]
pub(crate) struct Failure(serde_json::Map<String, serde_json::Value>);

impl Failure {
    /// A failure of the command itself, with a code that says what kind it is.
    pub(crate) fn new(code: &str, message: &str) -> Self {
        let mut fields = serde_json::Map::new();
        fields.insert("code".into(), code.into());
        fields.insert("message".into(), message.into());
        Self(fields)
    }

    /// A call that failed with `status`.
    pub(crate) fn of_status(status: &tonic::Status) -> Self {
        let message = status.message().split_whitespace().collect::<Vec<_>>();
        let mut failure = Self::new(super::code_name(status.code()), &message.join(" "));
        if let Some(reason) = super::reason(status) {
            failure.0.insert("reason".into(), reason.into());
        }
        if let Some(details) = status_details(status)
            && !details.is_empty()
        {
            failure.0.insert("details".into(), details.into());
        }
        failure
    }

    /// Adds `note` to the message.
    pub(crate) fn note(&mut self, note: &str) {
        if let Some(serde_json::Value::String(message)) = self.0.get_mut("message") {
            message.push_str(note);
        }
    }

    /// The failure as one line of JSON.
    pub(crate) fn line(&self) -> String {
        serde_json::Value::Object(self.0.clone()).to_string()
    }
}

/// The details of `status` (the `google.rpc.Status` tonic carries in `grpc-status-details-bin`)
/// in the proto JSON mapping, each with its `@type`.
fn status_details(status: &tonic::Status) -> Option<Vec<serde_json::Value>> {
    if status.details().is_empty() {
        return None;
    }
    let pool = POOL.as_ref().ok()?;
    let descriptor = pool.get_message_by_name("google.rpc.Status")?;
    let dynamic = DynamicMessage::decode(descriptor, status.details()).ok()?;
    match serde_json::to_value(&dynamic).ok()? {
        serde_json::Value::Object(mut fields) => match fields.remove("details")? {
            serde_json::Value::Array(details) => Some(details),
            _ => None,
        },
        _ => None,
    }
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
    fn a_failed_call_is_a_status_with_its_code_named_and_its_reason_beside_it() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let status = tonic::Status::with_error_details(
            tonic::Code::NotFound,
            "the pipeline execution\ndoes not exist",
            ErrorDetails::with_error_info(
                "EXECUTION_NOT_FOUND",
                "pipelinecontrol.v1",
                [("region".to_string(), "eu-west-1".to_string())],
            ),
        );
        let json: serde_json::Value =
            serde_json::from_str(&Failure::of_status(&status).line()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "code": "NOT_FOUND",
                "message": "the pipeline execution does not exist",
                "reason": "EXECUTION_NOT_FOUND",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "EXECUTION_NOT_FOUND",
                    "domain": "pipelinecontrol.v1",
                    "metadata": {"region": "eu-west-1"},
                }],
            })
        );
        let mut usage = Failure::new("INVALID_ARGUMENT", "--force-after: at most 7 days");
        usage.note(" (see --help)");
        assert_eq!(
            usage.line(),
            r#"{"code":"INVALID_ARGUMENT","message":"--force-after: at most 7 days (see --help)"}"#
        );
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
