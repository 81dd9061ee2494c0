//! The one HTTP entry point, `POST /`, and its three protocols.
//!
//! SageMaker's awsJson1_1: `X-Amz-Target: SageMaker.<Operation>` and a JSON body; answers
//! carry `x-amzn-RequestId`; errors are HTTP 400 (500 for internal faults) with
//! `{"__type": ..., "Message": ...}` and a matching `X-Amzn-ErrorType` header (see
//! [`AwsError`]). SQS's awsJson1_0: `X-Amz-Target: AmazonSQS.<Action>` (see `sqs`). STS's
//! awsQuery: no `X-Amz-Target` and a form-encoded body (see `sts`).
//!
//! Every call acts for its caller, in the caller's account and region (see `identity`).
//! Signatures are not checked: any, or none, is accepted; a key the emulator's STS issued
//! answers ExpiredTokenException once its lifetime is over.

use std::sync::Arc;

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};

use super::{
    error::AwsError,
    identity::Caller,
    ops, sqs,
    state::{Call, Emulator, Operation},
    sts,
};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const STS_CONTENT_TYPE: &str = "text/xml";

/// `POST /`: one SageMaker or STS call.
pub(crate) async fn handle(
    State(emulator): State<Arc<Emulator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = emulator.ids.request_id();
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = emulator
        .identity
        .caller(authorization, emulator.clock.now());
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let (mut response, content_type) = if is_sts(&headers) {
        let answer = sts::answer(&emulator, &caller, &body, &request_id);
        (answer.into_response(), STS_CONTENT_TYPE)
    } else if target.starts_with("AmazonSQS.") {
        // Queue URLs name the emulator as this caller reached it.
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("127.0.0.1");
        let answer = sqs::answer(&emulator, &caller, target, host, &body).await;
        (answer, sqs::CONTENT_TYPE)
    } else {
        let response = match answer(&emulator, &caller, &headers, &body).await {
            Ok(value) => (StatusCode::OK, value.to_string()).into_response(),
            Err(error) => error.into_response(),
        };
        (response, CONTENT_TYPE)
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
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
    if caller.expired {
        return Err(AwsError::expired_token());
    }

    let verdict = emulator
        .faults
        .judge(op.name(), &caller.scope.account, &emulator.ids);
    if let Some(latency) = verdict.latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = verdict.fault {
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
