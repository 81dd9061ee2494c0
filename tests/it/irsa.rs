//! The service as it runs on EKS with IRSA: no keys of its own, only `AWS_ROLE_ARN` and the
//! service-account token the kubelet projects into `AWS_WEB_IDENTITY_TOKEN_FILE`, which
//! aws-config's own web identity provider (in the default chain) trades for the role's
//! credentials at STS, the emulator's here. The real binary runs as a child process, because
//! that environment is the whole point and the tests of this process share one environment.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{path::Path, process::Child, time::Duration};

use aws_sdk_sts::error::ProvideErrorMetadata;
use pipeline_control::pb::{self, pipeline_control_client::PipelineControlClient};
use serde_json::json;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{
    cli::{command, send_signal, spawn_server_listening, wait_bounded_async},
    common::{
        Admin, Backend, TestDb, assume, create_pipeline, default_keys, epoch_now,
        sagemaker_client_in, service_account_token, session_keys, spawn_emulator_with,
        start_execution, sts_client,
    },
};

/// The cluster's OpenID Connect issuer, the one the emulator trusts.
const ISSUER: &str = "https://oidc.eks.us-east-1.amazonaws.com/id/EXAMPLE";
const SUBJECT: &str = "system:serviceaccount:ml:pipeline-control";
/// The service account's role, and so the service's own account.
const ACCOUNT: &str = "222222222222";
const ROLE: &str = "arn:aws:iam::222222222222:role/pipeline-control";
/// An account the accounts file reaches through a role, assumed with the IRSA credentials.
const OTHER: &str = "333333333333";
const OTHER_ROLE: &str = "arn:aws:iam::333333333333:role/pipeline-control";
/// The test's own web identity calls go to a role of an account of their own, so that the
/// emulator's counts of the service's account are the service's alone.
const PROBE_ROLE: &str = "arn:aws:iam::444444444444:role/probe";

/// Emulated seconds per real second: the hour that web identity credentials last by default
/// (aws-config asks for no other) is nine real seconds. aws-config renews credentials five to
/// ten seconds before they expire, so the service holds each for up to four.
const TIME_SCALE: f64 = 400.0;

/// The emulator's clock, as the test reads it: it started at `started` (real epoch seconds,
/// read just before the emulator was made, a few milliseconds early at most) and runs
/// `TIME_SCALE` times as fast as the real one.
struct EmulatedClock {
    started: f64,
}

impl EmulatedClock {
    fn now(&self) -> f64 {
        self.started + (epoch_now() - self.started) * TIME_SCALE
    }
}

/// The service's process, killed if the test fails before it is shut down.
struct Service(Option<Child>);

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `token` into `path` as the kubelet does: whole, by a rename, so that a reader never
/// sees half of it.
fn project(path: &Path, token: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, token).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// An execution in `account` (reached with `keys`) whose Callback step holds it `Executing`
/// until it is stopped, then `Stopping`.
async fn execution(
    endpoint: &str,
    keys: aws_sdk_sagemaker::config::Credentials,
    account: &str,
) -> String {
    let client = sagemaker_client_in(endpoint, "us-east-1", keys, 1);
    let pipeline = create_pipeline(
        &client,
        json!([{"Name": "Approve", "Type": "Callback", "SqsQueueUrl": "https://sqs/q"}]),
    )
    .await;
    let arn = start_execution(&client, &pipeline).await;
    assert!(arn.contains(&format!(":{account}:pipeline/")), "{arn}");
    arn
}

async fn stop(client: &PipelineControlClient<Channel>, arn: &str) {
    let answer = client
        .clone()
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("stop {arn}: {e:?}"))
        .into_inner();
    assert_eq!(answer.outcome(), pb::StopOutcome::StopRequested, "{arn}");
}

async fn status(client: &PipelineControlClient<Channel>, arn: &str) -> pb::ExecutionStatus {
    client
        .clone()
        .get_execution(pb::GetExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
        })
        .await
        .unwrap_or_else(|e| panic!("read {arn}: {e:?}"))
        .into_inner()
        .status()
}

/// Calls of `operation` the emulator counted for `account` in us-east-1.
fn calls(stats: &serde_json::Value, account: &str, operation: &str) -> u64 {
    stats[account]["us-east-1"][operation].as_u64().unwrap_or(0)
}

