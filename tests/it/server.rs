//! The server's surface through a real tonic client: reflection (v1 and v1alpha), health, the
//! contract's RPCs, and health following the database.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::Duration;

use crate::common::{Backend, TestApp, TestDb, test_args};
use prost::Message as _;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::{v1, v1alpha};

const SERVICE: &str = "pipelinecontrol.v1.PipelineControl";

async fn list_services_v1(app: &TestApp) -> Vec<String> {
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1 answers")
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    match response.message_response {
        Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response: {other:?}"),
    }
}

async fn list_services_v1alpha(app: &TestApp) -> Vec<String> {
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection v1alpha answers")
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    match response.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection response: {other:?}"),
    }
}

/// The file that defines `symbol`, as reflection v1alpha (what grpcurl 1.8.6 speaks) returns it.
async fn file_containing_v1alpha(app: &TestApp, symbol: &str) -> prost_types::FileDescriptorProto {
    let mut client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(app.channel().await);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                symbol.to_string(),
            ),
        ),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses.message().await.unwrap().expect("one response");
    match response.message_response {
        Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(
            files,
        )) => {
            let first = files.file_descriptor_proto.first().expect("a file");
            prost_types::FileDescriptorProto::decode(first.as_slice()).expect("a descriptor")
        }
        other => panic!("unexpected reflection response for {symbol}: {other:?}"),
    }
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(test_args(&db)).await;
    let expected = [
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    for services in [
        list_services_v1(&app).await,
        list_services_v1alpha(&app).await,
    ] {
        for name in expected {
            assert!(
                services.iter().any(|s| s == name),
                "{name} missing from {services:?}"
            );
        }
    }
    app.shutdown().await.unwrap();
}

#[tokio::test]
async fn reflection_describes_the_contract_with_its_doc_comments() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(test_args(&db)).await;

    let file = file_containing_v1alpha(&app, SERVICE).await;
    assert_eq!(file.name(), "pipelinecontrol/v1/pipeline_control.proto");
    assert_eq!(file.package(), "pipelinecontrol.v1");
    let methods: Vec<&str> = file.service[0].method.iter().map(|m| m.name()).collect();
    assert_eq!(
        methods,
        [
            "StopExecution",
            "GetExecution",
            "WatchExecution",
            "GetStopRequest",
            "ListStopRequests",
            "StopExecutions"
        ]
    );
    let comments: Vec<&str> = file
        .source_code_info
        .as_ref()
        .expect("source info is kept")
        .location
        .iter()
        .map(|l| l.leading_comments())
        .collect();
    assert!(
        comments
            .iter()
            .any(|c| c.contains("Asks SageMaker to stop a pipeline execution")),
        "the StopExecution doc comment is served"
    );
    let enums: Vec<&str> = file.enum_type.iter().map(|e| e.name()).collect();
    assert_eq!(
        enums,
        [
            "ExecutionStatus",
            "StepStatus",
            "StopOutcome",
            "StopRequestState"
        ]
    );

    // Health is described too (grpcurl describe grpc.health.v1.Health).
    let health = file_containing_v1alpha(&app, "grpc.health.v1.Health").await;
    assert_eq!(health.package(), "grpc.health.v1");

    // So are the error details errors carry, which grpcurl decodes through reflection.
    let details = file_containing_v1alpha(&app, "google.rpc.ErrorInfo").await;
    assert_eq!(details.package(), "google.rpc");
    app.shutdown().await.unwrap();
}

async fn check(app: &TestApp, service: &str) -> Result<ServingStatus, tonic::Status> {
    let mut client = HealthClient::new(app.channel().await);
    let response = client
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await?;
    Ok(response.into_inner().status())
}

#[tokio::test]
async fn health_is_serving_once_the_store_is_ready() {
    for backend in [Backend::Postgres, Backend::Sqlite] {
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(test_args(&db)).await;
        assert_eq!(check(&app, "").await.unwrap(), ServingStatus::Serving);
        assert_eq!(check(&app, SERVICE).await.unwrap(), ServingStatus::Serving);
        let unknown = check(&app, "no.such.Service").await.unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound);
        app.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn health_turns_not_serving_when_the_database_goes_away() {
    let mut db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn(test_args(&db)).await;
    assert_eq!(check(&app, SERVICE).await.unwrap(), ServingStatus::Serving);

    db.drop_now().await; // closes every connection and removes the database

    // The checker runs every 100 ms; wait (bounded) for it to notice.
    let mut status = ServingStatus::Serving;
    for _ in 0..300 {
        status = check(&app, SERVICE).await.unwrap();
        if status == ServingStatus::NotServing {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, ServingStatus::NotServing);
    assert_eq!(check(&app, "").await.unwrap(), ServingStatus::NotServing);
    app.shutdown().await.unwrap();
}

/// The plaintext health port (`--health-listen`) says what the main port's health says: it
/// turns NOT_SERVING when the database goes away.
#[tokio::test]
async fn the_health_port_turns_not_serving_when_the_database_goes_away() {
    let mut db = TestDb::new(Backend::Postgres).await;
    let mut args = test_args(&db);
    args.health_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    let app = TestApp::spawn(args).await;
    let health = app.health.expect("the health port is bound");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let check = || {
        let mut client = HealthClient::new(channel.clone());
        async move {
            client
                .check(HealthCheckRequest {
                    service: SERVICE.to_string(),
                })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    assert_eq!(check().await, ServingStatus::Serving);

    db.drop_now().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while check().await != ServingStatus::NotServing {
        assert!(tokio::time::Instant::now() < deadline, "still SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.shutdown().await.unwrap();
}
