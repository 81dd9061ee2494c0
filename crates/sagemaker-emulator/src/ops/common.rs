//! What the operations share: parsing their input, ClientRequestToken replay, the
//! ParallelismConfiguration member, finding a pipeline, and pagination.

use std::sync::{Arc, PoisonError};

use serde::Deserialize;
use serde_json::Value;

use crate::{
    error::AwsError,
    state::{IdempotentAnswer, Operation, Pipeline, PipelineState, Resources},
    validate::Validator,
};

pub(super) type OpResult = Result<Value, AwsError>;

pub(super) fn parse<T: for<'de> Deserialize<'de>>(input: Value) -> Result<T, AwsError> {
    serde_json::from_value(input).map_err(|e| AwsError::serialization(e.to_string()))
}

/// Answers from the record of an earlier call with the same ClientRequestToken, or runs `f`
/// and records its success; the same token with a different request is refused.
///
/// The check and the action are one step: the token's record stays locked from the look-up
/// until this call's answer is in it, so of identical calls arriving together exactly one runs
/// `f` and the others wait for it, then replay its answer (SageMaker's behaviour, and what a
/// client retrying after a timeout relies on). Only calls with the same operation and token
/// wait for each other. Lock order: a token's record, then what `f` locks (an execution, the
/// callback-token map, a pipeline then its executions, a map shard); nothing takes a record
/// while holding one of those. A failure records nothing, so the next call with the token
/// tries afresh.
pub(super) fn idempotent(
    res: &Resources,
    op: Operation,
    token: Option<&str>,
    input: &Value,
    f: impl FnOnce() -> OpResult,
) -> OpResult {
    let Some(token) = token else { return f() };
    // JSON objects compare regardless of member order.
    let mut request = input.clone();
    if let Value::Object(map) = &mut request {
        map.remove("ClientRequestToken");
    }
    let record = res.token_record(op, token);
    // `f` panicking leaves the record empty, which is still a consistent state.
    let mut record = record.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(previous) = &*record {
        return if previous.request == request {
            Ok(previous.response.clone())
        } else {
            Err(AwsError::validation(format!(
                "ClientRequestToken {token} was already used with a different request."
            )))
        };
    }
    let response = f()?;
    *record = Some(IdempotentAnswer {
        request,
        response: response.clone(),
    });
    Ok(response)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct ParallelismConfiguration {
    max_parallel_execution_steps: Option<i64>,
}

pub(super) fn check_parallelism(
    v: &mut Validator,
    path: &str,
    p: Option<&ParallelismConfiguration>,
) {
    if let Some(p) = p {
        let member = format!("{path}.MaxParallelExecutionSteps");
        if v.required(&member, p.max_parallel_execution_steps.as_ref()) {
            v.range(&member, p.max_parallel_execution_steps, 1, None);
        }
    }
}

pub(super) fn parallelism(p: Option<&ParallelismConfiguration>) -> Option<u32> {
    p.and_then(|p| p.max_parallel_execution_steps)
        .and_then(|n| u32::try_from(n).ok())
}

/// The pipeline a PipelineName member names (a name or an ARN).
fn find_pipeline(res: &Resources, name_or_arn: &str) -> Result<Arc<Pipeline>, AwsError> {
    let name = match name_or_arn.split_once(":pipeline/") {
        Some((_, name)) if name_or_arn.starts_with("arn:") => name,
        _ => name_or_arn,
    };
    res.pipelines
        .get(&name.to_lowercase())
        .map(|p| p.clone())
        .filter(|p| {
            !name_or_arn.starts_with("arn:")
                || p.arn == name_or_arn.to_lowercase()
                || p.arn == name_or_arn
        })
        .ok_or_else(|| AwsError::not_found(format!("Pipeline '{name_or_arn}' does not exist.")))
}

/// The pipeline `name_or_arn` names, locked, unless DeletePipeline took it meanwhile.
pub(super) fn with_pipeline<T>(
    res: &Resources,
    name_or_arn: &str,
    f: impl FnOnce(&Pipeline, &mut PipelineState) -> Result<T, AwsError>,
) -> Result<T, AwsError> {
    let pipeline = find_pipeline(res, name_or_arn)?;
    let mut state = pipeline.lock();
    if state.deleted {
        return Err(AwsError::not_found(format!(
            "Pipeline '{name_or_arn}' does not exist."
        )));
    }
    f(&pipeline, &mut state)
}

/// Pagination tokens are opaque to clients; here they carry the offset of the next page.
pub(super) fn page_start(token: Option<&str>) -> Result<usize, AwsError> {
    match token {
        None | Some("") => Ok(0),
        Some(token) => token
            .strip_prefix("emulator-page-")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| AwsError::validation("The NextToken is not valid.")),
    }
}

pub(super) fn next_token(start: usize, taken: usize, total: usize) -> Option<String> {
    (start + taken < total).then(|| format!("emulator-page-{}", start + taken))
}

/// The page of `items` that NextToken and MaxResults ask for, and the next page's token.
/// A List answer: its items under `member`, and a `NextToken` when there is a next page.
pub(super) fn paged(member: &str, items: Vec<Value>, next: Option<String>) -> Value {
    let mut out = serde_json::Map::new();
    out.insert(member.to_string(), Value::Array(items));
    if let Some(token) = next {
        out.insert("NextToken".to_string(), Value::String(token));
    }
    Value::Object(out)
}

pub(super) fn page<T>(
    items: Vec<T>,
    token: Option<&str>,
    max_results: Option<i64>,
) -> Result<(Vec<T>, Option<String>), AwsError> {
    let start = page_start(token)?;
    let size = max_results
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_PAGE);
    let total = items.len();
    let taken: Vec<T> = items.into_iter().skip(start).take(size).collect();
    let next = next_token(start, taken.len(), total);
    Ok((taken, next))
}

/// The page size when a list call gives no MaxResults.
pub(super) const DEFAULT_PAGE: usize = 10;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Scope;
    use serde_json::json;

    #[test]
    fn a_replay_matches_its_request_whatever_the_member_order() {
        let res = Resources::new(Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        });
        let op = Operation::StopPipelineExecution;
        let first = json!({"A": 1, "B": {"X": 1, "Y": [1, 2]}, "ClientRequestToken": "t"});
        let reordered: Value = serde_json::from_str(
            r#"{"ClientRequestToken": "t", "B": {"Y": [1, 2], "X": 1}, "A": 1}"#,
        )
        .unwrap();
        let answer = json!({"PipelineExecutionArn": "arn"});
        let once = || Ok(answer.clone());
        assert_eq!(
            idempotent(&res, op, Some("t"), &first, once),
            Ok(answer.clone())
        );

        let again = || panic!("a replay ran the operation again");
        assert_eq!(
            idempotent(&res, op, Some("t"), &reordered, again),
            Ok(answer)
        );
        let other = idempotent(&res, op, Some("t"), &json!({"A": 2}), again);
        assert_eq!(other.unwrap_err().code, "ValidationException");
    }

    #[test]
    fn a_failure_is_not_recorded() {
        let res = Resources::new(Scope {
            account: "123456789012".into(),
            region: "us-east-1".into(),
        });
        let op = Operation::RetryPipelineExecution;
        let input = json!({"PipelineExecutionArn": "arn"});
        let refused = || Err(AwsError::validation("not now"));
        assert!(idempotent(&res, op, Some("t"), &input, refused).is_err());
        let ok = || Ok(json!({"PipelineExecutionArn": "arn"}));
        assert!(idempotent(&res, op, Some("t"), &input, ok).is_ok());
    }
}
