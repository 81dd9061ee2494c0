//! Arbitrary input in every field of every request (strings, bytes that are not UTF-8, bodies
//! that are not protobuf at all), sent over the wire to a real server: the server never panics,
//! answers with a proper gRPC code and an ErrorInfo, and for invalid input calls nothing
//! upstream and records nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use crate::common::{Backend, Stack, count_rows};
use pipeline_control::{ERROR_DOMAIN, pb};
use proptest::{
    prelude::*,
    test_runner::{Config, TestCaseError, TestRunner},
};
use prost::{
    Message as _,
    bytes::{Buf as _, BufMut as _},
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    transport::Channel,
};
use tonic_types::StatusExt as _;

/// The request messages with every string field as raw bytes: the same wire format, but
/// free to carry what a string may not.
mod raw {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct StopExecutionRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) pipeline_execution_arn: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub(crate) client_request_token: Vec<u8>,
        #[prost(bytes = "vec", tag = "3")]
        pub(crate) reason: Vec<u8>,
    }

    /// GetExecutionRequest and WatchExecutionRequest.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct ExecutionRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) pipeline_execution_arn: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct GetStopRequestRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub(crate) client_request_token: Vec<u8>,
    }
}

/// Sends and receives message bodies as they are.
#[derive(Debug, Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(buf.copy_to_bytes(buf.remaining()).to_vec()))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rpc {
    Stop,
    Get,
    Watch,
    GetStopRequest,
}

impl Rpc {
    fn path(self) -> &'static str {
        match self {
            Rpc::Stop => "/pipelinecontrol.v1.PipelineControl/StopExecution",
            Rpc::Get => "/pipelinecontrol.v1.PipelineControl/GetExecution",
            Rpc::Watch => "/pipelinecontrol.v1.PipelineControl/WatchExecution",
            Rpc::GetStopRequest => "/pipelinecontrol.v1.PipelineControl/GetStopRequest",
        }
    }

    /// The codes a call may answer for any input: its own outcomes and refusals of input.
    fn allowed(self) -> &'static [Code] {
        match self {
            Rpc::Stop => &[
                Code::Ok,
                Code::InvalidArgument,
                Code::NotFound,
                Code::FailedPrecondition,
            ],
            Rpc::Get | Rpc::Watch | Rpc::GetStopRequest => {
                &[Code::Ok, Code::InvalidArgument, Code::NotFound]
            }
        }
    }
}

/// Calls `rpc` with `body` as the request message; the answer's code, and the status if not OK.
async fn call(channel: &Channel, rpc: Rpc, body: Vec<u8>) -> (Code, Option<Status>) {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(rpc.path());
    let request = tonic::Request::new(body);
    let outcome = if rpc == Rpc::Watch {
        match grpc.server_streaming(request, path, RawCodec).await {
            // The first message is a snapshot that decodes.
            Ok(response) => match response.into_inner().message().await {
                Ok(Some(message)) => {
                    pb::WatchExecutionResponse::decode(&message[..]).unwrap();
                    Ok(())
                }
                Ok(None) => panic!("a watch stream ended without a message"),
                Err(status) => Err(status),
            },
            Err(status) => Err(status),
        }
    } else {
        grpc.unary(request, path, RawCodec).await.map(|response| {
            let message = response.into_inner();
            match rpc {
                Rpc::Stop => drop(pb::StopExecutionResponse::decode(&message[..]).unwrap()),
                Rpc::Get => drop(pb::Execution::decode(&message[..]).unwrap()),
                Rpc::GetStopRequest => drop(pb::StopRequest::decode(&message[..]).unwrap()),
                Rpc::Watch => unreachable!(),
            }
        })
    };
    match outcome {
        Ok(()) => (Code::Ok, None),
        Err(status) => (status.code(), Some(status)),
    }
}

/// Any bytes, any string, or an almost-valid value built from `valid` pieces.
fn field(almost: BoxedStrategy<String>, max: usize) -> BoxedStrategy<Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..max),
        proptest::string::string_regex(&format!("(?s).{{0,{max}}}"))
            .unwrap()
            .prop_map(String::into_bytes),
        almost.prop_map(String::into_bytes),
    ]
    .boxed()
}

fn arn_field(real: String) -> BoxedStrategy<Vec<u8>> {
    let almost = prop_oneof![
        1 => Just(real),
        // Well-formed, of an execution that does not exist (weighted up, so that every run
        // reaches NOT_FOUND through the other fields' checks too).
        3 => (
            "[a-z0-9-]{1,14}",
            "[0-9]{12}",
            "[a-zA-Z0-9-]{1,20}",
            "[a-z0-9]{12}"
        )
            .prop_map(|(region, account, pipeline, id)| {
                format!("arn:aws:sagemaker:{region}:{account}:pipeline/{pipeline}/execution/{id}")
            }),
        1 => (
            "[a-z-]{0,12}",
            "[0-9]{12}|[0-9]{10,13}",
            "[a-zA-Z0-9-]{1,20}|(?s).{0,20}",
            "[a-z0-9]{12}|[a-z0-9]{0,14}|(?s).{0,3}"
        )
            .prop_map(|(region, account, pipeline, id)| {
                format!("arn:aws:sagemaker:{region}:{account}:pipeline/{pipeline}/execution/{id}")
            }),
    ]
    .boxed();
    field(almost, 300)
}

