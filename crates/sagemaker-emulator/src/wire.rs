//! The awsJson1_1 wire protocol: `POST /` with `X-Amz-Target: SageMaker.<Operation>` and a JSON
//! body; answers carry `x-amzn-RequestId`; errors are HTTP 400 (500 for internal faults) with
//! `{"__type": ..., "Message": ...}` and a matching `X-Amzn-ErrorType` header (see [`AwsError`]).
//! Signatures are not checked: any, or none, is accepted.

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
    ops,
    state::{Emulator, Operation},
};

const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// `POST /`: one SageMaker call.
pub(crate) async fn handle(
    State(emulator): State<Arc<Emulator>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = emulator.ids.request_id();
    let result = answer(&emulator, &headers, &body).await;
    let mut response = match result {
        Ok(value) => (StatusCode::OK, value.to_string()).into_response(),
        Err(error) => error.into_response(),
    };
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", id);
    }
    response
}

async fn answer(emulator: &Emulator, headers: &HeaderMap, body: &[u8]) -> Result<Value, AwsError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let op = target
        .strip_prefix("SageMaker.")
        .and_then(Operation::from_name)
        .ok_or_else(|| AwsError::unknown_operation(target))?;
    emulator.count_call(op);

    let verdict = emulator.faults.judge(op.name(), &emulator.ids);
    if let Some(latency) = verdict.latency {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = verdict.fault {
        return Err(AwsError::from_fault(fault));
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
    let mut answer = ops::call(emulator, op, input)?;
    if let (Some(replace), Value::Object(members)) = (verdict.replace, &mut answer) {
        members.extend(replace);
    }
    Ok(answer)
}
