//! Helpers for tests that drive the emulator through the real SageMaker SDK client and its
//! admin surface over HTTP. The service's integration tests include this file too.
// Each test binary uses a different part of this module; helpers panic with a message, as tests do.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// A name unique in this process (and, with the time in it, across runs).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// An emulator on a free port with the given time scale and seed.
pub async fn spawn_emulator(
    time_scale: f64,
    seed: Option<u64>,
) -> sagemaker_emulator::RunningEmulator {
    let options = sagemaker_emulator::EmulatorOptions {
        time_scale,
        seed,
        ..Default::default()
    };
    spawn_emulator_with(&options).await
}

/// An emulator on a free port with `options`.
pub async fn spawn_emulator_with(
    options: &sagemaker_emulator::EmulatorOptions,
) -> sagemaker_emulator::RunningEmulator {
    sagemaker_emulator::EmulatorServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), options)
        .await
        .expect("bind the emulator")
        .spawn()
}

/// The real SageMaker SDK client pointed at `endpoint`, with dummy credentials. `retries` is
/// the number of attempts (1 disables retries).
pub fn sagemaker_client(endpoint: &str, attempts: u32) -> aws_sdk_sagemaker::Client {
    let credentials =
        aws_sdk_sagemaker::config::Credentials::new("AKIDEMULATOR", "secret", None, None, "tests");
    sagemaker_client_in(endpoint, "us-east-1", credentials, attempts)
}

/// The real SageMaker SDK client pointed at `endpoint`, signing for `region` with
/// `credentials`: the emulator acts in that region, and in the account of the credentials
/// (those its STS issued belong to the assumed role's account, any other to its default).
pub fn sagemaker_client_in(
    endpoint: &str,
    region: &str,
    credentials: aws_sdk_sagemaker::config::Credentials,
    attempts: u32,
) -> aws_sdk_sagemaker::Client {
    use aws_sdk_sagemaker::config::{BehaviorVersion, Region, retry::RetryConfig};
    let config = aws_sdk_sagemaker::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(attempts)
                .with_initial_backoff(Duration::from_millis(10)),
        )
        .build();
    aws_sdk_sagemaker::Client::from_conf(config)
}

/// The emulator's admin surface.
pub struct Admin {
    base: String,
    http: reqwest::Client,
}

impl Admin {
    pub fn new(endpoint: &str) -> Self {
        Self {
            base: format!("{endpoint}/_emulator"),
            http: reqwest::Client::new(),
        }
    }