fn token_field() -> BoxedStrategy<Vec<u8>> {
    field(
        prop_oneof![Just(String::new()), "[!-~]{1,140}", "[ -~]{0,20}"].boxed(),
        200,
    )
}

fn reason_field() -> BoxedStrategy<Vec<u8>> {
    field(
        prop_oneof![
            "[ -~\n\t]{0,1100}",
            "\\PC{0,1030}",
            "[\\x00-\\x1f\\x7f]{1,4}"
        ]
        .boxed(),
        1200,
    )
}

/// A request: the RPC and its body (a message, or arbitrary bytes).
fn request(real_arn: String) -> impl Strategy<Value = (Rpc, Vec<u8>)> {
    // Half the time only the ARN varies, so that varied ARNs get past the other fields.
    let stop_fields = prop_oneof![
        (arn_field(real_arn.clone()), token_field(), reason_field()),
        (
            arn_field(real_arn.clone()),
            "[!-~]{1,40}".prop_map(String::into_bytes),
            "[ -~]{0,40}".prop_map(String::into_bytes)
        ),
    ];
    let stop = stop_fields.prop_map(|(arn, token, reason)| {
        let message = raw::StopExecutionRequest {
            pipeline_execution_arn: arn,
            client_request_token: token,
            reason,
        };
        (Rpc::Stop, message.encode_to_vec())
    });
    let get = arn_field(real_arn.clone()).prop_map(|arn| {
        let message = raw::ExecutionRequest {
            pipeline_execution_arn: arn,
        };
        (Rpc::Get, message.encode_to_vec())
    });
    let watch = arn_field(real_arn).prop_map(|arn| {
        let message = raw::ExecutionRequest {
            pipeline_execution_arn: arn,
        };
        (Rpc::Watch, message.encode_to_vec())
    });
    let get_stop = token_field().prop_map(|token| {
        let message = raw::GetStopRequestRequest {
            client_request_token: token,
        };
        (Rpc::GetStopRequest, message.encode_to_vec())
    });
    let garbage = (
        prop_oneof![
            Just(Rpc::Stop),
            Just(Rpc::Get),
            Just(Rpc::Watch),
            Just(Rpc::GetStopRequest)
        ],
        proptest::collection::vec(any::<u8>(), 0..200),
    );
    prop_oneof![3 => stop, 1 => get, 1 => watch, 1 => get_stop, 2 => garbage]
}

