//! AssumeRoleWithWebIdentity, as a pod on EKS calls it for IRSA: the SDK's call, which it
//! sends unsigned, trades a service-account token for credentials of the role's account, whose
//! signatures are checked and which expire on the emulated clock; tokens STS would not take
//! (expired, of an untrusted issuer, for another audience, no JWT at all) are refused with
//! STS's codes.

use std::time::Duration;

use crate::support::{
    Admin, create_pipeline, default_keys, epoch_now, sagemaker_client_in, service_account_token,
    session_keys, spawn_emulator, spawn_emulator_with, sts_client, web_identity_token,
};
use aws_sdk_sagemaker::error::ProvideErrorMetadata;
use serde_json::json;

const ISSUER: &str = "https://oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE";
const SUBJECT: &str = "system:serviceaccount:ml:pipeline-control";
const ROLE: &str = "arn:aws:iam::222222222222:role/pipeline-control";
const ROLE_ACCOUNT: &str = "222222222222";

/// An emulator at `time_scale` that trusts the tokens of [`ISSUER`] alone.
async fn trusting_the_cluster(time_scale: f64) -> sagemaker_emulator::RunningEmulator {
    spawn_emulator_with(&sagemaker_emulator::EmulatorOptions {
        time_scale,
        web_identity_issuers: vec![ISSUER.to_string()],
        ..Default::default()
    })
    .await
}

/// A token of the cluster's for `subject`, valid for an hour of real time.
fn token_for(subject: &str) -> String {
    service_account_token(ISSUER, subject, epoch_now() + 3600.0)
}

/// The STS client a pod would use: AssumeRoleWithWebIdentity goes unsigned whatever keys it
/// has (its auth scheme is none), so these never reach the emulator.
fn sts(endpoint: &str) -> aws_sdk_sts::Client {
    sts_client(endpoint, "eu-west-1", default_keys())
}

#[tokio::test]
async fn a_service_account_token_gets_credentials_that_act_in_the_roles_account() {
    let emulator = trusting_the_cluster(1.0).await;
    let endpoint = &emulator.endpoint_url;
    let answer = sts(endpoint)
        .assume_role_with_web_identity()
        .role_arn(ROLE)
        .role_session_name("pod-1")
        .web_identity_token(token_for(SUBJECT))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.subject_from_web_identity_token(), Some(SUBJECT));
    assert_eq!(answer.audience(), Some("sts.amazonaws.com"));
    assert_eq!(
        answer.provider(),
        Some("arn:aws:iam::222222222222:oidc-provider/oidc.eks.eu-west-1.amazonaws.com/id/EXAMPLE")
    );
    let user = answer.assumed_role_user().unwrap();
    assert_eq!(
        user.arn(),
        "arn:aws:sts::222222222222:assumed-role/pipeline-control/pod-1"
    );
    assert!(
        user.assumed_role_id().starts_with("AROA") && user.assumed_role_id().ends_with(":pod-1"),
        "{user:?}"
    );
    let credentials = answer.credentials().unwrap();
    let left = credentials.expiration().as_secs_f64() - epoch_now();
    assert!(
        (3598.0..=3601.0).contains(&left),
        "the default hour: {left}"
    );

    let keys = session_keys(credentials);
    let them = sts_client(endpoint, "eu-west-1", keys.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(them.account(), Some(ROLE_ACCOUNT));
    assert_eq!(them.arn(), Some(user.arn()));
    assert_eq!(them.user_id(), Some(user.assumed_role_id()));

    let sagemaker = sagemaker_client_in(endpoint, "eu-west-1", keys.clone(), 1);
    let pipeline = create_pipeline(&sagemaker, json!([{"Name": "A", "Type": "Training"}])).await;
    let described = sagemaker
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap();
    assert!(
        described
            .pipeline_arn()
            .unwrap()
            .starts_with("arn:aws:sagemaker:eu-west-1:222222222222:pipeline/"),
        "{described:?}"
    );
    let e = sagemaker_client_in(endpoint, "eu-west-1", default_keys(), 1)
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap_err();
    assert!(e.as_service_error().unwrap().is_resource_not_found());

    // The emulator knows the secret: a signature made with another is refused.
    let forged = aws_sdk_sagemaker::config::Credentials::new(
        credentials.access_key_id(),
        "not-the-secret",
        Some(credentials.session_token().to_string()),
        None,
        "forged",
    );
    let e = sagemaker_client_in(endpoint, "eu-west-1", forged, 1)
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("InvalidSignatureException"));
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 403);

    // Counted in the role's account, in the emulator's region: the call named no region of its
    // own (the client's is eu-west-1), as an unsigned call does not.
    let stats = Admin::new(endpoint).stats_by_account().await;
    assert_eq!(
        stats[ROLE_ACCOUNT]["us-east-1"]["AssumeRoleWithWebIdentity"], 1,
        "{stats}"
    );
    assert_eq!(
        stats[ROLE_ACCOUNT]["eu-west-1"]["CreatePipeline"], 1,
        "{stats}"
    );
}

