//! AWS IAM callers (`[iam]` of the identity file) against a real server, database and
//! emulator, whose STS checks SigV4 signatures of the keys it knows (`--access-key`, and those
//! its AssumeRole issues). Each test signs GetCallerIdentity itself with the SDK's own signer
//! (aws-sigv4) and credentials it holds, as a caller in any language would, and counts the
//! GetCallerIdentity calls the emulator received to tell what reached STS. The command line's
//! `--aws-iam-auth` signs with the AWS default chain, here the environment's keys.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{
    borrow::Cow,
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use aws_credential_types::Credentials;
use aws_sigv4::{
    http_request::{SignableBody, SignableRequest, SigningSettings, sign},
    sign::v4,
};
use base64::Engine as _;
use pipeline_control::{config::ServeArgs, pb};
use sagemaker_emulator::{AccessKey, EmulatorOptions};
use serde_json::{Value, json};
use tonic::{Code, Request};
use tonic_types::StatusExt as _;

use crate::{
    auth::{Files, Secured, assert_refused, stop_request},
    cli::{assert_clean_failure, command, run_bounded},
    common::{Admin, Backend, count_where, session_keys, sts_client},
};

/// An IAM user's key of the account `[iam] accounts` admits.
const USER_KEY: (&str, &str) = ("AKIDIAMUSER", "user-secret");
/// A key of another account.
const OUTSIDER_KEY: (&str, &str) = ("AKIDOUTSIDER", "outsider-secret");
const ACCOUNT: &str = "111111111111";
const OTHER_ACCOUNT: &str = "222222222222";
const SERVER_ID: &str = "pipeline-control.test";
const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The emulator's keys: the user's and the outsider's, each in its account.
fn emulator_options() -> EmulatorOptions {
    let key = |(id, secret): (&str, &str), account: &str| AccessKey {
        account_id: Some(account.into()),
        ..AccessKey::new(id, secret)
    };
    EmulatorOptions {
        access_keys: vec![key(USER_KEY, ACCOUNT), key(OUTSIDER_KEY, OTHER_ACCOUNT)],
        ..EmulatorOptions::default()
    }
}

/// A server whose identity file is `identity`, its STS the emulator (unless `tweak` says
/// otherwise), on SQLite.
async fn server(identity: &str, files: &Files, tweak: impl FnOnce(&mut ServeArgs)) -> Secured {
    let identity = files.write("identity.toml", identity);
    Secured::start_with(Backend::Sqlite, &emulator_options(), |args| {
        args.security.identity_file = Some(identity);
        tweak(args);
    })
    .await
}

fn iam_section(extra: &str) -> String {
    format!("[iam]\nserver_id = \"{SERVER_ID}\"\n{extra}\n")
}

fn static_key((id, secret): (&str, &str)) -> Credentials {
    Credentials::new(id, secret, None, None, "test")
}

/// Temporary credentials of `role_arn`, assumed with the user's key.
async fn assumed(endpoint: &str, role_arn: &str, session: &str) -> Credentials {
    let answer = sts_client(endpoint, "us-east-1", static_key(USER_KEY))
        .assume_role()
        .role_arn(role_arn)
        .role_session_name(session)
        .send()
        .await
        .unwrap();
    session_keys(answer.credentials().unwrap())
}

/// A GetCallerIdentity request to sign: what a caller may change before signing.
struct Proof {
    credentials: Credentials,
    url: String,
    server_id: String,
    /// Whether the server id header is among the signed ones.
    sign_server_id: bool,
    at: SystemTime,
    body: String,
}

impl Proof {
    fn new(credentials: Credentials, url: &str) -> Self {
        Self {
            credentials,
            url: url.into(),
            server_id: SERVER_ID.into(),
            sign_server_id: true,
            at: SystemTime::now(),
            body: BODY.into(),
        }
    }

    /// The signed request, as JSON.
    fn json(&self) -> Value {
        let headers = [
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
            ("x-pipeline-control-server-id", self.server_id.as_str()),
        ];
        let mut settings = SigningSettings::default();
        if !self.sign_server_id {
            settings.excluded_headers = Some(vec![Cow::Borrowed("x-pipeline-control-server-id")]);
        }
        let identity = self.credentials.clone().into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region("us-east-1")
            .name("sts")
            .time(self.at)
            .settings(settings)
            .build()
            .unwrap()
            .into();
        let signable = SignableRequest::new(
            "POST",
            &self.url,
            headers.into_iter(),
            SignableBody::Bytes(self.body.as_bytes()),
        )
        .unwrap();
        let (instructions, _) = sign(signable, &params).unwrap().into_parts();
        let mut all: BTreeMap<&str, &str> = headers.into_iter().collect();
        all.extend(instructions.headers());
        json!({"method": "POST", "url": self.url, "headers": all, "body": self.body})
    }