    /// The JSON at `path` (under `/_emulator/`).
    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.http
            .get(format!("{}/{path}", self.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    pub async fn stats(&self) -> std::collections::HashMap<String, u64> {
        self.get("stats").await
    }

    /// `{ACCOUNT: {REGION: {OPERATION: calls}}}`, STS's included.
    pub async fn stats_by_account(&self) -> serde_json::Value {
        self.get("stats/by-account").await
    }

    /// What AssumeRole of each role demands, by role ARN.
    pub async fn roles(&self) -> serde_json::Value {
        self.get("roles").await
    }

    /// The faults in force for every account (`None`), or for one account's calls only.
    pub async fn faults(&self, account: Option<&str>) -> serde_json::Value {
        match account {
            Some(account) => self.get(&format!("faults?account={account}")).await,
            None => self.get("faults").await,
        }
    }

    /// Sets what AssumeRole of a role demands: `{"roleArn": ..., "externalId": ..., "refuse": ...}`.
    pub async fn set_role(&self, rule: serde_json::Value) {
        self.put("roles", &rule).await;
    }

    /// PUTs `body` at `path` (under `/_emulator/`), failing the test unless it succeeds.
    async fn put(&self, path: &str, body: &serde_json::Value) {
        let response = self
            .http
            .put(format!("{}/{path}", self.base))
            .json(body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{:?}",
            response.text().await
        );
    }

    pub async fn calls(&self, operation: &str) -> u64 {
        self.stats()
            .await
            .get(operation)
            .copied()
            .unwrap_or_default()
    }

    pub async fn reset_stats(&self) {
        let response = self
            .http
            .delete(format!("{}/stats", self.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    /// `{ACCOUNT: {REGION: {OPERATION: calls}}}` of the calls answered ThrottlingException.
    pub async fn stats_throttled(&self) -> serde_json::Value {
        self.get("stats/throttled").await
    }

    /// The request quotas in force for every account (`None`), or for one account's calls only.
    pub async fn quotas(&self, account: Option<&str>) -> serde_json::Value {
        match account {
            Some(account) => self.get(&format!("quotas?account={account}")).await,
            None => self.get("quotas").await,
        }
    }

    /// Sets the request quota of `operation` (or `*`), `{"rate": ..., "burst": ...}`, for every
    /// account or for one.
    pub async fn set_quota(
        &self,
        operation: &str,
        account: Option<&str>,
        quota: serde_json::Value,
    ) {
        let path = match account {
            Some(account) => format!("quotas/{operation}?account={account}"),
            None => format!("quotas/{operation}"),
        };
        self.put(&path, &quota).await;
    }

    pub async fn set_fault(&self, operation: &str, fault: serde_json::Value) {
        self.put(&format!("faults/{operation}"), &fault).await;
    }

    pub async fn clear_faults(&self) {
        let response = self
            .http
            .delete(format!("{}/faults", self.base))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success());
    }

    pub async fn callbacks(&self, execution_arn: &str) -> Vec<serde_json::Value> {
        self.http
            .get(format!("{}/callbacks", self.base))
            .query(&[("pipelineExecutionArn", execution_arn)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// A 36-character client token, unique in this process.
pub fn token() -> String {
    format!("{:0>36}", unique_name("t").replace('_', ""))
}

/// Creates a pipeline from `steps` (a JSON list) and returns its name.
pub async fn create_pipeline(
    client: &aws_sdk_sagemaker::Client,
    steps: serde_json::Value,
) -> String {
    let name = unique_name("p").replace('_', "-");
    let definition = serde_json::json!({
        "Version": "2020-12-01",
        "Metadata": {},
        "Parameters": [{"Name": "InputUri", "Type": "String", "DefaultValue": "s3://bucket/input"}],
        "Steps": steps,
    });
    client
        .create_pipeline()
        .pipeline_name(&name)
        .pipeline_definition(definition.to_string())
        .role_arn("arn:aws:iam::123456789012:role/SageMakerRole")
        .client_request_token(token())
        .send()
        .await
        .expect("create the pipeline");
    name
}

/// Starts an execution of `pipeline` and returns its ARN.
pub async fn start_execution(client: &aws_sdk_sagemaker::Client, pipeline: &str) -> String {
    client
        .start_pipeline_execution()
        .pipeline_name(pipeline)
        .client_request_token(token())
        .send()
        .await
        .expect("start the execution")
        .pipeline_execution_arn()
        .expect("an execution ARN")
        .to_string()
}

/// The execution's status, as DescribePipelineExecution reports it.
pub async fn execution_status(client: &aws_sdk_sagemaker::Client, arn: &str) -> String {
    client
        .describe_pipeline_execution()
        .pipeline_execution_arn(arn)
        .send()
        .await
        .expect("describe the execution")
        .pipeline_execution_status()
        .map(|s| s.as_str().to_string())
        .unwrap_or_default()
}

/// Polls until the execution shows `status`; fails the test after 30 s of real time.
pub async fn wait_for_status(client: &aws_sdk_sagemaker::Client, arn: &str, status: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = execution_status(client, arn).await;
        if now == status {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{arn} stayed {now}, never {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// All steps of an execution, through the paginator.
pub async fn all_steps(
    client: &aws_sdk_sagemaker::Client,
    arn: &str,
) -> Vec<aws_sdk_sagemaker::types::PipelineExecutionStep> {
    client
        .list_pipeline_execution_steps()
        .pipeline_execution_arn(arn)
        .max_results(100)
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .expect("list the steps")
}

/// The callback token of a Callback step, as ListPipelineExecutionSteps reports it.
pub fn callback_token(step: &aws_sdk_sagemaker::types::PipelineExecutionStep) -> String {
    step.metadata()
        .and_then(|m| m.callback())
        .and_then(|c| c.callback_token())
        .expect("a Callback step with a callback token")
        .to_string()
}

impl Admin {
    /// The ClientRequestTokens of every StopPipelineExecution the execution received.
    pub async fn stop_tokens(&self, execution_arn: &str) -> Vec<String> {
        let requests: Vec<serde_json::Value> = self
            .http
            .get(format!("{}/stop-requests", self.base))
            .query(&[("pipelineExecutionArn", execution_arn)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        requests
            .iter()
            .map(|r| r["clientRequestToken"].as_str().unwrap().to_string())
            .collect()
    }
}

/// The keys every test uses for the emulator's default account.
pub fn default_keys() -> aws_sdk_sagemaker::config::Credentials {
    aws_sdk_sagemaker::config::Credentials::new("AKIDEMULATOR", "secret", None, None, "tests")
}

/// The real STS SDK client pointed at the emulator, signing for `region` with `credentials`.
pub fn sts_client(
    endpoint: &str,
    region: &str,
    credentials: aws_sdk_sagemaker::config::Credentials,
) -> aws_sdk_sts::Client {
    let config = aws_sdk_sts::Config::builder()
        .behavior_version(aws_sdk_sts::config::BehaviorVersion::latest())
        .region(aws_sdk_sts::config::Region::new(region.to_string()))
        .credentials_provider(credentials)
        .endpoint_url(endpoint)
        .retry_config(aws_sdk_sts::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_sts::Client::from_conf(config)
}

/// The temporary credentials AssumeRole answers, as an SDK would use them.
pub fn session_keys(
    credentials: &aws_sdk_sts::types::Credentials,
) -> aws_sdk_sagemaker::config::Credentials {
    aws_sdk_sagemaker::config::Credentials::new(
        credentials.access_key_id(),
        credentials.secret_access_key(),
        Some(credentials.session_token().to_string()),
        None,
        "assumed",
    )
}

/// Assumes `role_arn` with the default keys and returns its temporary credentials, for the
/// longest STS allows (12 emulated hours), so that tests at a high time scale can use them.
pub async fn assume(endpoint: &str, role_arn: &str) -> aws_sdk_sagemaker::config::Credentials {
    let answer = sts_client(endpoint, "us-east-1", default_keys())
        .assume_role()
        .role_arn(role_arn)
        .role_session_name("tests")
        .duration_seconds(43_200)
        .send()
        .await
        .expect("assume the role");
    session_keys(answer.credentials().expect("credentials"))
}

impl Admin {
    /// A call to the admin surface: its HTTP status and JSON answer (`null` when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut request = self.http.request(method, format!("{}/{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let value = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        (status, value)
    }

    /// Makes a queue receive events: `{"queueName": ..., "account": ..., "region": ...}`
    /// (account and region optional); the target as the emulator filled it in.
    pub async fn add_events_queue(&self, target: serde_json::Value) -> serde_json::Value {
        let (status, answer) = self
            .call(reqwest::Method::PUT, "events/queues", Some(target))
            .await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// The queues that receive events.
    pub async fn events_queues(&self) -> serde_json::Value {
        self.get("events/queues").await
    }

    /// Sets the faults of event delivery.
    pub async fn set_event_faults(&self, faults: serde_json::Value) {
        self.put("events/faults", &faults).await;
    }

    /// Clears the faults of event delivery.
    pub async fn clear_event_faults(&self) {
        let (status, _) = self
            .call(reqwest::Method::DELETE, "events/faults", None)
            .await;
        assert_eq!(status, 204);
    }

    /// The events an execution's status changes made, oldest first, before any fault.
    pub async fn events(&self, execution_arn: &str) -> Vec<serde_json::Value> {
        self.http
            .get(format!("{}/events", self.base))
            .query(&[("pipelineExecutionArn", execution_arn)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// Now on the real clock, in epoch seconds.
pub fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// A web identity token (a JWT) carrying `claims`. Its signature is made with no key: the
/// emulator reads the claims and does not check it.
pub fn web_identity_token(claims: &serde_json::Value) -> String {
    use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
    let header = serde_json::json!({"alg": "RS256", "kid": "tests", "typ": "JWT"});
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode("not checked")
    )
}

/// A service-account token as EKS projects it into a pod for IRSA: of `issuer` (the
/// cluster's), naming `subject` (`system:serviceaccount:NAMESPACE:NAME`), for STS's audience,
/// expiring at `exp` (epoch seconds, compared with the emulated clock).
pub fn service_account_token(issuer: &str, subject: &str, exp: f64) -> String {
    let now = epoch_now().floor();
    web_identity_token(&serde_json::json!({
        "iss": issuer,
        "sub": subject,
        "aud": ["sts.amazonaws.com"],
        "exp": exp.floor(),
        "iat": now,
        "nbf": now,
        "kubernetes.io": {"namespace": "ml", "serviceaccount": {"name": "pipeline-control"}},
    }))
}
