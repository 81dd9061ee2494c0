//! TLS, mutual TLS, bearer tokens, the policy and the limits, against a real server, database and
//! emulator: who a caller is decides its idempotency keys and what it may do, how it was proven
//! is recorded beside it, and no caller can spend the service for the others. Certificates are
//! made inside each test.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{path::PathBuf, time::Duration};

use crate::common::{
    Admin, Backend, TestApp, TestDb, count_where, spawn_emulator_with, stack_args, token_file,
};
use pipeline_control::{
    ERROR_DOMAIN,
    config::ServeArgs,
    pb::{self, pipeline_control_client::PipelineControlClient},
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::json;
use tonic::{
    Code, Request, Status,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use tonic_types::StatusExt as _;

on_both_databases!(
    tokens_name_the_principal_that_keys_and_audits_each_request,
    the_policy_allows_and_denies_each_rpc_before_any_upstream_call,
);

// ---------------------------------------------------------------------------------------------
// Certificates

/// A certificate authority made for one test.
pub(crate) struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its key, PEM.
pub(crate) struct Leaf {
    pub(crate) cert: String,
    pub(crate) key: String,
}

impl Authority {
    pub(crate) fn new(name: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    pub(crate) fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, cn: &str, sans: Vec<SanType>, purpose: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![purpose];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    pub(crate) fn server(&self) -> Leaf {
        self.leaf(
            "localhost",
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    pub(crate) fn client(&self, cn: &str, sans: Vec<SanType>) -> Leaf {
        self.leaf(cn, sans, ExtendedKeyUsagePurpose::ClientAuth)
    }
}

fn uri(text: &str) -> SanType {
    SanType::URI(text.try_into().unwrap())
}

fn dns(text: &str) -> SanType {
    SanType::DnsName(text.try_into().unwrap())
}

/// Files for one test, removed with it.
pub(crate) struct Files(tempfile::TempDir);

impl Files {
    pub(crate) fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    /// `name` as Kubernetes mounts a ConfigMap key: a symlink through `..data`, itself a
    /// symlink to a directory of this version; each call makes a new version and swaps
    /// `..data` atomically (a rename), as the kubelet does.
    pub(crate) fn mounted(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::symlink;
        let dir = self.0.path();
        let version = format!("..version_{}", uuid::Uuid::new_v4().simple());
        std::fs::create_dir(dir.join(&version)).unwrap();
        std::fs::write(dir.join(&version).join(name), text).unwrap();
        symlink(&version, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        let path = dir.join(name);
        if std::fs::symlink_metadata(&path).is_err() {
            symlink(format!("..data/{name}"), &path).unwrap();
        }
        path
    }
}

// ---------------------------------------------------------------------------------------------
// A server with its database and emulator

pub(crate) struct Secured {
    pub(crate) db: TestDb,
    pub(crate) app: TestApp,
    pub(crate) admin: Admin,
    pub(crate) sagemaker: aws_sdk_sagemaker::Client,
    pub(crate) emulator: sagemaker_emulator::RunningEmulator,
}

impl Secured {
    pub(crate) async fn start(backend: Backend, tweak: impl FnOnce(&mut ServeArgs)) -> Self {
        Self::start_with(
            backend,
            &sagemaker_emulator::EmulatorOptions::default(),
            tweak,
        )
        .await
    }

    /// A server in front of an emulator with `options`.
    pub(crate) async fn start_with(
        backend: Backend,
        options: &sagemaker_emulator::EmulatorOptions,
        tweak: impl FnOnce(&mut ServeArgs),
    ) -> Self {
        let db = TestDb::new(backend).await;
        let emulator = spawn_emulator_with(options).await;
        let mut args = stack_args(&db, &emulator.endpoint_url);
        tweak(&mut args);
        let app = TestApp::spawn(args).await;
        Self {
            db,
            app,
            admin: Admin::new(&emulator.endpoint_url),
            sagemaker: crate::common::sagemaker_client(&emulator.endpoint_url, 1),
            emulator,
        }
    }

    /// A running execution (it stays Executing until stopped).
    pub(crate) async fn execution(&self, pipeline: &str) -> String {
        let steps = json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 100000000}}}]);
        let definition = json!({"Version": "2020-12-01", "Steps": steps}).to_string();
        self.sagemaker
            .create_pipeline()
            .pipeline_name(pipeline)
            .pipeline_definition(definition)
            .role_arn("arn:aws:iam::123456789012:role/pipelines")
            .client_request_token(crate::common::token())
            .send()
            .await
            .unwrap();
        crate::common::start_execution(&self.sagemaker, pipeline).await
    }

    /// SageMaker calls of any kind so far.
    async fn upstream_calls(&self) -> u64 {
        self.admin.stats().await.values().sum()
    }

    pub(crate) fn plaintext(&self) -> PipelineControlClient<Channel> {
        PipelineControlClient::new(
            Endpoint::from_shared(self.app.url())
                .unwrap()
                .connect_lazy(),
        )
    }

    async fn tls(&self, tls: ClientTlsConfig) -> Result<Channel, tonic::transport::Error> {
        Endpoint::from_shared(format!("https://{}", self.app.addr))
            .unwrap()
            .tls_config(tls.domain_name("localhost"))
            .unwrap()
            .connect()
            .await
    }
}

pub(crate) fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// GetStopRequest for `token`, as the holder of `bearer`.
async fn get_stop_request(
    client: &mut PipelineControlClient<Channel>,
    token: &str,
    bearer: &str,
) -> Result<pb::StopRequest, Status> {
    let request = pb::GetStopRequestRequest {
        client_request_token: token.into(),
    };
    client
        .get_stop_request(with_token(request, bearer))
        .await
        .map(tonic::Response::into_inner)
}

/// GetExecution of `arn`, as the holder of `bearer`.
async fn get_execution(
    client: &mut PipelineControlClient<Channel>,
    arn: &str,
    bearer: &str,
) -> Result<pb::Execution, Status> {
    let request = pb::GetExecutionRequest {
        pipeline_execution_arn: arn.into(),
    };
    client
        .get_execution(with_token(request, bearer))
        .await
        .map(tonic::Response::into_inner)
}

/// WatchExecution of `arn`, as the holder of `bearer`.
async fn watch(
    client: &mut PipelineControlClient<Channel>,
    arn: &str,
    bearer: &str,
) -> Result<tonic::Streaming<pb::WatchExecutionResponse>, Status> {
    let request = pb::WatchExecutionRequest {
        pipeline_execution_arn: arn.into(),
    };
    client
        .watch_execution(with_token(request, bearer))
        .await
        .map(tonic::Response::into_inner)
}

pub(crate) fn stop_request(arn: &str, token: &str) -> pb::StopExecutionRequest {
    pb::StopExecutionRequest {
        pipeline_execution_arn: arn.to_string(),
        client_request_token: token.to_string(),
        reason: String::new(),
        force_after: None,
    }
}

pub(crate) fn reason_of(status: &Status) -> String {
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.domain, ERROR_DOMAIN);
    info.reason
}

