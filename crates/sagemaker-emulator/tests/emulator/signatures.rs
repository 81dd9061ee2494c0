//! SigV4: the emulator checks the signature of every call made with a key whose secret it
//! knows (a key given with `--access-key`, a key its STS issued) and answers as STS, SageMaker
//! and SQS answer a wrong secret, a missing or wrong session token, an old or future date and
//! a body changed after signing; calls with other keys are accepted with any signature.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sdk_sagemaker::{config::Credentials, error::ProvideErrorMetadata};
use hmac::{Hmac, KeyInit, Mac};
use sagemaker_emulator::{AccessKey, EmulatorOptions};
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::support::{
    assume, create_pipeline, default_keys, sagemaker_client_in, spawn_emulator_with, sts_client,
};

const STATIC_ACCOUNT: &str = "444444444444";
const MISMATCH: &str = "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.";
const INVALID_TOKEN: &str = "The security token included in the request is invalid.";

/// An emulator that knows `AKIDSTATIC` (of account 444444444444) and `AKIDPLAIN` (of its
/// default account).
async fn emulator() -> sagemaker_emulator::RunningEmulator {
    spawn_emulator_with(&EmulatorOptions {
        access_keys: vec![
            AccessKey {
                account_id: Some(STATIC_ACCOUNT.into()),
                ..AccessKey::new("AKIDSTATIC", "static-secret")
            },
            AccessKey::new("AKIDPLAIN", "plain-secret"),
        ],
        ..Default::default()
    })
    .await
}

fn keys(id: &str, secret: &str) -> Credentials {
    Credentials::new(id, secret, None, None, "tests")
}

/// GetCallerIdentity's account, or the error code, message and HTTP status.
async fn account_of(
    endpoint: &str,
    credentials: Credentials,
) -> Result<String, (String, String, u16)> {
    sts_client(endpoint, "eu-west-1", credentials)
        .get_caller_identity()
        .send()
        .await
        .map(|answer| answer.account().unwrap_or_default().to_string())
        .map_err(|e| refusal(&e, e.raw_response().map(|r| r.status().as_u16())))
}

/// ListPipelines' pipeline names, or the error code, message and HTTP status.
async fn pipelines_of(
    endpoint: &str,
    credentials: Credentials,
) -> Result<Vec<String>, (String, String, u16)> {
    sagemaker_client_in(endpoint, "eu-west-1", credentials, 1)
        .list_pipelines()
        .send()
        .await
        .map(|answer| {
            answer
                .pipeline_summaries()
                .iter()
                .filter_map(|p| p.pipeline_name().map(str::to_string))
                .collect()
        })
        .map_err(|e| refusal(&e, e.raw_response().map(|r| r.status().as_u16())))
}

