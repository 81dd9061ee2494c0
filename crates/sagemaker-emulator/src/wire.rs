//! The one HTTP entry point, `POST /`, and its three protocols.
//!
//! SageMaker's awsJson1_1: `X-Amz-Target: SageMaker.<Operation>` and a JSON body; answers
//! carry `x-amzn-RequestId`; errors are HTTP 400 (500 for internal faults) with
//! `{"__type": ..., "Message": ...}` and a matching `X-Amzn-ErrorType` header (see
//! [`AwsError`]). SQS's awsJson1_0: `X-Amz-Target: AmazonSQS.<Action>` (see `sqs`). STS's
//! awsQuery: no `X-Amz-Target` and a form-encoded body (see `sts`).
//!
//! Every call acts for its caller, in the caller's account and region (see `identity`). The
//! signature of a call made with a key whose secret the emulator knows is checked, within the
//! called service's window around the real clock (SageMaker's [`SIGNATURE_WINDOW`], STS's and
//! SQS's); each protocol answers a refusal with its own error. Calls with other keys are
//! accepted with any signature, or none.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    error::AwsError,
    faults::Fault,
    identity::{CallTime, Caller},
    ops,
    sigv4::Request,
    sqs,
    state::{Call, Emulator, Operation},
    sts,
};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const STS_CONTENT_TYPE: &str = "text/xml";

/// How many minutes before or after SageMaker's clock a signature may be dated: its "Signature
/// expired: ... (... - 5 min.)", as AWS's JSON services write it.
const SIGNATURE_WINDOW: i64 = 5;

/// `POST /`: one SageMaker, STS or SQS call.
pub(crate) async fn handle(
    State(emulator): State<Arc<Emulator>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = emulator.ids.request_id();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let protocol = Protocol::of(&headers, target);
    let request = Request {
        method: method.as_str(),
        path: uri.path(),
        query: uri.query().unwrap_or_default(),
        headers: &headers,
        body: &body,
    };
    let time = CallTime {
        now: emulator.clock.now(),
        wall_now: emulator.clock.wall_now(),
        window: protocol.signature_window(),
    };
    let caller = emulator.identity.caller(&request, time);
    let (mut response, content_type) = match protocol {
        Protocol::Sts => {
            let answer = sts::answer(&emulator, &caller, &body, &request_id);
            (answer.into_response(), STS_CONTENT_TYPE)
        }
        Protocol::Sqs => {
            // Queue URLs name the emulator as this caller reached it.
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("127.0.0.1");
            let answer = sqs::answer(&emulator, &caller, target, host, &body).await;
            (answer, sqs::CONTENT_TYPE)
        }
        Protocol::SageMaker => {
            let response = match answer(&emulator, &caller, &headers, &body).await {
                Ok(value) => (StatusCode::OK, value.to_string()).into_response(),
                Err(error) => error.into_response(),
            };
            (response, CONTENT_TYPE)
        }
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

/// The protocols on `POST /`.
#[derive(Debug, Clone, Copy)]
enum Protocol {
    Sts,
    Sqs,
    SageMaker,
}

impl Protocol {
    /// The protocol of a call with these headers (`target`: its `X-Amz-Target`).
    fn of(headers: &HeaderMap, target: &str) -> Self {
        if is_sts(headers) {
            Self::Sts
        } else if target.starts_with("AmazonSQS.") {
            Self::Sqs
        } else {
            Self::SageMaker
        }
    }

    /// How many minutes from the real clock the service allows a signature to be dated.
    fn signature_window(self) -> i64 {
        match self {
            Self::Sts => sts::SIGNATURE_WINDOW,
            Self::Sqs => sqs::SIGNATURE_WINDOW,
            Self::SageMaker => SIGNATURE_WINDOW,
        }
    }
}

/// An STS call: a form-encoded body and no `X-Amz-Target` (every SageMaker call has one).
fn is_sts(headers: &HeaderMap) -> bool {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    form && !headers.contains_key("x-amz-target")
}

async fn answer(
    emulator: &Emulator,
    caller: &Caller,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Value, AwsError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let op = target
        .strip_prefix("SageMaker.")
        .and_then(Operation::from_name)
        .ok_or_else(|| AwsError::unknown_operation(target))?;
    emulator.stats.count(&caller.scope, Call::SageMaker(op));
    if let Some(refusal) = &caller.refusal {
        return Err(AwsError::refused(refusal));
    }

    // Beyond the quota of its (account, region, operation), a call is throttled before
    // anything else happens to it, as SageMaker does.
    let scope = &caller.scope;
    let now = std::time::Instant::now();
    if !emulator
        .quotas
        .admit(&scope.account, &scope.region, op.name(), now)
    {
        emulator.stats.count_throttled(scope, Call::SageMaker(op));
        return Err(AwsError::from_fault(Fault::Throttle, String::new));
    }
    let verdict = emulator
        .faults
        .judge(op.name(), &scope.account, &emulator.ids);
    if let Some(latency) = verdict.latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = verdict.fault {
        if fault == Fault::Throttle {
            emulator.stats.count_throttled(scope, Call::SageMaker(op));
        }
        return Err(AwsError::from_fault(fault, || denial(caller, op, body)));
    }

    let input = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice::<Value>(body).map_err(|e| {
            AwsError::serialization(format!("The request body is not valid JSON: {e}"))
        })?
    };
    if !input.is_object() {
        return Err(AwsError::serialization(
            "The request body must be a JSON object.",
        ));
    }
    let resources = emulator.resources(&caller.scope);
    let mut answer = ops::call(emulator, &resources, op, input)?;
    if let (Some(replace), Value::Object(members)) = (verdict.replace, &mut answer) {
        members.extend(replace);
    }
    Ok(answer)
}

/// AccessDeniedException's message, in IAM's words, naming the resource the call is about
/// when its input names one.
fn denial(caller: &Caller, op: Operation, body: &[u8]) -> String {
    let input: Value = serde_json::from_slice(body).unwrap_or_default();
    let (region, account) = (&caller.scope.region, &caller.scope.account);
    // UpdatePipelineVersion names its pipeline by PipelineArn.
    let pipeline = input["PipelineName"]
        .as_str()
        .or_else(|| input["PipelineArn"].as_str());
    let resource = match (input["PipelineExecutionArn"].as_str(), pipeline) {
        (Some(arn), _) => arn.to_string(),
        (None, Some(arn)) if arn.starts_with("arn:") => arn.to_string(),
        (None, Some(name)) => format!(
            "arn:aws:sagemaker:{region}:{account}:pipeline/{}",
            name.to_lowercase()
        ),
        (None, None) => format!("arn:aws:sagemaker:{region}:{account}:*"),
    };
    let action = format!("sagemaker:{}", op.name());
    format!(
        "User: {} is not authorized to perform: {action} on resource: {resource} because no identity-based policy allows the {action} action",
        caller.arn
    )
}
