//! SQS on the emulator's own port, for the consumers of Callback steps, in SQS's JSON protocol
//! (awsJson1_0): `POST /` with `X-Amz-Target: AmazonSQS.<Action>` and
//! `Content-Type: application/x-amz-json-1.0`.
//!
//! CreateQueue, GetQueueUrl, ListQueues, SendMessage, ReceiveMessage (long polling with
//! WaitTimeSeconds, answering as soon as a message arrives; MaxNumberOfMessages 1-10;
//! VisibilityTimeout), DeleteMessage, DeleteMessageBatch (up to 10 entries, each answered on
//! its own), ChangeMessageVisibility and PurgeQueue, on standard
//! queues (see `queue`). A queue belongs to an (account, region) like everything else: the
//! caller's region, and the account its URL names (`http://HOST:PORT/ACCOUNT/NAME`, HOST:PORT
//! as the caller reached the emulator). A Callback step's messages go to the queue its
//! `SqsQueueUrl` names by its last two path segments, in the execution's region, made on first
//! use (see `state::Locked`).
//!
//! Errors are SQS's: HTTP 400 with `{"__type": "com.amazonaws.sqs#QueueDoesNotExist",
//! "message": ...}` and the awsQuery-compatible code in `x-amzn-query-error`
//! (`AWS.SimpleQueueService.NonExistentQueue;Sender`), which SDKs read for the old codes (both
//! the Rust SDK and boto3 report the header's code when there is one). Refused credentials
//! (see `identity`) are AWS's own errors, HTTP 403 with `com.amazon.coral.service#` types, and
//! SQS's query codes in the header: `InvalidSignatureException` / `SignatureDoesNotMatch`,
//! `UnrecognizedClientException` / `InvalidClientTokenId`. SQS allows signatures dated up to
//! [`SIGNATURE_WINDOW`] minutes from its clock.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    http::{HeaderValue, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::{
    identity::{Caller, Refusal, Scope},
    queue::{HandleError, Queue, QueueAttributes, Received, parse_queue_url, valid_queue_name},
    state::{Call, Emulator, SqsAction},
};

pub(crate) const CONTENT_TYPE: &str = "application/x-amz-json-1.0";

/// How many minutes before or after SQS's clock a signature may be dated (its "Signature
/// expired: ... (... - 15 min.)").
pub(crate) const SIGNATURE_WINDOW: i64 = 15;

/// An error as SQS answers it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SqsError {
    status: StatusCode,
    /// The shape's namespace: `com.amazonaws.sqs` for SQS's own errors.
    namespace: &'static str,
    /// The shape name (`__type` is the namespace, `#` and it).
    shape: &'static str,
    /// The awsQuery code and fault, for `x-amzn-query-error`.
    query_code: &'static str,
    message: String,
}

impl SqsError {
    fn new(shape: &'static str, query_code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            namespace: "com.amazonaws.sqs",
            shape,
            query_code,
            message: message.into(),
        }
    }

    /// The caller's credentials are refused: SQS's own ExpiredToken (400) for an expired key;
    /// the others are the errors AWS's front end answers for every JSON service (403).
    fn refused(refusal: &Refusal) -> Self {
        let (shape, query_code) = match refusal {
            Refusal::ExpiredToken => {
                return Self::new("ExpiredToken", "ExpiredToken;Sender", refusal.message());
            }
            Refusal::InvalidToken => ("UnrecognizedClientException", "InvalidClientTokenId;Sender"),
            Refusal::SignatureExpired { .. }
            | Refusal::SignatureNotYetCurrent { .. }
            | Refusal::SignatureMismatch => {
                ("InvalidSignatureException", "SignatureDoesNotMatch;Sender")
            }
        };
        Self {
            status: StatusCode::FORBIDDEN,
            namespace: "com.amazon.coral.service",
            shape,
            query_code,
            message: refusal.message(),
        }
    }

    fn no_queue() -> Self {
        Self::new(
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue;Sender",
            "The specified queue does not exist.",
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(
            "InvalidParameterValue",
            "InvalidParameterValue;Sender",
            message,
        )
    }

    fn missing(member: &str) -> Self {
        Self::new(
            "MissingParameter",
            "MissingParameter;Sender",
            format!("The request must contain the parameter {member}."),
        )
    }

    fn out_of_range(member: &str, value: i64, min: i64, max: i64) -> Self {
        Self::invalid(format!(
            "Value {value} for parameter {member} is invalid. Reason: Must be between {min} and {max}, if provided."
        ))
    }

    fn handle(error: HandleError, handle: &str) -> Self {
        match error {
            HandleError::Invalid => Self::new(
                "ReceiptHandleIsInvalid",
                "ReceiptHandleIsInvalid;Sender",
                format!("The input receipt handle \"{handle}\" is not a valid receipt handle."),
            ),
            HandleError::NotInFlight => Self::new(
                "MessageNotInflight",
                "AWS.SimpleQueueService.MessageNotInflight;Sender",
                "The message referred to is not in flight.",
            ),
        }
    }

    fn unknown_action(target: &str) -> Self {
        Self::new(
            "UnsupportedOperation",
            "AWS.SimpleQueueService.UnsupportedOperation;Sender",
            format!("Action '{target}' is not supported by this emulator."),
        )
    }
}