    /// The metadata value: base64 of the JSON.
    fn metadata(&self) -> String {
        encode(&self.json())
    }
}

fn encode(json: &Value) -> String {
    base64::engine::general_purpose::STANDARD.encode(json.to_string())
}

fn with_proof<T>(message: T, proof: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("x-pipeline-control-iam", proof.parse().unwrap());
    request
}

/// GetStopRequest of an unused token with `proof`: an authenticated caller that may read gets
/// STOP_REQUEST_NOT_FOUND, without touching SageMaker.
async fn probe(server: &Secured, proof: &str) -> Result<pb::StopRequest, tonic::Status> {
    let request = pb::GetStopRequestRequest {
        client_request_token: "never-used".into(),
    };
    server
        .plaintext()
        .get_stop_request(with_proof(request, proof))
        .await
        .map(tonic::Response::into_inner)
}

/// GetCallerIdentity calls the emulator's STS received, refused ones included.
async fn sts_calls(admin: &Admin) -> u64 {
    let stats = admin.stats_by_account().await;
    let mut calls = 0;
    for regions in stats.as_object().unwrap().values() {
        for operations in regions.as_object().unwrap().values() {
            calls += operations["GetCallerIdentity"].as_u64().unwrap_or(0);
        }
    }
    calls
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_is_named_by_its_role_arn_a_user_by_its_own_and_the_policy_decides() {
    let files = Files::new();
    let policy = files.write(
        "policy.toml",
        &format!(
            r#"
            [[allow]]
            principal = "arn:aws:iam::{ACCOUNT}:role/reporter"
            stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/iam-billing*"]
            read = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/iam-billing*"]

            [[allow]]
            principal = "arn:aws:iam::{ACCOUNT}:user/emulator"
            read = ["*"]
            "#
        ),
    );
    let server = server(&iam_section(""), &files, |args| {
        args.security.policy_file = Some(policy);
    })
    .await;
    let endpoint = server.emulator.endpoint_url.clone();
    let billing = server.execution("iam-billing-daily").await;
    let search = server.execution("iam-search-daily").await;
    let role = assumed(
        &endpoint,
        &format!("arn:aws:iam::{ACCOUNT}:role/reporter"),
        "build-42",
    )
    .await;
    let role_proof = Proof::new(role, &format!("{endpoint}/")).metadata();
    let mut client = server.plaintext();

    let stopped = client
        .stop_execution(with_proof(stop_request(&billing, "role-stop"), &role_proof))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(
        count_where(
            &server.db,
            "stop_requests",
            &format!(
                "client_token = 'role-stop' AND principal = 'arn:aws:iam::{ACCOUNT}:role/reporter'"
            ),
        )
        .await,
        1
    );
    // The audit row names the role's session: which holder of the role it was.
    assert_eq!(
        count_where(
            &server.db,
            "stop_audit",
            "client_token = 'role-stop' AND event = 'received' AND auth_method = 'iam' \
             AND auth_session = 'build-42'",
        )
        .await,
        1
    );
    let denied = client
        .stop_execution(with_proof(
            stop_request(&search, "role-denied"),
            &role_proof,
        ))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.get_details_error_info().unwrap().metadata["principal"],
        format!("arn:aws:iam::{ACCOUNT}:role/reporter")
    );

    // A user is named as STS names it: it may read, not stop.
    let user_proof = Proof::new(static_key(USER_KEY), &endpoint).metadata();
    assert_refused(
        probe(&server, &user_proof).await,
        Code::NotFound,
        "STOP_REQUEST_NOT_FOUND",
    );
    let denied = client
        .stop_execution(with_proof(stop_request(&billing, "user-stop"), &user_proof))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        denied.get_details_error_info().unwrap().metadata["principal"],
        format!("arn:aws:iam::{ACCOUNT}:user/emulator")
    );
    // Without a proof: [iam] makes credentials required.
    assert_refused(
        client.stop_execution(stop_request(&billing, "none")).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    let metrics = server.app.scrape().await;
    let authentications = |method: &str, result: &str| {
        metrics.value(
            "pipeline_control_authentications_total",
            &[("method", method), ("result", result)],
        )
    };
    assert_eq!(authentications("iam", "ok"), 4.0);
    assert_eq!(authentications("iam", "refused"), 0.0);
    assert_eq!(authentications("anonymous", "refused"), 1.0);
    // Two signed requests, each sent to STS once.
    assert_eq!(sts_calls(&server.admin).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_that_prove_nothing_are_unauthenticated_and_only_sts_checks_signatures() {
    let files = Files::new();
    let server = server(
        &iam_section(&format!("accounts = [\"{ACCOUNT}\"]")),
        &files,
        |_| {},
    )
    .await;
    let endpoint = server.emulator.endpoint_url.clone();
    let user = || Proof::new(static_key(USER_KEY), &endpoint);

    // What works, so that each refusal below is the one change it makes.
    assert_refused(
        probe(&server, &user().metadata()).await,
        Code::NotFound,
        "STOP_REQUEST_NOT_FOUND",
    );
    assert_eq!(sts_calls(&server.admin).await, 1);

    // Refused before STS is asked.
    let mut other_server = user();
    other_server.server_id = "pipeline-control.other".into();
    let mut unsigned_server_id = user();
    unsigned_server_id.sign_server_id = false;
    let mut old = user();
    old.at = SystemTime::now() - Duration::from_secs(6 * 60);
    let mut ahead = user();
    ahead.at = SystemTime::now() + Duration::from_secs(6 * 60);
    let mut other_body = user();
    other_body.body = format!("{BODY}&RoleArn=x");
    let mut get = user().json();
    get["method"] = json!("GET");
    let mut extra_header = user().json();
    extra_header["headers"]["X-Amz-Date"] = json!("20261201T000000Z");
    for (what, proof, reason) in [
        (
            "another server's id",
            other_server.metadata(),
            "CREDENTIALS_INVALID",
        ),
        (
            "the server id not signed",
            unsigned_server_id.metadata(),
            "CREDENTIALS_INVALID",
        ),
        (
            "signed 6 minutes ago",
            old.metadata(),
            "CREDENTIALS_EXPIRED",
        ),
        (
            "dated 6 minutes ahead",
            ahead.metadata(),
            "CREDENTIALS_EXPIRED",
        ),
        (
            "a body other than GetCallerIdentity's",
            other_body.metadata(),
            "CREDENTIALS_INVALID",
        ),
        ("GET", encode(&get), "CREDENTIALS_INVALID"),
        (
            "a header given twice",
            encode(&extra_header),
            "CREDENTIALS_INVALID",
        ),
        ("not base64", "%%%".to_string(), "CREDENTIALS_INVALID"),
        (
            "not a signed request",
            encode(&json!({"url": endpoint})),
            "CREDENTIALS_INVALID",
        ),
    ] {
        let status = probe(&server, &proof).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(
            crate::auth::reason_of(&status),
            reason,
            "{what}: {status:?}"
        );
        assert!(
            !status.message().contains("server id") && !status.message().contains("body"),
            "the caller learns only the kind: {status:?}"
        );
    }
    assert_eq!(
        sts_calls(&server.admin).await,
        1,
        "none of these reached STS"
    );

    // Refused by STS: a known key with a wrong secret.
    let forged = Proof::new(static_key((USER_KEY.0, "not-the-secret")), &endpoint);
    assert_refused(
        probe(&server, &forged.metadata()).await,
        Code::Unauthenticated,
        "CREDENTIALS_INVALID",
    );
    assert_eq!(sts_calls(&server.admin).await, 2);
    // A true caller of an account `accounts` does not list.
    let outsider = Proof::new(static_key(OUTSIDER_KEY), &endpoint);
    assert_refused(
        probe(&server, &outsider.metadata()).await,
        Code::Unauthenticated,
        "CREDENTIALS_INVALID",
    );
    assert_eq!(sts_calls(&server.admin).await, 3);

    let metrics = server.app.scrape().await;
    assert_eq!(
        metrics.value(
            "pipeline_control_authentications_total",
            &[("method", "iam"), ("result", "refused")],
        ),
        11.0
    );
    assert_eq!(
        metrics.value(
            "pipeline_control_auth_refusals_total",
            &[("reason", "credentials_expired")],
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_that_is_not_a_trusted_sts_is_refused_without_being_contacted() {
    let files = Files::new();
    let server = server(&iam_section(""), &files, |_| {}).await;
    // A host of the caller's choosing, on loopback like the trusted emulator: it counts the
    // connections it is offered.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counting = tokio::spawn({
        let connections = connections.clone();
        async move {
            while listener.accept().await.is_ok() {
                connections.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://127.0.0.1:{port}/?Action=GetCallerIdentity"),
    ] {
        let proof = Proof::new(static_key(USER_KEY), &url);
        assert_refused(
            probe(&server, &proof.metadata()).await,
            Code::Unauthenticated,
            "CREDENTIALS_INVALID",
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(connections.load(Ordering::SeqCst), 0, "never contacted");
    assert_eq!(sts_calls(&server.admin).await, 0);
    counting.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proven_identity_is_kept_for_its_signed_request_and_a_new_signature_is_proven_again() {
    let files = Files::new();
    let server = server(&iam_section(""), &files, |_| {}).await;
    let endpoint = server.emulator.endpoint_url.clone();
    let proof = Proof::new(static_key(USER_KEY), &endpoint).metadata();
    for _ in 0..20 {
        assert_refused(
            probe(&server, &proof).await,
            Code::NotFound,
            "STOP_REQUEST_NOT_FOUND",
        );
    }
    assert_eq!(
        sts_calls(&server.admin).await,
        1,
        "one STS call for 20 calls"
    );
    // Signed again a second later: another request, proven by STS once more.
    let mut later = Proof::new(static_key(USER_KEY), &endpoint);
    later.at += Duration::from_secs(1);
    assert_refused(
        probe(&server, &later.metadata()).await,
        Code::NotFound,
        "STOP_REQUEST_NOT_FOUND",
    );
    assert_eq!(sts_calls(&server.admin).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sts_that_cannot_be_reached_is_unavailable_with_retry_info() {
    // A port nobody listens on, as the service's configured STS.
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let files = Files::new();
    let server = server(&iam_section(""), &files, |args| {
        args.sagemaker.sts_endpoint = Some(dead.clone());
    })
    .await;
    let proof = Proof::new(static_key(USER_KEY), &format!("{dead}/"));
    let status = probe(&server, &proof.metadata()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        crate::auth::reason_of(&status),
        "IDENTITY_PROVIDER_UNAVAILABLE"
    );
    assert!(
        status
            .get_details_retry_info()
            .and_then(|retry| retry.retry_delay)
            .is_some(),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_signs_with_the_default_chain_and_history_names_the_role() {
    let files = Files::new();
    let server = server(&iam_section(""), &files, |_| {}).await;
    let endpoint = server.emulator.endpoint_url.clone();
    let arn = server.execution("iam-cli").await;
    let role = assumed(
        &endpoint,
        &format!("arn:aws:iam::{ACCOUNT}:role/deployer"),
        "laptop",
    )
    .await;
    // The role's keys in the environment, as the default chain finds them.
    let client = |args: &[&str], server_id: &str| {
        let mut command = command();
        command
            .env("PIPELINE_CONTROL_SERVER", server.app.url())
            .env("AWS_ACCESS_KEY_ID", role.access_key_id())
            .env("AWS_SECRET_ACCESS_KEY", role.secret_access_key())
            .env("AWS_SESSION_TOKEN", role.session_token().unwrap())
            .env("AWS_ENDPOINT_URL_STS", &endpoint)
            .args(args)
            .args(["--aws-iam-auth", "--iam-server-id", server_id]);
        command
    };
    let output = run_bounded(&mut client(
        &["stop", &arn, "--client-token", "iam-cli"],
        SERVER_ID,
    ));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let output = run_bounded(&mut client(&["history"], SERVER_ID));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.lines().any(
            |line| line.contains(&format!("arn:aws:iam::{ACCOUNT}:role/deployer"))
                && line.contains("STOP_REQUESTED")
        ),
        "{text}"
    );
    // Signed for another server: refused, in one line.
    let output = run_bounded(&mut client(&["history"], "pipeline-control.other"));
    assert_clean_failure(&output, "pipeline-control: error: UNAUTHENTICATED");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CREDENTIALS_INVALID"), "{stderr}");
}