#[test]
fn arbitrary_input_in_every_field_gets_a_proper_answer_and_invalid_input_does_no_work() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // Watch pollers read SageMaker once when they start, and not again during the test, so
    // every upstream call counted is one a request made.
    let stack = runtime.block_on(Stack::start(Backend::Postgres, 1.0, |args| {
        args.poll_interval = std::time::Duration::from_secs(3600);
        args.poller_linger = std::time::Duration::ZERO;
    }));
    let real_arn = runtime.block_on(stack.execution(serde_json::json!([
        {"Name": "Train", "Type": "Training", "Arguments": {"Emulator": {"DurationSeconds": 100000000}}}
    ])));
    let channel = runtime.block_on(stack.app.channel());

    let mut runner = TestRunner::new(Config {
        cases: 400,
        failure_persistence: None,
        ..Config::default()
    });
    let seen = std::sync::Mutex::new(std::collections::HashMap::<(Rpc, Code), u32>::new());
    let result = runner.run(&request(real_arn), |(rpc, body)| {
        runtime.block_on(async {
            let upstream_before: u64 = stack.admin.stats().await.values().sum();
            let rows_before = stack.stored_requests().await;
            let (code, status) = call(&channel, rpc, body).await;
            *seen.lock().unwrap().entry((rpc, code)).or_default() += 1;
            prop_assert!(
                rpc.allowed().contains(&code),
                "{rpc:?} answered {code:?}: {status:?}"
            );
            if let Some(status) = &status {
                let info = status.get_details_error_info();
                prop_assert!(
                    info.as_ref()
                        .is_some_and(|info| info.domain == ERROR_DOMAIN),
                    "no ErrorInfo: {status:?}"
                );
            }
            if code == Code::InvalidArgument {
                let status = status.as_ref().unwrap();
                prop_assert!(
                    status.get_details_bad_request().is_some(),
                    "no field violation: {status:?}"
                );
                let upstream_after: u64 = stack.admin.stats().await.values().sum();
                prop_assert_eq!(
                    upstream_after,
                    upstream_before,
                    "invalid input went upstream"
                );
                prop_assert_eq!(
                    stack.stored_requests().await,
                    rows_before,
                    "invalid input was recorded"
                );
            }
            Ok::<(), TestCaseError>(())
        })
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    // The input reached every kind of answer, not only refusals.
    let seen = seen.into_inner().unwrap();
    for expected in [
        (Rpc::Stop, Code::InvalidArgument),
        (Rpc::Stop, Code::NotFound),
        (Rpc::Get, Code::InvalidArgument),
        (Rpc::Watch, Code::InvalidArgument),
        (Rpc::GetStopRequest, Code::InvalidArgument),
        (Rpc::GetStopRequest, Code::NotFound),
    ] {
        assert!(
            seen.contains_key(&expected),
            "never saw {expected:?}: {seen:?}"
        );
    }
    // Still serving, and nothing was left half-done.
    runtime.block_on(async {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        assert!(
            health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .is_ok()
        );
        let db = &stack.db;
        assert_eq!(
            count_rows(db, "stop_requests").await,
            crate::common::count_where(db, "stop_requests", "state = 'completed'").await
        );
    });
    let Stack { app, .. } = stack;
    runtime.block_on(async { app.shutdown().await.unwrap() });
}

/// A raw HTTP/2 request to StopExecution with `body` and extra headers; the answer's
/// `grpc-status` and whether it carries error details.
async fn raw_call(
    http: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (String, bool) {
    let mut request = http
        .post(format!(
            "{url}/pipelinecontrol.v1.PipelineControl/StopExecution"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let details = response.headers().contains_key("grpc-status-details-bin");
    (status, details)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_that_are_not_one_plain_message_get_invalid_argument_with_details() {
    let stack = Stack::start(Backend::Postgres, 1.0, |_| {}).await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = stack.app.url();
    let message = pb::StopExecutionRequest {
        pipeline_execution_arn: "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/x"
            .into(),
        ..Default::default()
    }
    .encode_to_vec();
    let frame = |flag: u8, declared: usize, payload: &[u8]| {
        let mut bytes = vec![flag];
        bytes.extend_from_slice(&(declared as u32).to_be_bytes());
        bytes.extend_from_slice(payload);
        bytes
    };
    let two = [
        frame(0, message.len(), &message),
        frame(0, message.len(), &message),
    ]
    .concat();
    for (name, body, headers) in [
        ("no message", vec![], vec![]),
        ("compressed flag", frame(1, message.len(), &message), vec![]),
        ("truncated", frame(0, message.len() + 10, &message), vec![]),
        ("two messages", two, vec![]),
        (
            "gzip encoding",
            frame(0, message.len(), &message),
            vec![("grpc-encoding", "gzip")],
        ),
    ] {
        let (status, details) = raw_call(&http, &url, body, &headers).await;
        assert_eq!(status, "3", "{name}: INVALID_ARGUMENT");
        assert!(details, "{name}: with an ErrorInfo");
    }
    // The same message, framed properly, reaches the service (an unknown execution).
    let (status, details) = raw_call(&http, &url, frame(0, message.len(), &message), &[]).await;
    assert_eq!(status, "5", "NOT_FOUND");
    assert!(details);
    assert_eq!(stack.stored_requests().await, 1);
}

/// A deadline of zero (`grpc-timeout: 0S`) has passed before the call starts: the answer is
/// DEADLINE_EXCEEDED, not CANCELLED, and nothing is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_zero_answers_deadline_exceeded() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let http = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let message = pb::StopExecutionRequest {
        pipeline_execution_arn: "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/x"
            .into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut body = vec![0];
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(&message);
    for timeout in ["0S", "0m", "0n"] {
        let (status, details) = raw_call(
            &http,
            &stack.app.url(),
            body.clone(),
            &[("grpc-timeout", timeout)],
        )
        .await;
        assert_eq!(status, "4", "{timeout}: DEADLINE_EXCEEDED");
        assert!(details, "{timeout}: with an ErrorInfo");
    }
    assert_eq!(stack.stored_requests().await, 0);
    assert_eq!(stack.admin.calls("DescribePipelineExecution").await, 0);
    // Health, open to every caller, too.
    let health = http
        .post(format!("{}/grpc.health.v1.Health/Check", stack.app.url()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "0S")
        .body(vec![0, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(
        health
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap().to_string()),
        Some("4".to_string()),
        "health: DEADLINE_EXCEEDED"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_that_passes_in_the_server_answers_deadline_exceeded() {
    let stack = Stack::start(Backend::Sqlite, 1.0, |_| {}).await;
    let arn = crate::common::running(&stack.sagemaker).await;
    // SageMaker answers after the caller's deadline.
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            serde_json::json!({"latencyMs": 3000}),
        )
        .await;
    let mut request = tonic::Request::new(pb::GetExecutionRequest {
        pipeline_execution_arn: arn,
    });
    request.set_timeout(std::time::Duration::from_millis(500));
    let refused = stack
        .client
        .clone()
        .get_execution(request)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::DeadlineExceeded, "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "DEADLINE_EXCEEDED"
    );
}