/// Polls `attempt` every 50 ms until it answers `ExpiredTokenException`, failing the test
/// after 30 s; it must succeed until then. The last success, and how long before the first
/// refusal was answered that successful attempt was sent.
async fn last_before_expiry<T, E>(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, aws_sdk_sts::error::SdkError<E>>,
) -> (Option<T>, Duration)
where
    E: ProvideErrorMetadata + std::fmt::Debug,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    let mut since = Instant::now();
    loop {
        let sent = Instant::now();
        match attempt().await {
            Ok(answer) => {
                last = Some(answer);
                since = sent;
            }
            Err(e) if e.code() == Some("ExpiredTokenException") => return (last, since.elapsed()),
            Err(e) => panic!("{what}: {e:?}"),
        }
        assert!(Instant::now() < deadline, "{what} never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_irsa_the_service_stops_and_reads_in_its_roles_account_across_token_rotation_and_expiry()
{
    let db = TestDb::new(Backend::Sqlite).await;
    let clock = EmulatedClock {
        started: epoch_now(),
    };
    let emulator = spawn_emulator_with(&sagemaker_emulator::EmulatorOptions {
        time_scale: TIME_SCALE,
        web_identity_issuers: vec![ISSUER.to_string()],
        ..Default::default()
    })
    .await;
    let endpoint = emulator.endpoint_url.clone();
    let admin = Admin::new(&endpoint);

    // Executions in the role's account and in the other one, made with keys of each.
    let own_keys = assume(&endpoint, ROLE).await;
    let own = [
        execution(&endpoint, own_keys.clone(), ACCOUNT).await,
        execution(&endpoint, own_keys, ACCOUNT).await,
    ];
    let other_keys = assume(&endpoint, OTHER_ROLE).await;
    let other = [
        execution(&endpoint, other_keys.clone(), OTHER).await,
        execution(&endpoint, other_keys, OTHER).await,
    ];

    let dir = tempfile::tempdir().unwrap();
    let accounts = dir.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        format!(
            "[[account]]\nid = \"{ACCOUNT}\"\n\n[[account]]\nid = \"{OTHER}\"\nrole_arn = \"{OTHER_ROLE}\"\n"
        ),
    )
    .unwrap();
    let token_file = dir.path().join("token");

    // The pod's environment: the role, the token file, STS at the emulator, and no keys.
    let mut pod = command();
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ] {
        pod.env_remove(var);
    }
    pod.env("AWS_ROLE_ARN", ROLE)
        .env("AWS_WEB_IDENTITY_TOKEN_FILE", &token_file)
        .env("AWS_ROLE_SESSION_NAME", "pipeline-control")
        .env("AWS_ENDPOINT_URL_STS", &endpoint)
        // No profile of this machine's may come first in the chain.
        .env("AWS_CONFIG_FILE", dir.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            dir.path().join("no-credentials"),
        );
    let accounts = accounts.display().to_string();
    let extra = [
        "--sagemaker-endpoint",
        endpoint.as_str(),
        "--accounts-file",
        accounts.as_str(),
    ];
    // From here on, the emulator counts the service's calls (and the probe's, in an account
    // of their own).
    admin.reset_stats().await;
    let (child, addr, _, logs) = spawn_server_listening(pod, &db, "127.0.0.1:0", &extra);
    let mut service = Service(Some(child));
    // It started without the token: credentials are fetched when a call first needs them.
    assert!(!token_file.exists());
    let client = PipelineControlClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );

    // The first token, written only now (so that its short life counts from here, not from the
    // start), expires in four real seconds; the next one replaces it after the first stop.
    let first = service_account_token(ISSUER, SUBJECT, clock.now() + 4.0 * TIME_SCALE);
    project(&token_file, &first);
    stop(&client, &own[0]).await;
    assert_eq!(
        status(&client, &own[0]).await,
        pb::ExecutionStatus::Stopping
    );
    project(
        &token_file,
        &service_account_token(ISSUER, SUBJECT, clock.now() + 86_400.0 * 30.0),
    );
    let stats = admin.stats_by_account().await;
    assert!(
        calls(&stats, ACCOUNT, "AssumeRoleWithWebIdentity") >= 1,
        "{stats}"
    );
    assert_eq!(
        calls(&stats, ACCOUNT, "StopPipelineExecution"),
        1,
        "{stats}"
    );

    // Wait until the first token has expired, and with it every credential it could buy: the
    // probe buys credentials with it until STS refuses it, and makes them last ten emulated
    // minutes longer than the service's hour, so that once the last of them has expired, so
    // have all of the service's that came from the first token.
    let sts = sts_client(&endpoint, "us-east-1", default_keys());
    let (probe, gap) = last_before_expiry("the first token", async || {
        sts.assume_role_with_web_identity()
            .role_arn(PROBE_ROLE)
            .role_session_name("probe")
            .web_identity_token(&first)
            .duration_seconds(3600 + 600)
            .send()
            .await
    })
    .await;
    assert!(
        gap < Duration::from_secs_f64(600.0 / TIME_SCALE),
        "the probe missed the token's expiry by {gap:?}"
    );
    let probe = probe.expect("the first token bought credentials before it expired");
    let probe = sagemaker_client_in(
        &endpoint,
        "us-east-1",
        session_keys(probe.credentials().unwrap()),
        1,
    );
    last_before_expiry("the probe's credentials", async || {
        probe.list_pipelines().send().await
    })
    .await;

    // The service goes on, in both accounts: aws-config called STS again and read the token
    // file anew (the first token is refused by now), and the other account's role is assumed
    // with the fresh credentials.
    stop(&client, &own[1]).await;
    for arn in &own {
        assert_eq!(status(&client, arn).await, pb::ExecutionStatus::Stopping);
    }
    stop(&client, &other[0]).await;
    assert_eq!(
        status(&client, &other[0]).await,
        pb::ExecutionStatus::Stopping
    );
    assert_eq!(
        status(&client, &other[1]).await,
        pb::ExecutionStatus::Executing
    );

    let stats = admin.stats_by_account().await;
    assert!(
        calls(&stats, ACCOUNT, "AssumeRoleWithWebIdentity") >= 2,
        "renewed: {stats}"
    );
    assert_eq!(
        calls(&stats, ACCOUNT, "StopPipelineExecution"),
        2,
        "{stats}"
    );
    // The other account's role was assumed by the service's own account (signed with the
    // web identity credentials, whose signatures the emulator checks), and its calls acted
    // there.
    assert!(calls(&stats, ACCOUNT, "AssumeRole") >= 1, "{stats}");
    assert_eq!(calls(&stats, OTHER, "StopPipelineExecution"), 1, "{stats}");
    // Nothing the service did acted in the emulator's default account: it had no keys.
    assert!(stats.get("123456789012").is_none(), "{stats}");

    let child = service.0.take().unwrap();
    send_signal(&child, "-TERM");
    let (_, exit) = wait_bounded_async(child).await;
    let logs = logs.join().unwrap();
    assert_eq!(exit.code(), Some(0), "{logs}");
}