impl IntoResponse for SqsError {
    fn into_response(self) -> Response {
        let body = json!({
            "__type": format!("{}#{}", self.namespace, self.shape),
            "message": self.message,
        });
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            "x-amzn-query-error",
            HeaderValue::from_static(self.query_code),
        );
        response
    }
}

type SqsResult = Result<Value, SqsError>;

/// One SQS call (`target` is the `X-Amz-Target` header, `host` the one the caller reached).
pub(crate) async fn answer(
    emulator: &Emulator,
    caller: &Caller,
    target: &str,
    host: &str,
    body: &[u8],
) -> Response {
    match act(emulator, caller, target, host, body).await {
        Ok(value) => (StatusCode::OK, value.to_string()).into_response(),
        Err(error) => error.into_response(),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, SqsError> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| {
        SqsError::new(
            "InvalidParameterValue",
            "InvalidParameterValue;Sender",
            format!("The request body is not valid: {e}"),
        )
    })
}

async fn act(
    emulator: &Emulator,
    caller: &Caller,
    target: &str,
    host: &str,
    body: &[u8],
) -> SqsResult {
    let action = target
        .strip_prefix("AmazonSQS.")
        .and_then(SqsAction::from_name)
        .ok_or_else(|| SqsError::unknown_action(target))?;
    emulator.stats.count(&caller.scope, Call::Sqs(action));
    if let Some(refusal) = &caller.refusal {
        return Err(SqsError::refused(refusal));
    }
    let sqs = Sqs {
        emulator,
        caller,
        host,
    };
    match action {
        SqsAction::CreateQueue => sqs.create_queue(parse(body)?),
        SqsAction::GetQueueUrl => sqs.get_queue_url(parse(body)?),
        SqsAction::ListQueues => sqs.list_queues(parse(body)?),
        SqsAction::SendMessage => sqs.send_message(parse(body)?),
        SqsAction::ReceiveMessage => sqs.receive_message(parse(body)?).await,
        SqsAction::DeleteMessage => sqs.delete_message(parse(body)?),
        SqsAction::DeleteMessageBatch => sqs.delete_message_batch(parse(body)?),
        SqsAction::ChangeMessageVisibility => sqs.change_visibility(parse(body)?),
        SqsAction::PurgeQueue => sqs.purge_queue(parse(body)?),
    }
}