#[tokio::test]
async fn tokens_sts_would_not_take_are_refused_with_its_codes() {
    let emulator = trusting_the_cluster(1.0).await;
    let endpoint = &emulator.endpoint_url;
    let admin = Admin::new(endpoint);
    let sts = sts(endpoint);
    let assume = |token: String| {
        sts.assume_role_with_web_identity()
            .role_arn(ROLE)
            .role_session_name("pod-1")
            .web_identity_token(token)
    };
    let claims = |iss: &str, aud: serde_json::Value, exp: f64| json!({"iss": iss, "sub": SUBJECT, "aud": aud, "exp": exp});
    let later = epoch_now() + 3600.0;
    let other_cluster = "https://oidc.eks.us-west-2.amazonaws.com/id/OTHER";
    let invalid = "InvalidIdentityToken";
    for (name, token, code, message) in [
        (
            "expired",
            service_account_token(ISSUER, SUBJECT, epoch_now() - 60.0),
            "ExpiredTokenException",
            "Token expired: current date/time ",
        ),
        (
            "of another cluster",
            service_account_token(other_cluster, SUBJECT, later),
            invalid,
            "No OpenIDConnect provider found in your account for https://oidc.eks.us-west-2.amazonaws.com/id/OTHER",
        ),
        (
            "for another audience",
            web_identity_token(&claims(ISSUER, json!(["pipeline-control"]), later)),
            invalid,
            "Incorrect token audience",
        ),
        (
            "for another audience, as a string",
            web_identity_token(&claims(ISSUER, json!("sts.amazonaws.com.evil"), later)),
            invalid,
            "Incorrect token audience",
        ),
        (
            "without an audience",
            web_identity_token(&json!({"iss": ISSUER, "sub": SUBJECT, "exp": later})),
            invalid,
            "Missing a required claim: aud",
        ),
        (
            "no JWT",
            "not.a.jwt".to_string(),
            invalid,
            "The web identity token is not a valid JWT.",
        ),
    ] {
        let e = assume(token).send().await.unwrap_err();
        assert_eq!(e.code(), Some(code), "{name}: {e:?}");
        assert!(
            e.message().unwrap_or_default().starts_with(message),
            "{name}: {e:?}"
        );
        assert_eq!(e.raw_response().unwrap().status().as_u16(), 400, "{name}");
        let service_error = e.as_service_error().unwrap();
        assert!(
            service_error.is_expired_token_exception()
                || service_error.is_invalid_identity_token_exception(),
            "{name}: the SDK's own error type, {service_error:?}"
        );
    }
    // STS's words for an expired token: both moments in epoch seconds.
    let e = assume(service_account_token(ISSUER, SUBJECT, 1_700_000_000.0))
        .send()
        .await
        .unwrap_err();
    let message = e.message().unwrap();
    assert!(
        message.ends_with(" must be before the expiration date/time 1700000000"),
        "{message}"
    );

    // The request's members are checked as AssumeRole's are.
    for duration in [899, 43_201] {
        let e = assume(token_for(SUBJECT))
            .duration_seconds(duration)
            .send()
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("ValidationError"), "{duration}");
        assert!(e.message().unwrap().contains("'durationSeconds'"), "{e:?}");
    }
    let e = assume("abc".into()).send().await.unwrap_err();
    assert!(e.message().unwrap().contains("'webIdentityToken'"), "{e:?}");

    // A role that refuses refuses web identities; one that demands an ExternalId (of
    // AssumeRole) takes them.
    admin
        .set_role(json!({"roleArn": ROLE, "refuse": true}))
        .await;
    let e = assume(token_for(SUBJECT)).send().await.unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"));
    assert_eq!(
        e.message(),
        Some("Not authorized to perform sts:AssumeRoleWithWebIdentity")
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 403);
    admin
        .set_role(json!({"roleArn": ROLE, "externalId": "for-assume-role"}))
        .await;
    assume(token_for(SUBJECT)).send().await.unwrap();

    // Every attempt is counted, refused or not.
    let stats = admin.stats_by_account().await;
    assert_eq!(
        stats[ROLE_ACCOUNT]["us-east-1"]["AssumeRoleWithWebIdentity"], 12,
        "{stats}"
    );

    // Without --web-identity-issuer, every issuer is trusted.
    let open = spawn_emulator(1.0, None).await;
    let answer = sts_client(&open.endpoint_url, "us-east-1", default_keys())
        .assume_role_with_web_identity()
        .role_arn(ROLE)
        .role_session_name("pod-1")
        .web_identity_token(service_account_token(other_cluster, SUBJECT, later))
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.provider(),
        Some("arn:aws:iam::222222222222:oidc-provider/oidc.eks.us-west-2.amazonaws.com/id/OTHER")
    );
}