fn refusal(e: &impl ProvideErrorMetadata, status: Option<u16>) -> (String, String, u16) {
    (
        e.code().unwrap_or_default().to_string(),
        e.message().unwrap_or_default().to_string(),
        status.unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_key_given_with_its_secret_works_with_the_sdk_and_acts_in_its_account() {
    let emulator = emulator().await;
    let endpoint = &emulator.endpoint_url;
    let key = keys("AKIDSTATIC", "static-secret");

    let identity = sts_client(endpoint, "eu-west-1", key.clone())
        .get_caller_identity()
        .send()
        .await
        .unwrap();
    assert_eq!(identity.account(), Some(STATIC_ACCOUNT));
    assert_eq!(
        identity.arn(),
        Some("arn:aws:iam::444444444444:user/emulator")
    );
    let client = sagemaker_client_in(endpoint, "eu-west-1", key.clone(), 1);
    let pipeline = create_pipeline(&client, json!([{"Name": "A", "Type": "Training"}])).await;
    let arn = client
        .describe_pipeline()
        .pipeline_name(&pipeline)
        .send()
        .await
        .unwrap()
        .pipeline_arn()
        .unwrap()
        .to_string();
    assert_eq!(
        arn,
        format!("arn:aws:sagemaker:eu-west-1:{STATIC_ACCOUNT}:pipeline/{pipeline}")
    );

    // Without an account, a key is of the default account, as every key it does not know.
    let plain = keys("AKIDPLAIN", "plain-secret");
    assert_eq!(
        account_of(endpoint, plain.clone()).await.unwrap(),
        "123456789012"
    );
    assert_eq!(
        account_of(endpoint, default_keys()).await.unwrap(),
        "123456789012"
    );
    for other_account in [
        plain,
        default_keys(),
        keys("AKIDUNKNOWN", "any secret at all"),
    ] {
        let names = pipelines_of(endpoint, other_account).await.unwrap();
        assert!(!names.contains(&pipeline), "{names:?}");
    }
    assert_eq!(
        pipelines_of(endpoint, key).await.unwrap(),
        vec![pipeline.clone()]
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_as_sts_sagemaker_and_sqs_refuse_it() {
    let emulator = emulator().await;
    let endpoint = &emulator.endpoint_url;
    for wrong in [
        keys("AKIDSTATIC", "static-secreT"),
        keys("AKIDPLAIN", "static-secret"),
    ] {
        assert_eq!(
            account_of(endpoint, wrong.clone()).await.unwrap_err(),
            ("SignatureDoesNotMatch".into(), MISMATCH.into(), 403)
        );
        assert_eq!(
            pipelines_of(endpoint, wrong).await.unwrap_err(),
            ("InvalidSignatureException".into(), MISMATCH.into(), 403)
        );
    }

    // SQS: AWS's own error, with SQS's query code for the SDKs that read it.
    let right = Signer::new(endpoint, "AKIDSTATIC", "static-secret");
    let list = sqs("ListQueues", "{}");
    assert_eq!(right.send(&list, SystemTime::now()).await.status, 200);
    let wrong = Signer::new(endpoint, "AKIDSTATIC", "wrong");
    let answer = wrong.send(&list, SystemTime::now()).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.query_error.as_deref(),
        Some("SignatureDoesNotMatch;Sender")
    );
    assert_eq!(
        answer.json(),
        json!({"__type": "com.amazon.coral.service#InvalidSignatureException", "message": MISMATCH})
    );
}

#[tokio::test]
async fn assumed_role_keys_need_their_secret_and_their_token() {
    let emulator = emulator().await;
    let endpoint = &emulator.endpoint_url;
    let issued = assume(endpoint, "arn:aws:iam::222222222222:role/deployer").await;
    assert_eq!(
        account_of(endpoint, issued.clone()).await.unwrap(),
        "222222222222"
    );
    assert!(
        pipelines_of(endpoint, issued.clone())
            .await
            .unwrap()
            .is_empty()
    );

    let (id, secret, token) = (
        issued.access_key_id(),
        issued.secret_access_key(),
        issued.session_token().unwrap(),
    );
    let wrong_secret = Credentials::new(id, "wrong", Some(token.into()), None, "tests");
    assert_eq!(
        account_of(endpoint, wrong_secret.clone())
            .await
            .unwrap_err(),
        ("SignatureDoesNotMatch".into(), MISMATCH.into(), 403)
    );
    assert_eq!(
        pipelines_of(endpoint, wrong_secret).await.unwrap_err(),
        ("InvalidSignatureException".into(), MISMATCH.into(), 403)
    );
    for token in [None, Some("IQoJb3JpZ2luX2VtdWxhdG9yWRONG".to_string())] {
        let wrong_token = Credentials::new(id, secret, token, None, "tests");
        assert_eq!(
            account_of(endpoint, wrong_token.clone()).await.unwrap_err(),
            ("InvalidClientTokenId".into(), INVALID_TOKEN.into(), 403)
        );
        assert_eq!(
            pipelines_of(endpoint, wrong_token).await.unwrap_err(),
            (
                "UnrecognizedClientException".into(),
                INVALID_TOKEN.into(),
                403
            )
        );
    }

    let without_token = Signer::new(endpoint, id, secret);
    let answer = without_token
        .send(&sqs("ListQueues", "{}"), SystemTime::now())
        .await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.query_error.as_deref(),
        Some("InvalidClientTokenId;Sender")
    );
    assert_eq!(
        answer.json()["__type"],
        "com.amazon.coral.service#UnrecognizedClientException"
    );
    let with_token = Signer {
        token: Some(token),
        ..without_token
    };
    let answer = with_token
        .send(&sqs("ListQueues", "{}"), SystemTime::now())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn a_request_dated_outside_the_window_is_refused_in_each_services_words() {
    let emulator = emulator().await;
    let signer = Signer::new(&emulator.endpoint_url, "AKIDSTATIC", "static-secret");
    let minutes = |n: u64| Duration::from_secs(60 * n);
    let calls = [
        (sts("Action=GetCallerIdentity&Version=2011-06-15"), 15),
        (sagemaker("ListPipelines", "{}"), 5),
        (sqs("ListQueues", "{}"), 15),
    ];

    // Signed now, and just inside each window: the hand signer signs as the SDK does.
    for (call, window) in &calls {
        let now = SystemTime::now();
        let answer = signer.send(call, now).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let inside = minutes(*window) - Duration::from_secs(30);
        for at in [now - inside, now + inside] {
            assert_eq!(signer.send(call, at).await.status, 200, "{window}");
        }
    }
    // Ten minutes old: within STS's and SQS's 15 minutes, not SageMaker's 5.
    let ten_minutes_ago = SystemTime::now() - minutes(10);
    assert_eq!(signer.send(&calls[0].0, ten_minutes_ago).await.status, 200);
    assert_eq!(signer.send(&calls[1].0, ten_minutes_ago).await.status, 403);

    for (call, window) in &calls {
        for (late, signed_at) in [
            (true, SystemTime::now() - minutes(20)),
            (false, SystemTime::now() + minutes(20)),
        ] {
            let before = SystemTime::now();
            let answer = signer.send(call, signed_at).await;
            let after = SystemTime::now();
            assert_eq!(answer.status, 403, "{}", answer.body);
            let (code, message) = answer.code_and_message();
            let expected_code = match call.service {
                "sts" => "SignatureDoesNotMatch",
                _ => "InvalidSignatureException",
            };
            assert_eq!(code, expected_code);
            // AWS's words, on the emulator's real clock at some second of the call.
            let signed = amz_date(signed_at);
            let window_secs = window * 60;
            let worded = |now: u64| {
                if late {
                    format!(
                        "Signature expired: {signed} is now earlier than {} ({} - {window} min.)",
                        amz_date(UNIX_EPOCH + Duration::from_secs(now - window_secs)),
                        amz_date(UNIX_EPOCH + Duration::from_secs(now))
                    )
                } else {
                    format!(
                        "Signature not yet current: {signed} is still later than {} ({} + {window} min.)",
                        amz_date(UNIX_EPOCH + Duration::from_secs(now + window_secs)),
                        amz_date(UNIX_EPOCH + Duration::from_secs(now))
                    )
                }
            };
            let seconds = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
            assert!(
                (seconds(before)..=seconds(after)).any(|now| worded(now) == message),
                "{message}"
            );
        }
    }
}

#[tokio::test]
async fn a_body_changed_after_signing_is_refused() {
    let emulator = emulator().await;
    let signer = Signer::new(&emulator.endpoint_url, "AKIDSTATIC", "static-secret");

    let list = sagemaker("ListPipelines", r#"{"MaxResults": 10}"#);
    assert_eq!(signer.send(&list, SystemTime::now()).await.status, 200);
    let changed = Call {
        sent_body: Some(r#"{"MaxResults": 11}"#.into()),
        ..list.clone()
    };
    let answer = signer.send(&changed, SystemTime::now()).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.code_and_message(),
        ("InvalidSignatureException".into(), MISMATCH.into())
    );
    // Nor does a signed hash of the body that was signed make another body pass.
    let mut hashed = changed.clone();
    hashed.headers.push((
        "x-amz-content-sha256",
        hex::encode(Sha256::digest(list.body.as_bytes())),
    ));
    assert_eq!(signer.send(&hashed, SystemTime::now()).await.status, 403);
    let hashed_right = Call {
        sent_body: None,
        ..hashed
    };
    assert_eq!(
        signer.send(&hashed_right, SystemTime::now()).await.status,
        200
    );

    let identity = sts("Action=GetCallerIdentity&Version=2011-06-15");
    let changed = Call {
        sent_body: Some(
            "Action=AssumeRole&Version=2011-06-15&RoleArn=arn%3Aaws%3Aiam%3A%3A222222222222%3Arole%2FR&RoleSessionName=s1"
                .into(),
        ),
        ..identity
    };
    let answer = signer.send(&changed, SystemTime::now()).await;
    assert_eq!(answer.status, 403);
    assert_eq!(
        answer.code_and_message(),
        ("SignatureDoesNotMatch".into(), MISMATCH.into())
    );
}

/// One call of a protocol, as a client sends it.
#[derive(Debug, Clone)]
struct Call {
    /// The service of the credential scope.
    service: &'static str,
    headers: Vec<(&'static str, String)>,
    /// What is signed.
    body: String,
    /// What is sent, if not what is signed.
    sent_body: Option<String>,
}

fn call(service: &'static str, headers: Vec<(&'static str, String)>, body: &str) -> Call {
    Call {
        service,
        headers,
        body: body.to_string(),
        sent_body: None,
    }
}

fn sts(body: &str) -> Call {
    let form = "application/x-www-form-urlencoded; charset=utf-8".to_string();
    call("sts", vec![("content-type", form)], body)
}

fn sagemaker(operation: &str, body: &str) -> Call {
    let headers = vec![
        ("content-type", "application/x-amz-json-1.1".to_string()),
        ("x-amz-target", format!("SageMaker.{operation}")),
    ];
    call("sagemaker", headers, body)
}

fn sqs(action: &str, body: &str) -> Call {
    let headers = vec![
        ("content-type", "application/x-amz-json-1.0".to_string()),
        ("x-amz-target", format!("AmazonSQS.{action}")),
    ];
    call("sqs", headers, body)
}

/// Signs calls by hand, as the SDKs sign them: SigV4 written again here (not the emulator's
/// own), so that a test can date a call as it likes, or change it after signing.
#[derive(Debug, Clone, Copy)]
struct Signer<'a> {
    endpoint: &'a str,
    key: &'a str,
    secret: &'a str,
    token: Option<&'a str>,
}

/// What a call got.
struct Answer {
    status: u16,
    query_error: Option<String>,
    body: String,
}

impl Answer {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap()
    }

    /// The error code (without a JSON `__type`'s namespace) and message, from JSON or from
    /// STS's XML.
    fn code_and_message(&self) -> (String, String) {
        if self.body.starts_with('<') {
            let between = |tag: &str| {
                let open = format!("<{tag}>");
                let rest = &self.body[self.body.find(&open).unwrap() + open.len()..];
                rest[..rest.find('<').unwrap()].to_string()
            };
            (between("Code"), between("Message"))
        } else {
            let json = self.json();
            let shape = json["__type"].as_str().unwrap();
            (
                shape.rsplit('#').next().unwrap().to_string(),
                json["Message"]
                    .as_str()
                    .or(json["message"].as_str())
                    .unwrap()
                    .to_string(),
            )
        }
    }
}

impl<'a> Signer<'a> {
    fn new(endpoint: &'a str, key: &'a str, secret: &'a str) -> Self {
        Self {
            endpoint,
            key,
            secret,
            token: None,
        }
    }

    /// Sends `call` signed at `at` in us-east-1.
    async fn send(&self, call: &Call, at: SystemTime) -> Answer {
        let host = self.endpoint.trim_start_matches("http://").to_string();
        let signed_at = amz_date(at);
        let mut headers = call.headers.clone();
        headers.push(("host", host));
        headers.push(("x-amz-date", signed_at.clone()));
        if let Some(token) = self.token {
            headers.push(("x-amz-security-token", token.to_string()));
        }
        headers.sort();
        let names: Vec<&str> = headers.iter().map(|(name, _)| *name).collect();
        let signed_headers = names.join(";");
        let canonical_headers: String = headers
            .iter()
            .map(|(name, value)| format!("{name}:{}\n", value.trim()))
            .collect();
        let canonical_request = format!(
            "POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}",
            hex::encode(Sha256::digest(call.body.as_bytes()))
        );
        let scope = format!(
            "{}/us-east-1/{}/aws4_request",
            &signed_at[..8],
            call.service
        );
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{signed_at}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        let mut key = format!("AWS4{}", self.secret).into_bytes();
        for part in [&signed_at[..8], "us-east-1", call.service, "aws4_request"] {
            key = hmac(&key, part);
        }
        let signature = hex::encode(hmac(&key, &string_to_sign));
        let authorization = format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            self.key
        );

        let mut request = reqwest::Client::new()
            .post(format!("{}/", self.endpoint))
            .header("authorization", authorization);
        for (name, value) in headers.iter().filter(|(name, _)| *name != "host") {
            request = request.header(*name, value);
        }
        let body = call.sent_body.clone().unwrap_or_else(|| call.body.clone());
        let response = request.body(body).send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            query_error: response
                .headers()
                .get("x-amzn-query-error")
                .map(|v| v.to_str().unwrap().to_string()),
            body: response.text().await.unwrap(),
        }
    }
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// `t` as `X-Amz-Date` writes it: `20261201T120000Z`.
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        in_day / 3600,
        in_day % 3600 / 60,
        in_day % 60
    )
}