struct Sqs<'a> {
    emulator: &'a Emulator,
    caller: &'a Caller,
    host: &'a str,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateQueueInput {
    queue_name: Option<String>,
    attributes: Option<HashMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct GetQueueUrlInput {
    queue_name: Option<String>,
    #[serde(rename = "QueueOwnerAWSAccountId")]
    queue_owner_aws_account_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListQueuesInput {
    queue_name_prefix: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendMessageInput {
    queue_url: Option<String>,
    message_body: Option<String>,
    delay_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ReceiveMessageInput {
    queue_url: Option<String>,
    attribute_names: Option<Vec<String>>,
    message_system_attribute_names: Option<Vec<String>>,
    max_number_of_messages: Option<i64>,
    visibility_timeout: Option<i64>,
    wait_time_seconds: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HandleInput {
    queue_url: Option<String>,
    receipt_handle: Option<String>,
    visibility_timeout: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteBatchInput {
    queue_url: Option<String>,
    entries: Option<Vec<DeleteBatchEntry>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DeleteBatchEntry {
    id: Option<String>,
    receipt_handle: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct QueueUrlInput {
    queue_url: Option<String>,
}

/// The most a message body may hold: 256 KiB.
const MAX_BODY: usize = 262_144;

fn required<'v>(member: &str, value: Option<&'v str>) -> Result<&'v str, SqsError> {
    value.ok_or_else(|| SqsError::missing(member))
}

/// `value` checked against `min..=max` (as SQS words it), as seconds or a count.
fn bounded(member: &str, value: Option<i64>, min: i64, max: i64) -> Result<Option<u32>, SqsError> {
    match value {
        None => Ok(None),
        Some(v) if (min..=max).contains(&v) => Ok(u32::try_from(v).ok()),
        Some(v) => Err(SqsError::out_of_range(member, v, min, max)),
    }
}

impl Sqs<'_> {
    fn url(&self, account: &str, name: &str) -> String {
        format!("http://{}/{account}/{name}", self.host)
    }

    /// The queue a QueueUrl names, in the caller's region.
    fn queue(&self, url: Option<&str>) -> Result<Arc<Queue>, SqsError> {
        let url = required("QueueUrl", url)?;
        let (account, name) = parse_queue_url(url).ok_or_else(|| {
            SqsError::new(
                "InvalidAddress",
                "InvalidAddress;Sender",
                format!("The address {url} is not valid for this endpoint."),
            )
        })?;
        let scope = Scope {
            account: account.to_string(),
            region: self.caller.scope.region.clone(),
        };
        self.emulator
            .resources(&scope)
            .queues
            .get(name)
            .map(|q| q.clone())
            .ok_or_else(SqsError::no_queue)
    }

    fn create_queue(&self, input: CreateQueueInput) -> SqsResult {
        let name = required("QueueName", input.queue_name.as_deref())?;
        if name.ends_with(".fifo") {
            return Err(SqsError::invalid(
                "FIFO queues are not supported by this emulator; use a standard queue.",
            ));
        }
        if !valid_queue_name(name) {
            return Err(SqsError::invalid(
                "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length",
            ));
        }
        let mut attributes = QueueAttributes::default();
        for (key, value) in input.attributes.iter().flatten() {
            let number = |min: i64, max: i64| {
                value
                    .parse::<i64>()
                    .ok()
                    .filter(|v| (min..=max).contains(v))
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| {
                        SqsError::new(
                            "InvalidAttributeValue",
                            "InvalidAttributeValue;Sender",
                            format!("Invalid value for the parameter {key}."),
                        )
                    })
            };
            match key.as_str() {
                "VisibilityTimeout" => attributes.visibility_timeout = number(0, 43_200)?,
                "ReceiveMessageWaitTimeSeconds" => attributes.receive_wait = number(0, 20)?,
                "DelaySeconds" => attributes.delay = number(0, 900)?,
                // Accepted and not acted on: the emulator keeps messages until deleted.
                "MessageRetentionPeriod"
                | "MaximumMessageSize"
                | "Policy"
                | "RedrivePolicy"
                | "KmsMasterKeyId"
                | "SqsManagedSseEnabled" => {}
                other => {
                    return Err(SqsError::new(
                        "InvalidAttributeName",
                        "InvalidAttributeName;Sender",
                        format!("Unknown Attribute {other}."),
                    ));
                }
            }
        }
        let scope = &self.caller.scope;
        let resources = self.emulator.resources(scope);
        let queue = resources
            .queues
            .entry(name.to_string())
            .or_insert_with(|| Arc::new(Queue::new(attributes)))
            .clone();
        // The same name again is fine with the same attributes, as in SQS.
        if input.attributes.is_some() && queue.attributes() != attributes {
            return Err(SqsError::new(
                "QueueNameExists",
                "QueueAlreadyExists;Sender",
                "A queue already exists with the same name and a different value for attribute(s).",
            ));
        }
        Ok(json!({ "QueueUrl": self.url(&scope.account, name) }))
    }

    fn get_queue_url(&self, input: GetQueueUrlInput) -> SqsResult {
        let name = required("QueueName", input.queue_name.as_deref())?;
        let account = input
            .queue_owner_aws_account_id
            .unwrap_or_else(|| self.caller.scope.account.clone());
        let scope = Scope {
            account: account.clone(),
            region: self.caller.scope.region.clone(),
        };
        if !self.emulator.resources(&scope).queues.contains_key(name) {
            return Err(SqsError::no_queue());
        }
        Ok(json!({ "QueueUrl": self.url(&account, name) }))
    }

    fn list_queues(&self, input: ListQueuesInput) -> SqsResult {
        let max = bounded("MaxResults", input.max_results, 1, 1000)?;
        let prefix = input.queue_name_prefix.unwrap_or_default();
        let scope = &self.caller.scope;
        let mut names: Vec<String> = self
            .emulator
            .resources(scope)
            .queues
            .iter()
            .map(|q| q.key().clone())
            .filter(|name| name.starts_with(&prefix))
            .collect();
        names.sort();
        let start = match input.next_token.as_deref() {
            None | Some("") => 0,
            Some(token) => token
                .strip_prefix("emulator-page-")
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| SqsError::invalid("Invalid NextToken value."))?,
        };
        // Without MaxResults SQS answers up to 1000 and no token.
        let size = max.map_or(1000, |n| n as usize);
        let urls: Vec<String> = names
            .iter()
            .skip(start)
            .take(size)
            .map(|name| self.url(&scope.account, name))
            .collect();
        let mut out = json!({ "QueueUrls": urls });
        if max.is_some() && start + urls.len() < names.len() {
            out["NextToken"] = json!(format!("emulator-page-{}", start + urls.len()));
        }
        Ok(out)
    }

    fn send_message(&self, input: SendMessageInput) -> SqsResult {
        let queue = self.queue(input.queue_url.as_deref())?;
        let body = required("MessageBody", input.message_body.as_deref())?;
        if body.is_empty() || body.len() > MAX_BODY {
            return Err(SqsError::invalid(format!(
                "One or more parameters are invalid. Reason: Message must be between 1 and {MAX_BODY} bytes long."
            )));
        }
        let delay = bounded("DelaySeconds", input.delay_seconds, 0, 900)?;
        let (id, md5) = queue.send(body.to_string(), delay, &self.emulator.ids);
        Ok(json!({ "MessageId": id, "MD5OfMessageBody": md5 }))
    }

    async fn receive_message(&self, input: ReceiveMessageInput) -> SqsResult {
        let url = input.queue_url.as_deref();
        let queue = self.queue(url)?;
        let (account, name) = url.and_then(parse_queue_url).unwrap_or_default();
        let region = &self.caller.scope.region;
        let clock = &self.emulator.clock;
        let senders = || {
            let next = self.emulator.advance_senders(account, region, name)?;
            Some(Instant::from_std(clock.instant_at(next)))
        };
        let max = bounded("MaxNumberOfMessages", input.max_number_of_messages, 1, 10)?;
        let visibility = bounded("VisibilityTimeout", input.visibility_timeout, 0, 43_200)?;
        let wait = bounded("WaitTimeSeconds", input.wait_time_seconds, 0, 20)?
            .unwrap_or(queue.attributes().receive_wait);
        let received = queue
            .receive(
                max.map_or(1, |n| n as usize),
                visibility,
                Duration::from_secs(u64::from(wait)),
                &self.emulator.ids,
                senders,
            )
            .await;
        let wanted: Vec<&str> = input
            .attribute_names
            .iter()
            .chain(input.message_system_attribute_names.iter())
            .flatten()
            .map(String::as_str)
            .collect();
        let sender = &self.caller.user_id;
        let messages: Vec<Value> = received
            .iter()
            .map(|m| message_json(m, &wanted, sender))
            .collect();
        if messages.is_empty() {
            return Ok(json!({}));
        }
        Ok(json!({ "Messages": messages }))
    }

    fn delete_message(&self, input: HandleInput) -> SqsResult {
        let queue = self.queue(input.queue_url.as_deref())?;
        let handle = required("ReceiptHandle", input.receipt_handle.as_deref())?;
        queue
            .delete(handle)
            .map_err(|e| SqsError::handle(e, handle))?;
        Ok(json!({}))
    }

    fn delete_message_batch(&self, input: DeleteBatchInput) -> SqsResult {
        let queue = self.queue(input.queue_url.as_deref())?;
        let entries = input.entries.unwrap_or_default();
        if entries.is_empty() {
            return Err(SqsError::new(
                "EmptyBatchRequest",
                "AWS.SimpleQueueService.EmptyBatchRequest;Sender",
                "There should be at least one DeleteMessageBatchRequestEntry in the request.",
            ));
        }
        if entries.len() > 10 {
            return Err(SqsError::new(
                "TooManyEntriesInBatchRequest",
                "AWS.SimpleQueueService.TooManyEntriesInBatchRequest;Sender",
                format!(
                    "Maximum number of entries per request are 10. You have sent {}.",
                    entries.len()
                ),
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for entry in &entries {
            let id = required("Id", entry.id.as_deref())?;
            if id.is_empty()
                || id.len() > 80
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(SqsError::new(
                    "InvalidBatchEntryId",
                    "AWS.SimpleQueueService.InvalidBatchEntryId;Sender",
                    "A batch entry id can only contain alphanumeric characters, hyphens and underscores. It can be at most 80 letters long.",
                ));
            }
            if !ids.insert(id) {
                return Err(SqsError::new(
                    "BatchEntryIdsNotDistinct",
                    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct;Sender",
                    format!("Id {id} repeated."),
                ));
            }
        }
        let mut successful = Vec::new();
        let mut failed = Vec::new();
        for entry in &entries {
            let id = entry.id.as_deref().unwrap_or_default();
            let result = match entry.receipt_handle.as_deref() {
                Some(handle) => queue
                    .delete(handle)
                    .map_err(|e| SqsError::handle(e, handle)),
                None => Err(SqsError::missing("ReceiptHandle")),
            };
            match result {
                Ok(()) => successful.push(json!({"Id": id})),
                Err(error) => failed.push(json!({
                    "Id": id,
                    "SenderFault": true,
                    "Code": error.shape,
                    "Message": error.message,
                })),
            }
        }
        Ok(json!({"Successful": successful, "Failed": failed}))
    }

    fn change_visibility(&self, input: HandleInput) -> SqsResult {
        let queue = self.queue(input.queue_url.as_deref())?;
        let handle = required("ReceiptHandle", input.receipt_handle.as_deref())?;
        let timeout = bounded("VisibilityTimeout", input.visibility_timeout, 0, 43_200)?
            .ok_or_else(|| SqsError::missing("VisibilityTimeout"))?;
        queue
            .change_visibility(handle, timeout)
            .map_err(|e| SqsError::handle(e, handle))?;
        Ok(json!({}))
    }

    fn purge_queue(&self, input: QueueUrlInput) -> SqsResult {
        let queue = self.queue(input.queue_url.as_deref())?;
        queue.purge();
        Ok(json!({}))
    }
}

/// A received message as SQS writes it, with the system attributes asked for (`All` for
/// every one).
fn message_json(m: &Received, wanted: &[&str], sender: &str) -> Value {
    let mut out = json!({
        "MessageId": m.id,
        "ReceiptHandle": m.receipt_handle,
        "MD5OfBody": m.md5,
        "Body": m.body,
    });
    let all = wanted.contains(&"All");
    let attributes: serde_json::Map<String, Value> = [
        ("SenderId", sender.to_string()),
        ("SentTimestamp", m.sent_at_ms.to_string()),
        ("ApproximateReceiveCount", m.receive_count.to_string()),
        (
            "ApproximateFirstReceiveTimestamp",
            m.first_receive_ms.to_string(),
        ),
    ]
    .into_iter()
    .filter(|(name, _)| all || wanted.contains(name))
    .map(|(name, value)| (name.to_string(), Value::String(value)))
    .collect();
    if !attributes.is_empty() {
        out["Attributes"] = Value::Object(attributes);
    }
    out
}