/// Calls `attempt` every 50 ms until it answers `ExpiredTokenException`, failing the test after
/// 30 s of real time; every other answer must be a success.
async fn until_expired<T, E>(
    what: &str,
    mut attempt: impl AsyncFnMut() -> Result<T, aws_sdk_sts::error::SdkError<E>>,
) -> aws_sdk_sts::error::SdkError<E>
where
    E: ProvideErrorMetadata + std::fmt::Debug,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(_) => {}
            Err(e) if e.code() == Some("ExpiredTokenException") => return e,
            Err(e) => panic!("{what}: {e:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn web_identity_credentials_and_tokens_expire_on_the_emulated_clock() {
    // 900 emulated seconds pass in three real seconds.
    let emulator = trusting_the_cluster(300.0).await;
    let endpoint = &emulator.endpoint_url;
    // A token that lasts half an emulated hour (at most six real seconds).
    let token = service_account_token(ISSUER, SUBJECT, epoch_now() + 1800.0);
    let answer = sts(endpoint)
        .assume_role_with_web_identity()
        .role_arn(ROLE)
        .role_session_name("pod-1")
        .web_identity_token(token.clone())
        .duration_seconds(900)
        .send()
        .await
        .unwrap();
    let credentials = answer.credentials().unwrap();
    let left = credentials.expiration().as_secs_f64() - epoch_now();
    assert!(
        left <= 3.0,
        "900 emulated seconds by the wall clock: {left}"
    );

    let sagemaker = sagemaker_client_in(endpoint, "us-east-1", session_keys(credentials), 1);
    let e = until_expired("the credentials", async || {
        sagemaker.list_pipelines().send().await
    })
    .await;
    assert_eq!(
        e.message(),
        Some("The security token included in the request is expired")
    );
    assert_eq!(e.raw_response().unwrap().status().as_u16(), 400);

    let sts = sts(endpoint);
    let e = until_expired("the token", async || {
        sts.assume_role_with_web_identity()
            .role_arn(ROLE)
            .role_session_name("pod-1")
            .web_identity_token(token.clone())
            .send()
            .await
    })
    .await;
    assert!(e.message().unwrap().starts_with("Token expired: "), "{e:?}");

    // A new token, as the kubelet writes one before the old expires, is taken again.
    let renewed = service_account_token(ISSUER, SUBJECT, epoch_now() + 86_400.0);
    sts.assume_role_with_web_identity()
        .role_arn(ROLE)
        .role_session_name("pod-1")
        .web_identity_token(renewed)
        .send()
        .await
        .unwrap();
}