pub(crate) fn assert_refused(
    result: Result<impl std::fmt::Debug, Status>,
    code: Code,
    reason: &str,
) {
    let status = result.expect_err("the call is refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(reason_of(&status), reason, "{status:?}");
}

/// The services server reflection (v1) lists, asked without credentials.
async fn reflected_services(server: &Secured) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(
        Endpoint::from_shared(server.app.url())
            .unwrap()
            .connect_lazy(),
    )
    .server_reflection_info(tokio_stream::once(request))
    .await
    .unwrap()
    .into_inner();
    match responses
        .message()
        .await
        .unwrap()
        .and_then(|r| r.message_response)
    {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

const UNKNOWN_ARN: &str =
    "arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-none/execution/000000000000";

// ---------------------------------------------------------------------------------------------
// Tokens and policy (both databases)

async fn tokens_name_the_principal_that_keys_and_audits_each_request(backend: Backend) {
    let files = Files::new();
    let tokens = files.write(
        "tokens.toml",
        &token_file(&[("billing", "billing-secret"), ("search", "search-secret")]),
    );
    let server = Secured::start(backend, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
    })
    .await;
    let arn = server.execution("shared").await;
    let mut client = server.plaintext();

    // No token, a wrong one, a malformed header: UNAUTHENTICATED, nothing recorded or sent.
    let before = server.upstream_calls().await;
    assert_refused(
        client.stop_execution(stop_request(&arn, "t-1")).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_refused(
        client
            .stop_execution(with_token(stop_request(&arn, "t-1"), "guess"))
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    let mut basic = Request::new(stop_request(&arn, "t-1"));
    basic.metadata_mut().insert(
        "authorization",
        "Basic YmlsbGluZzpzZWNyZXQ=".parse().unwrap(),
    );
    assert_refused(
        client.stop_execution(basic).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_refused(
        client
            .get_execution(pb::GetExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            })
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_eq!(server.upstream_calls().await, before);
    assert_eq!(count_where(&server.db, "stop_requests", "true").await, 0);

    // Health and reflection stay open.
    let health = HealthClient::new(
        Endpoint::from_shared(server.app.url())
            .unwrap()
            .connect_lazy(),
    )
    .check(HealthCheckRequest::default())
    .await;
    assert!(health.is_ok(), "{health:?}");
    let services = reflected_services(&server).await;
    assert!(
        services.contains(&"pipelinecontrol.v1.PipelineControl".to_string()),
        "{services:?}"
    );

    // The same client token from two principals: two requests, one stop upstream, and each
    // principal sees only its own record.
    let first = client
        .stop_execution(with_token(
            stop_request(&arn, "same-token"),
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.outcome(), pb::StopOutcome::StopRequested);
    let second = client
        .stop_execution(with_token(
            stop_request(&arn, "same-token"),
            "search-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!second.replayed, "another principal's token is another key");
    assert_eq!(second.outcome(), pb::StopOutcome::AlreadyStopped);
    for principal in ["billing", "search"] {
        assert_eq!(
            count_where(
                &server.db,
                "stop_requests",
                &format!(
                    "principal = '{principal}' AND client_token = 'same-token' \
                     AND auth_method = 'token'"
                ),
            )
            .await,
            1,
            "{principal}"
        );
        assert!(
            count_where(
                &server.db,
                "stop_audit",
                &format!("principal = '{principal}'")
            )
            .await
                >= 1,
            "the audit trail names {principal}"
        );
    }
    assert_eq!(
        count_where(&server.db, "stop_requests", "principal = 'anonymous'").await,
        0
    );

    let record = get_stop_request(&mut client, "same-token", "billing-secret")
        .await
        .unwrap();
    assert_eq!(record.principal, "billing");
    assert_eq!(record.auth_method, "token");
    assert_eq!(record.pipeline_execution_arn, arn);

    // A replay is the principal's own.
    let replay = client
        .stop_execution(with_token(
            stop_request(&arn, "same-token"),
            "search-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(replay.replayed);
    assert_eq!(replay.outcome(), pb::StopOutcome::AlreadyStopped);
    // Every audit row names how its caller was proven, the replay's too (written behind).
    until_rows(
        &server.db,
        "stop_audit",
        "principal = 'search' AND event = 'replayed' AND auth_method = 'token'",
        1,
    )
    .await;
    assert_eq!(
        count_where(
            &server.db,
            "stop_audit",
            "auth_method IS NULL OR auth_method <> 'token'"
        )
        .await,
        0
    );
}

/// Waits (10 s at most) until `table` has `expected` rows where `condition` holds: audit rows
/// of replays are written behind.
pub(crate) async fn until_rows(db: &TestDb, table: &str, condition: &str, expected: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let found = count_where(db, table, condition).await;
        if found == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{found} rows of {table} where {condition}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn the_policy_allows_and_denies_each_rpc_before_any_upstream_call(backend: Backend) {
    let files = Files::new();
    let tokens = files.write(
        "tokens.toml",
        &token_file(&[
            ("billing", "billing-secret"),
            ("auditor", "auditor-secret"),
            ("operator", "operator-secret"),
            ("stopper", "stopper-secret"),
        ]),
    );
    let policy = files.write(
        "policy.toml",
        r#"
        [[allow]]
        principal = "operator"
        stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]
        read = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/search-*"]

        [[allow]]
        principal = "stopper"
        stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]

        [[allow]]
        principal = "billing"
        stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]
        read = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]

        [[allow]]
        principal = "auditor"
        read = ["arn:aws:sagemaker:*:*:pipeline/*"]
        "#,
    );
    let server = Secured::start(backend, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        args.security.policy_file = Some(policy.clone());
    })
    .await;
    let billing_arn = server.execution("billing-daily").await;
    let search_arn = server.execution("search-daily").await;
    let mut client = server.plaintext();
    server.admin.reset_stats().await;

    // Denied: stop outside the policy, for an existing execution and for one that does not
    // exist alike; reads outside it; a principal with no stop rights at all.
    for (token, arn) in [
        ("billing-secret", search_arn.as_str()),
        (
            "billing-secret",
            "arn:aws:sagemaker:us-east-1:123456789012:pipeline/search-none/execution/000000000000",
        ),
        ("auditor-secret", billing_arn.as_str()),
        ("auditor-secret", UNKNOWN_ARN),
    ] {
        assert_refused(
            client
                .stop_execution(with_token(stop_request(arn, "denied"), token))
                .await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    for arn in [
        search_arn.as_str(),
        "arn:aws:sagemaker:us-east-1:123456789012:pipeline/search-none/execution/000000000000",
    ] {
        assert_refused(
            get_execution(&mut client, arn, "billing-secret").await,
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
        assert_refused(
            watch(&mut client, arn, "billing-secret").await.map(|_| ()),
            Code::PermissionDenied,
            "PERMISSION_DENIED",
        );
    }
    assert_eq!(
        server.upstream_calls().await,
        0,
        "nothing denied reached SageMaker"
    );
    assert_eq!(count_where(&server.db, "stop_requests", "true").await, 0);
    let denied = client
        .stop_execution(with_token(
            stop_request(&search_arn, "denied"),
            "billing-secret",
        ))
        .await
        .unwrap_err();
    let info = denied.get_details_error_info().unwrap();
    assert_eq!(info.metadata["principal"], "billing");
    assert_eq!(info.metadata["action"], "stop");

    // Allowed: billing stops and reads its own; the auditor reads everything.
    let stopped = client
        .stop_execution(with_token(
            stop_request(&billing_arn, "allowed"),
            "billing-secret",
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.outcome(), pb::StopOutcome::StopRequested);
    assert_refused(
        client
            .stop_execution(with_token(
                stop_request(UNKNOWN_ARN, "allowed-missing"),
                "billing-secret",
            ))
            .await,
        Code::NotFound,
        "EXECUTION_NOT_FOUND",
    );
    for (token, arn) in [
        ("billing-secret", &billing_arn),
        ("auditor-secret", &billing_arn),
        ("auditor-secret", &search_arn),
    ] {
        let execution = get_execution(&mut client, arn, token).await.unwrap();
        assert_eq!(&execution.pipeline_execution_arn, arn);
        let mut stream = watch(&mut client, arn, token).await.unwrap();
        let first = stream.message().await.unwrap().unwrap();
        assert_eq!(first.sequence, 1);
    }

    // GetStopRequest: billing reads its record; the auditor has no record under that token
    // (records are per principal); a principal with no read rights is denied before the
    // lookup.
    let record = get_stop_request(&mut client, "allowed", "billing-secret")
        .await
        .unwrap();
    assert_eq!(record.principal, "billing");
    assert_refused(
        get_stop_request(&mut client, "allowed", "auditor-secret").await,
        Code::NotFound,
        "STOP_REQUEST_NOT_FOUND",
    );
    // A principal that may stop an execution but not read it cannot read its own record of
    // the stop; one that may read nothing is refused whether or not the record exists.
    for (token, stopped) in [("operator-secret", "op-1"), ("stopper-secret", "st-1")] {
        client
            .stop_execution(with_token(stop_request(&billing_arn, stopped), token))
            .await
            .unwrap();
        for lookup in [stopped, "never-used"] {
            let outcome = get_stop_request(&mut client, lookup, token).await;
            match (token, lookup) {
                ("operator-secret", "never-used") => {
                    assert_refused(outcome, Code::NotFound, "STOP_REQUEST_NOT_FOUND")
                }
                _ => assert_refused(outcome, Code::PermissionDenied, "PERMISSION_DENIED"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// TLS and mutual TLS (Postgres)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_callers_that_trust_the_server_certificate() {
    let (server, ca, _files) = tls_server(false, None).await;
    let arn = server.execution("tls").await;

    let channel = server
        .tls(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem())))
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await;
    assert!(health.is_ok(), "{health:?}");
    let answer = PipelineControlClient::new(channel)
        .stop_execution(stop_request(&arn, "over-tls"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(
        count_where(&server.db, "stop_requests", "principal = 'anonymous'").await,
        1,
        "TLS alone does not identify callers"
    );

    // A client that trusts another CA does not connect; nor does plaintext HTTP/2.
    let other = Authority::new("Other CA");
    let refused = server
        .tls(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(other.pem())))
        .await;
    assert!(
        refused.is_err(),
        "a server certificate from an untrusted CA"
    );
    let plaintext = server
        .plaintext()
        .stop_execution(stop_request(&arn, "plaintext"))
        .await;
    assert!(plaintext.is_err());
    assert_eq!(count_where(&server.db, "stop_requests", "true").await, 1);
}

/// A server with TLS, checking client certificates against its CA when `client_ca`, and
/// tokens too when given a token file: the server, its CA, and the test's files.
pub(crate) async fn tls_server(
    client_ca: bool,
    tokens: Option<&str>,
) -> (Secured, Authority, Files) {
    let ca = Authority::new("Test CA");
    let leaf = ca.server();
    let files = Files::new();
    let cert = files.write("server.pem", &leaf.cert);
    let key = files.write("server.key", &leaf.key);
    let client_ca = client_ca.then(|| files.write("client-ca.pem", &ca.pem()));
    let tokens = tokens.map(|text| files.write("tokens.toml", text));
    let server = Secured::start(Backend::Postgres, |args| {
        args.security.tls_cert = Some(cert);
        args.security.tls_key = Some(key);
        args.security.tls_client_ca = client_ca;
        args.security.auth_tokens_file = tokens;
    })
    .await;
    (server, ca, files)
}

fn client_tls(ca: &Authority, identity: Option<&Leaf>) -> ClientTlsConfig {
    let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca.pem()));
    match identity {
        Some(leaf) => config.identity(Identity::from_pem(&leaf.cert, &leaf.key)),
        None => config,
    }
}

/// The principal the server recorded for a stop made over `channel`.
async fn recorded_principal(server: &Secured, channel: Channel, arn: &str, token: &str) -> String {
    PipelineControlClient::new(channel)
        .stop_execution(stop_request(arn, token))
        .await
        .unwrap();
    let row: (String,) = match server.db.backend {
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&server.db.url).await.unwrap();
            sqlx::query_as("SELECT principal FROM stop_requests WHERE client_token = $1")
                .bind(token)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
        Backend::Sqlite => unreachable!("the TLS tests run on Postgres"),
    };
    row.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_names_the_caller_from_its_certificate() {
    let (server, ca, _files) = tls_server(true, None).await;
    let arn = server.execution("mtls").await;
    for (leaf, token, expected) in [
        (
            ca.client(
                "cn-ignored",
                vec![
                    dns("stopper.example.org"),
                    uri("spiffe://example.org/ns/prod/sa/stopper"),
                ],
            ),
            "by-uri",
            "spiffe://example.org/ns/prod/sa/stopper",
        ),
        (
            ca.client(
                "cn-ignored",
                vec![dns("first.example.org"), dns("second.example.org")],
            ),
            "by-dns",
            "first.example.org",
        ),
        (ca.client("reporting-job", vec![]), "by-cn", "reporting-job"),
    ] {
        let channel = server.tls(client_tls(&ca, Some(&leaf))).await.unwrap();
        assert_eq!(
            recorded_principal(&server, channel, &arn, token).await,
            expected
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_certificate_from_another_ca_and_no_certificate() {
    let (server, ca, _files) = tls_server(true, None).await;
    let arn = server.execution("mtls-refused").await;
    let other = Authority::new("Other CA");
    let stranger = other.client("stranger", vec![uri("spiffe://elsewhere/stranger")]);

    // The handshake fails (with TLS 1.3 the client learns it on its first call at the latest):
    // a transport error, never an answer from the service (not even UNAUTHENTICATED, which
    // would mean the certificate was optional).
    for identity in [Some(&stranger), None] {
        if let Ok(channel) = server.tls(client_tls(&ca, identity)).await {
            let status = PipelineControlClient::new(channel)
                .stop_execution(stop_request(&arn, "refused"))
                .await
                .expect_err("the call fails");
            assert!(
                status.get_details_error_info().is_none() && status.code() != Code::Unauthenticated,
                "the service answered: {status:?}"
            );
        }
    }
    assert_eq!(count_where(&server.db, "stop_requests", "true").await, 0);
    assert_eq!(server.admin.calls("StopPipelineExecution").await, 0);
}

/// A mounted ConfigMap changes without a signal: the kubelet writes the new files into a fresh
/// directory and swaps the `..data` symlink. The policy is reloaded within seconds; a new file
/// that does not load keeps the previous one. Both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_swap_reloads_the_policy_without_a_signal_and_a_bad_one_keeps_the_last() {
    let files = Files::new();
    let tokens = files.write("tokens.toml", &token_file(&[("alice", "a"), ("bob", "b")]));
    let alice_only = "[[allow]]\nprincipal = \"alice\"\nread = [\"*\"]\n";
    let policy = files.mounted("policy.toml", alice_only);
    let server = Secured::start(Backend::Sqlite, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        args.security.policy_file = Some(policy.clone());
    })
    .await;
    let arn = server.execution("mounted").await;
    let read = |token: &'static str| {
        let mut client = server.plaintext();
        let arn = arn.clone();
        async move {
            client
                .get_execution(with_token(
                    pb::GetExecutionRequest {
                        pipeline_execution_arn: arn,
                    },
                    token,
                ))
                .await
                .map(|_| ())
                .map_err(|status| status.code())
        }
    };
    assert_eq!(read("b").await, Err(Code::PermissionDenied));

    // Bob may read too, from the next version of the ConfigMap.
    files.mounted(
        "policy.toml",
        "[[allow]]\nprincipal = \"alice\"\nread = [\"*\"]\n[[allow]]\nprincipal = \"bob\"\nread = [\"*\"]\n",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read("b").await != Ok(()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the swap was never read"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A version that does not parse: the previous policy stays, and the refusal is counted.
    files.mounted("policy.toml", "[[allow]]\nprincipal = \n");
    let kept = |m: &crate::common::Metrics| {
        m.value(
            "pipeline_control_file_reloads_total",
            &[("file", "policy"), ("result", "kept_previous")],
        ) >= 1.0
    };
    crate::common::until_scraped(&server.app, Duration::from_secs(30), "never refused", kept).await;
    assert_eq!(read("b").await, Ok(()));
    assert_eq!(read("a").await, Ok(()));
    let page = server.app.scrape().await;
    assert!(
        page.value(
            "pipeline_control_file_reloads_total",
            &[("file", "policy"), ("result", "ok")],
        ) >= 1.0
    );
}

/// Kubelet's gRPC probes carry no client certificate: with `--health-listen`, health answers
/// them in plaintext on its own port while the main port requires mutual TLS, and turns
/// NOT_SERVING as soon as a shutdown starts. Only health is served there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_port_answers_probes_without_a_certificate_while_the_main_port_requires_one() {
    let ca = Authority::new("Test CA");
    let leaf = ca.server();
    let files = Files::new();
    let cert = files.write("server.pem", &leaf.cert);
    let key = files.write("server.key", &leaf.key);
    let client_ca = files.write("client-ca.pem", &ca.pem());
    let mut server = Secured::start(Backend::Postgres, |args| {
        args.security.tls_cert = Some(cert);
        args.security.tls_key = Some(key);
        args.security.tls_client_ca = Some(client_ca);
        args.health_listen = Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
    })
    .await;
    let health = server.app.health.expect("the health port is bound");
    assert_ne!(health, server.app.addr);
    let probe = Endpoint::from_shared(format!("http://{health}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let check = |service: &str| {
        let mut client = HealthClient::new(probe.clone());
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        async move { client.check(request).await.map(|r| r.into_inner().status()) }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(check("").await.unwrap(), ServingStatus::Serving);
    assert_eq!(
        check("pipelinecontrol.v1.PipelineControl").await.unwrap(),
        ServingStatus::Serving
    );
    // The main port still refuses a caller without a certificate.
    if let Ok(channel) = server.tls(client_tls(&ca, None)).await {
        let refused = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await;
        assert!(refused.is_err(), "{refused:?}");
    }
    // Nothing but health on the health port.
    let other = PipelineControlClient::new(probe.clone())
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::Unimplemented, "{other:?}");

    // A stop in flight on the main port (SageMaker answers in three seconds) keeps the server
    // draining for a while after the shutdown starts.
    let arn = server.execution("draining").await;
    server
        .admin
        .set_fault("StopPipelineExecution", json!({"latencyMs": 3000}))
        .await;
    let caller = ca.client("caller", vec![uri("spiffe://example.org/caller")]);
    let channel = server.tls(client_tls(&ca, Some(&caller))).await.unwrap();
    let in_flight = tokio::spawn(async move {
        PipelineControlClient::new(channel)
            .stop_execution(stop_request(&arn, "draining"))
            .await
    });
    let started = |m: &crate::common::Metrics| {
        m.value(
            "grpc_server_started_total",
            &[
                ("grpc_method", "StopExecution"),
                ("grpc_service", "pipelinecontrol.v1.PipelineControl"),
                ("grpc_type", "unary"),
            ],
        ) >= 1.0
    };
    crate::common::until_scraped(
        &server.app,
        Duration::from_secs(30),
        "the stop never began",
        started,
    )
    .await;

    // A watch on the health port sees NOT_SERVING while the server drains, and does not hold
    // the shutdown up.
    let mut watch = HealthClient::new(probe.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().expect("a first status");
    assert_eq!(first.status(), ServingStatus::Serving);
    server.app.begin_shutdown();
    let next = tokio::time::timeout(Duration::from_secs(20), watch.message())
        .await
        .expect("a status change in time")
        .unwrap()
        .expect("a status change");
    assert_eq!(next.status(), ServingStatus::NotServing);
    let Secured { app, .. } = server;
    app.shutdown().await.unwrap();
    // The stop in flight finished during the drain.
    assert!(in_flight.await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_and_mutual_tls_a_token_wins_and_a_certificate_is_optional() {
    let (server, ca, _files) =
        tls_server(true, Some(&token_file(&[("token-caller", "t0ken")]))).await;
    let arn = server.execution("both").await;
    let leaf = ca.client("cert-caller", vec![]);

    // A certificate alone.
    let with_cert = server.tls(client_tls(&ca, Some(&leaf))).await.unwrap();
    assert_eq!(
        recorded_principal(&server, with_cert.clone(), &arn, "cert-only").await,
        "cert-caller"
    );
    // A token alone (no client certificate at the handshake).
    let without_cert = server.tls(client_tls(&ca, None)).await.unwrap();
    PipelineControlClient::new(without_cert.clone())
        .stop_execution(with_token(stop_request(&arn, "token-only"), "t0ken"))
        .await
        .unwrap();
    // Both: the token wins.
    PipelineControlClient::new(with_cert.clone())
        .stop_execution(with_token(stop_request(&arn, "both"), "t0ken"))
        .await
        .unwrap();
    for token in ["token-only", "both"] {
        assert_eq!(
            count_where(
                &server.db,
                "stop_requests",
                &format!("client_token = '{token}' AND principal = 'token-caller'"),
            )
            .await,
            1,
            "{token}"
        );
    }
    // Neither, or a bad token even with a good certificate: UNAUTHENTICATED.
    assert_refused(
        PipelineControlClient::new(without_cert)
            .stop_execution(stop_request(&arn, "neither"))
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_refused(
        PipelineControlClient::new(with_cert)
            .stop_execution(with_token(stop_request(&arn, "bad-token"), "wrong"))
            .await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
}

/// One principal, proven two ways: a static token and a client certificate naming the same
/// SPIFFE ID. The key is (principal, token), so the certificate replays what the token asked,
/// without a second stop; the record keeps the method that made it, and each audit row the
/// method of its own call. GetStopRequest and ListStopRequests say how the record was proven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_proven_another_way_replays_its_request_and_the_audit_says_how() {
    let billing = "spiffe://example.org/billing";
    let (server, ca, _files) = tls_server(true, Some(&token_file(&[(billing, "t0ken")]))).await;
    let arn = server.execution("proven-twice").await;
    let leaf = ca.client("billing", vec![uri(billing)]);
    let by_token = PipelineControlClient::new(server.tls(client_tls(&ca, None)).await.unwrap());
    let by_cert =
        PipelineControlClient::new(server.tls(client_tls(&ca, Some(&leaf))).await.unwrap());

    let first = by_token
        .clone()
        .stop_execution(with_token(stop_request(&arn, "incident-9"), "t0ken"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replayed);
    let again = by_cert
        .clone()
        .stop_execution(stop_request(&arn, "incident-9"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        again.replayed,
        "the same principal's key, whatever proved it"
    );
    assert_eq!(
        (again.outcome(), again.first_requested_at),
        (first.outcome(), first.first_requested_at)
    );
    assert_eq!(server.admin.calls("StopPipelineExecution").await, 1);
    assert_eq!(
        count_where(
            &server.db,
            "stop_requests",
            &format!("principal = '{billing}' AND auth_method = 'token'"),
        )
        .await,
        1
    );
    for (event, method) in [("received", "token"), ("completed", "token")] {
        assert_eq!(
            count_where(
                &server.db,
                "stop_audit",
                &format!("event = '{event}' AND auth_method = '{method}'"),
            )
            .await,
            1,
            "{event}"
        );
    }
    until_rows(
        &server.db,
        "stop_audit",
        &format!("principal = '{billing}' AND event = 'replayed' AND auth_method = 'mtls'"),
        1,
    )
    .await;

    // Read back by the certificate: the record says the token made it.
    let record = by_cert
        .clone()
        .get_stop_request(pb::GetStopRequestRequest {
            client_request_token: "incident-9".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (record.principal.as_str(), record.auth_method.as_str()),
        (billing, "token")
    );
    // A request of its own by the certificate is recorded as such.
    let other = server.execution("proven-by-certificate").await;
    by_cert
        .clone()
        .stop_execution(stop_request(&other, "incident-10"))
        .await
        .unwrap();
    let listed = by_token
        .clone()
        .list_stop_requests(with_token(pb::ListStopRequestsRequest::default(), "t0ken"))
        .await
        .unwrap()
        .into_inner()
        .stop_requests;
    let methods: Vec<(&str, &str)> = listed
        .iter()
        .map(|r| (r.client_request_token.as_str(), r.auth_method.as_str()))
        .collect();
    assert_eq!(methods, [("incident-10", "mtls"), ("incident-9", "token")]);
}

// ---------------------------------------------------------------------------------------------
// Limits (Postgres)

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stop_rate_limit_is_per_principal_and_says_when_to_retry() {
    let files = Files::new();
    let tokens = files.write(
        "tokens.toml",
        &token_file(&[("hasty", "hasty-secret"), ("patient", "patient-secret")]),
    );
    let server = Secured::start(Backend::Postgres, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        args.limits.stop_rate_limit = 0.5;
        args.limits.stop_rate_burst = 3;
    })
    .await;
    let mut client = server.plaintext();
    for i in 0..3 {
        // Refused for another reason (no such execution), but counted.
        assert_refused(
            client
                .stop_execution(with_token(
                    stop_request(UNKNOWN_ARN, &format!("h{i}")),
                    "hasty-secret",
                ))
                .await,
            Code::NotFound,
            "EXECUTION_NOT_FOUND",
        );
    }
    let calls = server.upstream_calls().await;
    let limited = client
        .stop_execution(with_token(stop_request(UNKNOWN_ARN, "h3"), "hasty-secret"))
        .await
        .unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&limited), "LIMIT_EXCEEDED");
    let delay = limited
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .expect("a RetryInfo");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(2),
        "one call comes back every 2 s: {delay:?}"
    );
    assert_eq!(
        server.upstream_calls().await,
        calls,
        "a limited call does no work"
    );
    assert_eq!(
        count_where(&server.db, "stop_requests", "client_token = 'h3'").await,
        0
    );

    // Another principal has its own budget, and reads are not limited.
    assert_refused(
        client
            .stop_execution(with_token(
                stop_request(UNKNOWN_ARN, "p0"),
                "patient-secret",
            ))
            .await,
        Code::NotFound,
        "EXECUTION_NOT_FOUND",
    );
    for _ in 0..5 {
        assert_refused(
            get_stop_request(&mut client, "none", "hasty-secret").await,
            Code::NotFound,
            "STOP_REQUEST_NOT_FOUND",
        );
    }
    // After the advised delay the caller may go on.
    tokio::time::sleep(delay).await;
    assert_refused(
        client
            .stop_execution(with_token(stop_request(UNKNOWN_ARN, "h4"), "hasty-secret"))
            .await,
        Code::NotFound,
        "EXECUTION_NOT_FOUND",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_message_is_refused_before_it_is_decoded() {
    let server = Secured::start(Backend::Postgres, |args| {
        args.limits.max_message_size = 4096;
    })
    .await;
    let arn = server.execution("oversize").await;
    let mut client = server.plaintext();
    let mut request = stop_request(&arn, "big");
    request.reason = "x".repeat(5000);
    let status = client.stop_execution(request).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason_of(&status), "LIMIT_EXCEEDED");
    assert_eq!(
        status.get_details_error_info().unwrap().metadata["limit_bytes"],
        "4096"
    );
    // Within the size limit but over the reason's own: INVALID_ARGUMENT, as before.
    let mut request = stop_request(&arn, "long-reason");
    request.reason = "x".repeat(1025);
    assert_refused(
        client.stop_execution(request).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert_eq!(server.admin.calls("StopPipelineExecution").await, 0);
    assert_eq!(count_where(&server.db, "stop_requests", "true").await, 0);
    // The connection and the service carry on.
    assert!(
        client
            .stop_execution(stop_request(&arn, "small"))
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_over_the_request_timeout_answers_deadline_exceeded() {
    let server = Secured::start(Backend::Postgres, |args| {
        args.limits.request_timeout = Duration::from_millis(300);
        args.upstream_attempts = 1;
    })
    .await;
    let arn = server.execution("slow").await;
    server
        .admin
        .set_fault("DescribePipelineExecution", json!({"latencyMs": 2000}))
        .await;
    let started = std::time::Instant::now();
    assert_refused(
        server
            .plaintext()
            .get_execution(pb::GetExecutionRequest {
                pipeline_execution_arn: arn.clone(),
            })
            .await,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
    );
    assert!(
        started.elapsed() < Duration::from_millis(1900),
        "{:?}",
        started.elapsed()
    );
    server.admin.clear_faults().await;
    assert!(
        server
            .plaintext()
            .get_execution(pb::GetExecutionRequest {
                pipeline_execution_arn: arn,
            })
            .await
            .is_ok()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_concurrency_limit_are_refused_and_health_stays_open() {
    let server = Secured::start(Backend::Postgres, |args| {
        args.limits.max_concurrent_requests = 2;
    })
    .await;
    let arn = server.execution("busy").await;
    server
        .admin
        .set_fault("DescribePipelineExecution", json!({"latencyMs": 1500}))
        .await;
    let get = |client: PipelineControlClient<Channel>| {
        let arn = arn.clone();
        async move {
            let mut client = client;
            client
                .get_execution(pb::GetExecutionRequest {
                    pipeline_execution_arn: arn,
                })
                .await
        }
    };
    let slow: Vec<_> = (0..2)
        .map(|_| tokio::spawn(get(server.plaintext())))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = get(server.plaintext()).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&status), "LIMIT_EXCEEDED");
    assert!(status.get_details_retry_info().is_some());
    let health = HealthClient::new(
        Endpoint::from_shared(server.app.url())
            .unwrap()
            .connect_lazy(),
    )
    .check(HealthCheckRequest::default())
    .await;
    assert!(health.is_ok(), "health is not behind the limit: {health:?}");
    for call in slow {
        assert!(call.await.unwrap().is_ok());
    }
    server.admin.clear_faults().await;
    assert!(get(server.plaintext()).await.is_ok(), "permits come back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_ends_the_watch_streams_of_callers_it_revokes() {
    let files = Files::new();
    let tokens = files.write(
        "tokens.toml",
        &token_file(&[
            ("alice", "a-secret"),
            ("bob", "b-secret"),
            ("carol", "c-secret"),
        ]),
    );
    let everyone = "[[allow]]\nprincipal = \"alice\"\nread = [\"*\"]\n\
        [[allow]]\nprincipal = \"bob\"\nread = [\"*\"]\n\
        [[allow]]\nprincipal = \"carol\"\nread = [\"*\"]\n";
    let policy = files.write("policy.toml", everyone);
    let server = Secured::start(Backend::Postgres, |args| {
        args.security.auth_tokens_file = Some(tokens.clone());
        args.security.policy_file = Some(policy.clone());
    })
    .await;
    let arn = server.execution("revoked").await;
    let mut client = server.plaintext();
    let mut streams = Vec::new();
    for token in ["a-secret", "b-secret", "c-secret"] {
        let mut stream = watch(&mut client, &arn, token).await.unwrap();
        assert!(stream.message().await.unwrap().is_some());
        streams.push(stream);
    }

    // Bob's token is withdrawn, carol loses her read rights; alice keeps hers.
    std::fs::write(
        &tokens,
        token_file(&[("alice", "a-secret"), ("carol", "c-secret")]),
    )
    .unwrap();
    std::fs::write(
        &policy,
        "[[allow]]\nprincipal = \"alice\"\nread = [\"*\"]\n[[allow]]\nprincipal = \"carol\"\nread = [\"arn:aws:sagemaker:*:*:pipeline/other/*\"]\n",
    )
    .unwrap();
    // SIGHUP to this process: every server in it reloads its own files.
    let sent = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());

    let mut carol = streams.pop().unwrap();
    let mut bob = streams.pop().unwrap();
    let mut alice = streams.pop().unwrap();
    for (stream, code, reason) in [
        (&mut bob, Code::Unauthenticated, "UNAUTHENTICATED"),
        (&mut carol, Code::PermissionDenied, "PERMISSION_DENIED"),
    ] {
        let ended = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends soon after the reload");
        assert_refused(ended, code, reason);
    }
    let quiet = tokio::time::timeout(Duration::from_millis(500), alice.message()).await;
    assert!(quiet.is_err(), "alice's stream goes on: {quiet:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_keepalive_pings_idle_connections_and_closes_dead_ones() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let server = Secured::start(Backend::Postgres, |args| {
        args.limits.http2_keepalive_interval = Duration::from_millis(200);
        args.limits.http2_keepalive_timeout = Duration::from_millis(300);
    })
    .await;
    // A client that opens an HTTP/2 connection, acknowledges the settings, and then never
    // answers anything: a dead peer.
    let mut socket = tokio::net::TcpStream::connect(server.app.addr)
        .await
        .unwrap();
    socket
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    socket
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap(); // SETTINGS
    socket
        .write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])
        .await
        .unwrap(); // SETTINGS ACK

    let mut pings = 0;
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut header = [0u8; 9];
            if socket.read_exact(&mut header).await.is_err() {
                return; // closed
            }
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; length];
            if socket.read_exact(&mut payload).await.is_err() {
                return;
            }
            // PING (type 6) that is not an acknowledgement.
            if header[3] == 6 && header[4] & 1 == 0 {
                pings += 1;
            }
        }
    })
    .await;
    assert!(pings >= 1, "the server pinged the idle connection");
    assert!(
        closed.is_ok(),
        "the server closed the connection its PING went unanswered on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_whose_caller_timed_out_still_completes_and_is_recorded_once() {
    let server = Secured::start(Backend::Postgres, |args| {
        args.limits.request_timeout = Duration::from_millis(300);
        // The completer must not be what finishes it.
        args.completer_interval = Duration::from_secs(3600);
    })
    .await;
    let arn = server.execution("slow-stop").await;
    server
        .admin
        .set_fault("StopPipelineExecution", json!({"latencyMs": 1500}))
        .await;
    let mut client = server.plaintext();
    assert_refused(
        client.stop_execution(stop_request(&arn, "impatient")).await,
        Code::DeadlineExceeded,
        "DEADLINE_EXCEEDED",
    );
    // The stop goes on without its caller and records its outcome.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count_where(
        &server.db,
        "stop_requests",
        "client_token = 'impatient' AND state = 'completed' AND outcome = 'STOP_REQUESTED'",
    )
    .await
        == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the stop was left unfinished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.admin.clear_faults().await;
    let retry = client
        .stop_execution(stop_request(&arn, "impatient"))
        .await
        .unwrap()
        .into_inner();
    assert!(retry.replayed);
    assert_eq!(retry.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(server.admin.calls("StopPipelineExecution").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_comes_is_dropped() {
    use tokio::io::AsyncReadExt as _;
    let (server, _ca, _files) = tls_server(false, None).await;
    // Connect and say nothing: the server closes the connection after its handshake timeout.
    let mut socket = tokio::net::TcpStream::connect(server.app.addr)
        .await
        .unwrap();
    let mut buffer = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(20), socket.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the silent connection was kept: {closed:?}"
    );
}
