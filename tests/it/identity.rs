//! Callers proven by their platform (`--identity-file`), against a real server, database and
//! emulator: JWTs of an issuer that each test serves on loopback (its discovery document and
//! key set, counting the key-set fetches), with RSA and EC keys made in the test; and a mesh's
//! header from a trusted proxy, or from a peer that is not one.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::Jwk};
use pipeline_control::{app::Application, pb};
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::{Code, Request};

use crate::auth::{Files, Secured, assert_refused, reason_of, stop_request, with_token};
use crate::common::{Backend, TestDb, count_where, test_args, token_file};

// ---------------------------------------------------------------------------------------------
// An issuer, served by the test

/// A signing key made in the test, and its public JWK.
pub(crate) struct SigningKey {
    kid: String,
    algorithm: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key as PEM, which a forger would use as an HMAC secret.
    public_pem: String,
}

impl SigningKey {
    pub(crate) fn rsa(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        // jsonwebtoken's aws-lc signer reads PKCS#1; rcgen writes PKCS#8, which wraps it.
        let encoding = EncodingKey::from_rsa_der(&pkcs1_of(&pair.serialize_der()));
        Self::new(kid, Algorithm::RS256, encoding, &pair)
    }

    fn ec(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let encoding = EncodingKey::from_ec_der(&pair.serialize_der());
        Self::new(kid, Algorithm::ES256, encoding, &pair)
    }

    fn new(kid: &str, algorithm: Algorithm, encoding: EncodingKey, pair: &rcgen::KeyPair) -> Self {
        let mut jwk = Jwk::from_encoding_key(&encoding, algorithm).unwrap();
        jwk.common.key_id = Some(kid.to_string());
        Self {
            kid: kid.to_string(),
            algorithm,
            encoding,
            jwk: serde_json::to_value(jwk).unwrap(),
            public_pem: pair.public_key_pem(),
        }
    }

    /// A token of `claims` signed with this key, naming it.
    pub(crate) fn sign(&self, claims: &Value) -> String {
        self.sign_as(&self.kid, claims)
    }

    /// A token of `claims` signed with this key, naming `kid`.
    fn sign_as(&self, kid: &str, claims: &Value) -> String {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, &self.encoding).unwrap()
    }
}

/// The RSAPrivateKey (PKCS#1) inside a PKCS#8 PrivateKeyInfo: SEQUENCE { version, algorithm,
/// OCTET STRING privateKey }.
fn pkcs1_of(pkcs8: &[u8]) -> Vec<u8> {
    fn tlv(der: &[u8]) -> (u8, &[u8], &[u8]) {
        let (length, header) = match der[1] {
            short if short < 0x80 => (usize::from(short), 2),
            long => {
                let count = usize::from(long & 0x7f);
                let length = der[2..2 + count]
                    .iter()
                    .fold(0, |length, byte| length << 8 | usize::from(*byte));
                (length, 2 + count)
            }
        };
        (
            der[0],
            &der[header..header + length],
            &der[header + length..],
        )
    }
    let (_, info, _) = tlv(pkcs8);
    let (_, _, rest) = tlv(info);
    let (_, _, rest) = tlv(rest);
    let (tag, key, _) = tlv(rest);
    assert_eq!(tag, 0x04, "an OCTET STRING");
    key.to_vec()
}

/// An OpenID issuer on loopback: `/.well-known/openid-configuration` names `/keys`, the key
/// set, whose fetches it counts.
pub(crate) struct Issuer {
    url: String,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Issuer {
    pub(crate) async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
        let fetches = Arc::new(AtomicUsize::new(0));
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/keys")}).to_string();
        let json = |body: String| ([(http::header::CONTENT_TYPE, "application/json")], body);
        let router = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                axum::routing::get(move || async move { json(discovery) }),
            )
            .route(
                "/keys",
                axum::routing::get({
                    let (keys, fetches) = (keys.clone(), fetches.clone());
                    move || async move {
                        fetches.fetch_add(1, Ordering::SeqCst);
                        let keys = keys.lock().unwrap().clone();
                        json(json!({ "keys": keys }).to_string())
                    }
                }),
            );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            url,
            keys,
            fetches,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub(crate) fn publish(&self, key: &SigningKey) {
        self.keys.lock().unwrap().push(key.jwk.clone());
    }

    /// Publishes `key` alone: the keys published before leave the set.
    fn replace_with(&self, key: &SigningKey) {
        *self.keys.lock().unwrap() = vec![key.jwk.clone()];
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }

    /// Stops serving: the port is closed, its connections too.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    /// An `[[jwt]]` entry for this issuer, audience `pipeline-control`, with `extra` lines.
    pub(crate) fn entry(&self, extra: &str) -> String {
        format!(
            "[[jwt]]\nissuer = \"{}\"\naudiences = [\"pipeline-control\"]\n{extra}\n",
            self.url
        )
    }

    /// The claims of a Kubernetes projected service-account token of this issuer, valid for
    /// an hour.
    pub(crate) fn service_account(&self, namespace: &str, name: &str) -> Value {
        let now = now();
        json!({
            "aud": ["pipeline-control"],
            "exp": now + 3600,
            "iat": now,
            "nbf": now,
            "iss": self.url,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io": {
                "namespace": namespace,
                "pod": {"name": format!("{name}-7d9f8b6c5-x2x9q"), "uid": "b6f2a0a4-0e3c-4d6b-9b1a-5c2f0e9d1a7e"},
                "serviceaccount": {"name": name, "uid": "3f1c2b7e-8a9d-4c1e-b2f3-6d5e4a3b2c1d"},
            },
        })
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A server whose identity file is `identity` (and with `tweak` applied).
async fn server(
    identity: &str,
    files: &Files,
    tweak: impl FnOnce(&mut pipeline_control::config::ServeArgs),
) -> Secured {
    let identity = files.write("identity.toml", identity);
    Secured::start(Backend::Postgres, |args| {
        args.security.identity_file = Some(identity);
        tweak(args);
    })
    .await
}

/// GetStopRequest of an unused token as the holder of `bearer`: authenticated callers get
/// STOP_REQUEST_NOT_FOUND, without touching SageMaker.
async fn probe(server: &Secured, bearer: &str) -> Result<pb::StopRequest, tonic::Status> {
    let request = pb::GetStopRequestRequest {
        client_request_token: "never-used".into(),
    };
    server
        .plaintext()
        .get_stop_request(with_token(request, bearer))
        .await
        .map(tonic::Response::into_inner)
}

fn assert_authenticated(outcome: Result<pb::StopRequest, tonic::Status>) {
    assert_refused(outcome, Code::NotFound, "STOP_REQUEST_NOT_FOUND");
}

// ---------------------------------------------------------------------------------------------
// JWTs

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubernetes_service_account_token_names_its_caller_and_the_policy_decides() {
    let issuer = Issuer::start().await;
    let key = SigningKey::rsa("sa-key-1");
    issuer.publish(&key);
    let files = Files::new();
    let policy = files.write(
        "policy.toml",
        r#"
        [[allow]]
        principal = "system:serviceaccount:billing:reporter"
        stop = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]
        read = ["arn:aws:sagemaker:us-east-1:123456789012:pipeline/billing-*"]
        "#,
    );
    let server = server(&issuer.entry(""), &files, |args| {
        args.security.policy_file = Some(policy);
        args.security.require_auth = true;
    })
    .await;
    let arn = server.execution("billing-daily").await;
    let reporter = key.sign(&issuer.service_account("billing", "reporter"));
    let indexer = key.sign(&issuer.service_account("search", "indexer"));
    let mut client = server.plaintext();

    let stopped = client
        .stop_execution(with_token(stop_request(&arn, "sa-stop"), &reporter))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stopped.outcome(), pb::StopOutcome::StopRequested);
    assert_eq!(
        count_where(
            &server.db,
            "stop_requests",
            "client_token = 'sa-stop' AND principal = 'system:serviceaccount:billing:reporter' \
             AND auth_method = 'jwt'",
        )
        .await,
        1
    );
    let denied = client
        .stop_execution(with_token(stop_request(&arn, "sa-denied"), &indexer))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(
        tonic_types::StatusExt::get_details_error_info(&denied)
            .unwrap()
            .metadata["principal"],
        "system:serviceaccount:search:indexer"
    );
    // Without a token: refused, as --require-auth says.
    assert_refused(
        client.stop_execution(stop_request(&arn, "none")).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_eq!(issuer.fetches(), 1, "the key set is cached");

    let metrics = server.app.scrape().await;
    let authentications = |method: &str, result: &str| {
        metrics.value(
            "pipeline_control_authentications_total",
            &[("method", method), ("result", result)],
        )
    };
    assert_eq!(authentications("jwt", "ok"), 2.0);
    assert_eq!(authentications("anonymous", "refused"), 1.0);
    assert_eq!(authentications("token", "ok"), 0.0);
    assert_eq!(
        metrics.value("pipeline_control_jwks_fetches_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_that_prove_nothing_are_unauthenticated_and_say_only_invalid_or_expired() {
    // The first issuer takes RS256 only, within an hour; the second takes ES256 too.
    let strict = Issuer::start().await;
    let rsa = SigningKey::rsa("rsa-1");
    let ec = SigningKey::ec("ec-1");
    strict.publish(&rsa);
    strict.publish(&ec);
    let lenient = Issuer::start().await;
    let lenient_ec = SigningKey::ec("ec-2");
    let lenient_rsa = SigningKey::rsa("rsa-2");
    lenient.publish(&lenient_ec);
    lenient.publish(&lenient_rsa);
    let identity = format!(
        "{}{}",
        strict.entry("algorithms = [\"RS256\"]\nmax_lifetime = \"1h\""),
        lenient.entry("algorithms = [\"RS256\", \"ES256\"]"),
    );
    let files = Files::new();
    let server = server(&identity, &files, |_| {}).await;
    let good = strict.service_account("billing", "reporter");
    let with = |changes: Value| {
        let mut claims = good.clone();
        for (name, value) in changes.as_object().unwrap() {
            claims[name] = value.clone();
        }
        claims
    };
    let now = now();

    // What works, so that each refusal below is the one change it makes.
    assert_authenticated(probe(&server, &rsa.sign(&good)).await);
    let lenient_claims = json!({"iss": lenient.url, "sub": "system:serviceaccount:ops:console",
        "aud": "pipeline-control", "exp": now + 600, "iat": now});
    assert_authenticated(probe(&server, &lenient_ec.sign(&lenient_claims)).await);

    let forger = SigningKey::rsa("rsa-1");
    let encode =
        |part: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(part.to_string());
    let unsigned = format!(
        "{}.{}.",
        encode(&json!({"alg": "none", "typ": "JWT", "kid": "rsa-1"})),
        encode(&good)
    );
    let hmac = |secret: &[u8]| {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("rsa-1".into());
        jsonwebtoken::encode(&header, &good, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    };
    let rsa_n = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(rsa.jwk["n"].as_str().unwrap())
        .unwrap();
    let invalid = [
        ("signed by another key", forger.sign(&good)),
        (
            "unknown issuer",
            rsa.sign(&with(json!({"iss": "https://other.example"}))),
        ),
        (
            "wrong audience",
            rsa.sign(&with(json!({"aud": ["someone-else"]}))),
        ),
        ("no audience", {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove("aud");
            rsa.sign(&claims)
        }),
        ("alg none", unsigned),
        (
            "HS256 with the public key's PEM as secret",
            hmac(rsa.public_pem.as_bytes()),
        ),
        (
            "HS256 with the public key's modulus as secret",
            hmac(&rsa_n),
        ),
        ("ES256, not among the issuer's algorithms", ec.sign(&good)),
        (
            "an ES256 token naming an RSA key",
            lenient_ec.sign_as("rsa-2", &lenient_claims),
        ),
        (
            "two hours' lifetime over a max_lifetime of one",
            rsa.sign(&with(json!({"exp": now + 3600, "iat": now - 3600}))),
        ),
        ("no kid", {
            let header = Header::new(Algorithm::RS256);
            jsonwebtoken::encode(&header, &good, &rsa.encoding).unwrap()
        }),
        ("a principal template's claim missing", {
            let mut claims = good.clone();
            claims.as_object_mut().unwrap().remove("sub");
            rsa.sign(&claims)
        }),
    ];
    let expired = [
        (
            "expired",
            rsa.sign(&with(json!({"exp": now - 120, "iat": now - 1800}))),
        ),
        ("not valid yet", rsa.sign(&with(json!({"nbf": now + 300})))),
        (
            "issued in the future",
            rsa.sign(&with(json!({"iat": now + 300, "exp": now + 1200}))),
        ),
    ];
    for (case, token) in &invalid {
        let status = probe(&server, token).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(reason_of(&status), "CREDENTIALS_INVALID", "{case}");
        assert_eq!(
            status.message(),
            "unauthenticated: the credentials are not valid",
            "{case}: the caller is not told which check failed"
        );
    }
    for (case, token) in &expired {
        let status = probe(&server, token).await.expect_err(case);
        assert_eq!(status.code(), Code::Unauthenticated, "{case}: {status:?}");
        assert_eq!(reason_of(&status), "CREDENTIALS_EXPIRED", "{case}");
    }
    // A bearer that is not a JWT is looked up among the static tokens: there are none.
    assert_refused(
        probe(&server, "0123456789abcdef").await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );

    let metrics = server.app.scrape().await;
    assert_eq!(
        metrics.value(
            "pipeline_control_authentications_total",
            &[("method", "jwt"), ("result", "refused")]
        ),
        (invalid.len() + expired.len()) as f64
    );
    for (reason, count) in [
        ("credentials_invalid", invalid.len()),
        ("credentials_expired", expired.len()),
        ("bad_token", 1),
    ] {
        assert_eq!(
            metrics.value(
                "pipeline_control_auth_refusals_total",
                &[("reason", reason)]
            ),
            count as f64,
            "{reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_fetched_at_once() {
    let issuer = Issuer::start().await;
    let first = SigningKey::rsa("2026-01");
    issuer.publish(&first);
    let files = Files::new();
    let server = server(&issuer.entry(""), &files, |_| {}).await;
    let claims = issuer.service_account("billing", "reporter");
    assert_authenticated(probe(&server, &first.sign(&claims)).await);
    assert_eq!(issuer.fetches(), 1);

    let second = SigningKey::ec("2026-02");
    issuer.publish(&second);
    assert_authenticated(probe(&server, &second.sign(&claims)).await);
    assert_eq!(issuer.fetches(), 2, "the new kid was fetched at once");
    assert_authenticated(probe(&server, &first.sign(&claims)).await);
    assert_eq!(issuer.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_verified_before_is_refused_once_its_key_leaves_the_set() {
    let issuer = Issuer::start().await;
    let first = SigningKey::rsa("2026-01");
    issuer.publish(&first);
    let files = Files::new();
    let server = server(&issuer.entry(""), &files, |_| {}).await;
    let claims = issuer.service_account("billing", "reporter");
    let token = first.sign(&claims);
    // Verified, then answered from what the service remembers of it.
    assert_authenticated(probe(&server, &token).await);
    assert_authenticated(probe(&server, &token).await);

    // The issuer rotates its key out (compromised, say); a token of the new key makes the
    // service fetch the set at once.
    let second = SigningKey::ec("2026-02");
    issuer.replace_with(&second);
    assert_authenticated(probe(&server, &second.sign(&claims)).await);
    assert_eq!(issuer.fetches(), 2);
    assert_refused(
        probe(&server, &token).await,
        Code::Unauthenticated,
        "CREDENTIALS_INVALID",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_costs_one_fetch_in_30_seconds() {
    let issuer = Issuer::start().await;
    let key = SigningKey::rsa("known");
    issuer.publish(&key);
    let files = Files::new();
    let server = server(&issuer.entry(""), &files, |_| {}).await;
    let claims = issuer.service_account("billing", "reporter");
    assert_authenticated(probe(&server, &key.sign(&claims)).await);
    assert_eq!(issuer.fetches(), 1);

    let started = std::time::Instant::now();
    let flood: Vec<_> = (0..50)
        .map(|i| {
            let token = key.sign_as(&format!("made-up-{i}"), &claims);
            let client = server.plaintext();
            tokio::spawn(async move {
                let mut client = client;
                client
                    .get_stop_request(with_token(
                        pb::GetStopRequestRequest {
                            client_request_token: "never-used".into(),
                        },
                        &token,
                    ))
                    .await
            })
        })
        .collect();
    for call in flood {
        assert_refused(
            call.await.unwrap(),
            Code::Unauthenticated,
            "CREDENTIALS_INVALID",
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(issuer.fetches(), 2, "50 unknown kids, one fetch");
    assert_authenticated(probe(&server, &key.sign(&claims)).await);
    assert_eq!(issuer.fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_issuer_is_down_its_last_good_keys_serve() {
    let mut issuer = Issuer::start().await;
    let key = SigningKey::ec("ec-1");
    issuer.publish(&key);
    let files = Files::new();
    let server = server(&issuer.entry(""), &files, |_| {}).await;
    let claims = issuer.service_account("billing", "reporter");
    assert_authenticated(probe(&server, &key.sign(&claims)).await);

    issuer.stop().await;
    assert_authenticated(probe(&server, &key.sign(&claims)).await);
    // A key it cannot fetch: the caller's credentials are invalid, not the server's fault.
    assert_refused(
        probe(&server, &key.sign_as("rotated-while-down", &claims)).await,
        Code::Unauthenticated,
        "CREDENTIALS_INVALID",
    );
    assert_authenticated(probe(&server, &key.sign(&claims)).await);
    let metrics = server.app.scrape().await;
    for (result, count) in [("ok", 1.0), ("error", 1.0)] {
        assert_eq!(
            metrics.value("pipeline_control_jwks_fetches_total", &[("result", result)]),
            count,
            "{result}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A mesh in front

/// StopExecution of `arn` with the mesh header `name: value` (if any); the principal recorded.
async fn stop_through_mesh(
    server: &Secured,
    arn: &str,
    token: &str,
    header: Option<(&'static str, &str)>,
) -> Result<String, tonic::Status> {
    let mut request = Request::new(stop_request(arn, token));
    if let Some((name, value)) = header {
        request.metadata_mut().insert(name, value.parse().unwrap());
    }
    server.plaintext().stop_execution(request).await?;
    let record = server
        .plaintext()
        .get_stop_request({
            let mut request = Request::new(pb::GetStopRequestRequest {
                client_request_token: token.into(),
            });
            if let Some((name, value)) = header {
                request.metadata_mut().insert(name, value.parse().unwrap());
            }
            request
        })
        .await?
        .into_inner();
    Ok(record.principal)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_caller_in_xfcc() {
    let files = Files::new();
    let server = server(
        "[mesh]\nheader = \"x-forwarded-client-cert\"\n",
        &files,
        |_| {},
    )
    .await;
    let arn = server.execution("billing-mesh").await;
    // Two hops: the element the proxy in front added is the last.
    let xfcc = concat!(
        "By=spiffe://cluster.local/ns/edge/sa/gateway;Hash=aa;URI=spiffe://cluster.local/ns/web/sa/frontend,",
        "By=spiffe://cluster.local/ns/pc/sa/pipeline-control;Hash=bb;",
        "Subject=\"CN=reporter,O=billing\";URI=spiffe://cluster.local/ns/billing/sa/reporter"
    );
    assert_eq!(
        stop_through_mesh(
            &server,
            &arn,
            "xfcc",
            Some(("x-forwarded-client-cert", xfcc))
        )
        .await
        .unwrap(),
        "spiffe://cluster.local/ns/billing/sa/reporter"
    );
    // A proxy's element without a URI names nobody.
    assert_refused(
        stop_through_mesh(
            &server,
            &arn,
            "no-uri",
            Some(("x-forwarded-client-cert", "Hash=cc;DNS=reporter.billing")),
        )
        .await,
        Code::Unauthenticated,
        "CREDENTIALS_INVALID",
    );
    // Without the header (and without --require-auth) the caller is anonymous.
    assert_eq!(
        stop_through_mesh(&server, &arn, "direct", None)
            .await
            .unwrap(),
        "anonymous"
    );
    // How each was proven is recorded with it.
    for (token, method) in [("xfcc", "mesh"), ("direct", "anonymous")] {
        assert_eq!(
            count_where(
                &server.db,
                "stop_requests",
                &format!("client_token = '{token}' AND auth_method = '{method}'"),
            )
            .await,
            1,
            "{token}"
        );
    }
    let metrics = server.app.scrape().await;
    for (method, result, count) in [
        ("mesh", "ok", 2.0),
        ("mesh", "refused", 1.0),
        ("anonymous", "ok", 2.0),
    ] {
        assert_eq!(
            metrics.value(
                "pipeline_control_authentications_total",
                &[("method", method), ("result", result)]
            ),
            count,
            "{method} {result}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linkerd_names_the_caller_in_l5d_client_id() {
    let files = Files::new();
    let server = server("[mesh]\nheader = \"l5d-client-id\"\n", &files, |args| {
        args.security.require_auth = true;
    })
    .await;
    let arn = server.execution("billing-linkerd").await;
    let identity = "reporter.billing.serviceaccount.identity.linkerd.cluster.local";
    assert_eq!(
        stop_through_mesh(&server, &arn, "l5d", Some(("l5d-client-id", identity)))
            .await
            .unwrap(),
        identity
    );
    assert_refused(
        stop_through_mesh(&server, &arn, "direct", None).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_header_from_a_peer_that_is_not_a_trusted_proxy_is_ignored() {
    // The test connects from 127.0.0.1, outside the trusted network.
    let identity =
        "[mesh]\nheader = \"x-forwarded-client-cert\"\ntrusted_proxies = [\"10.255.255.0/24\"]\n";
    let xfcc = (
        "x-forwarded-client-cert",
        "Hash=aa;URI=spiffe://cluster.local/ns/billing/sa/reporter",
    );
    let files = Files::new();
    let open = server(identity, &files, |_| {}).await;
    let arn = open.execution("billing-untrusted").await;
    for token in ["forged-1", "forged-2"] {
        assert_eq!(
            stop_through_mesh(&open, &arn, token, Some(xfcc))
                .await
                .unwrap(),
            "anonymous",
            "the header is ignored"
        );
    }
    let files = Files::new();
    let strict = server(identity, &files, |args| args.security.require_auth = true).await;
    let arn = strict.execution("billing-untrusted").await;
    assert_refused(
        stop_through_mesh(&strict, &arn, "forged", Some(xfcc)).await,
        Code::Unauthenticated,
        "UNAUTHENTICATED",
    );
    assert_eq!(count_where(&strict.db, "stop_requests", "true").await, 0);
}

// ---------------------------------------------------------------------------------------------
// The identity file at start and on SIGHUP

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_identity_file_refuses_the_start_in_one_line_naming_the_entry() {
    let db = TestDb::new(Backend::Sqlite).await;
    let files = Files::new();
    let issuer = "issuer = \"https://oidc.example\"\n";
    let audiences = "audiences = [\"pipeline-control\"]\n";
    for (text, expected) in [
        (
            format!("[[jwt]]\n{issuer}audiences = []\n"),
            "jwt[1] (issuer \"https://oidc.example\"): audiences must not be empty",
        ),
        (
            format!(
                "[[jwt]]\n{issuer}{audiences}[[jwt]]\nissuer = \"http://oidc.example\"\n{audiences}"
            ),
            "jwt[2] (issuer \"http://oidc.example\"): issuer \"http://oidc.example\" must be https",
        ),
        (
            format!("[[jwt]]\n{issuer}{audiences}algorithms = [\"HS256\"]\n"),
            "jwt[1] (issuer \"https://oidc.example\"): algorithm \"HS256\" is never accepted",
        ),
        (
            format!("[[jwt]]\n{issuer}{audiences}algorithms = [\"none\"]\n"),
            "jwt[1] (issuer \"https://oidc.example\"): algorithm \"none\" is never accepted",
        ),
        (
            format!("[[jwt]]\n{issuer}{audiences}principal = \"reporter\"\n"),
            "jwt[1] (issuer \"https://oidc.example\"): principal \"reporter\" names no claim",
        ),
        (
            format!("[[jwt]]\n{issuer}{audiences}[[jwt]]\n{issuer}{audiences}"),
            "jwt[2] (issuer \"https://oidc.example\"): the same issuer as jwt[1]",
        ),
        (
            format!("[[jwt]]\n{issuer}{audiences}jwks = \"https://oidc.example/keys\"\n"),
            "line 4: unknown field `jwks`",
        ),
        (
            "[iam]\naccounts = [\"111111111111\"]\n".to_string(),
            "iam: server_id is required",
        ),
        (
            "[mesh]\nheader = \"x-user\"\n".to_string(),
            "mesh: header \"x-user\"",
        ),
    ] {
        let path = files.write("identity.toml", &text);
        let mut args = test_args(&db);
        args.security.identity_file = Some(path.clone());
        let error = Application::build(args).await.expect_err(&text);
        let line = format!("{error:#}");
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains(&path.display().to_string()), "{line}");
        assert!(line.contains(expected), "{text:?}: {line}");
    }

    // --require-auth takes JWT issuers, IAM or a mesh as authentication.
    for (text, starts) in [
        (format!("[[jwt]]\n{issuer}{audiences}"), true),
        ("[mesh]\nheader = \"l5d-client-id\"\n".to_string(), true),
        (
            "[iam]\nserver_id = \"pipeline-control\"\n".to_string(),
            true,
        ),
    ] {
        let path = files.write("identity.toml", &text);
        let mut args = test_args(&db);
        args.security.identity_file = Some(path);
        args.security.require_auth = true;
        let built = Application::build(args).await;
        assert_eq!(built.is_ok(), starts, "{text:?}: {:?}", built.err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_identity_file_on_sighup_keeps_the_previous_one() {
    let issuer = Issuer::start().await;
    let key = SigningKey::rsa("k1");
    issuer.publish(&key);
    let files = Files::new();
    let identity = files.write("identity.toml", &issuer.entry(""));
    let tokens = files.write("tokens.toml", &token_file(&[("ops", "ops-secret")]));
    let server = Secured::start(Backend::Postgres, |args| {
        args.security.identity_file = Some(identity.clone());
        args.security.auth_tokens_file = Some(tokens.clone());
    })
    .await;
    let jwt = key.sign(&issuer.service_account("billing", "reporter"));
    assert_authenticated(probe(&server, &jwt).await);

    let hangup = || {
        // To this process: every server in it reloads its own files.
        let sent = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    };
    let until = async |what: &str, bearer: &str, authenticated: bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let outcome = probe(&server, bearer).await;
            let now_authenticated =
                matches!(&outcome, Err(status) if status.code() == Code::NotFound);
            if now_authenticated == authenticated {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what}: {outcome:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // A bad identity file, with a new token beside it: once the token works, the reload has
    // happened, and the JWT still works.
    std::fs::write(
        &identity,
        format!("[[jwt]]\nissuer = \"{}\"\naudiences = []\n", issuer.url),
    )
    .unwrap();
    std::fs::write(
        &tokens,
        token_file(&[("ops", "ops-secret"), ("probe", "probe-secret")]),
    )
    .unwrap();
    hangup();
    until("the token file is reloaded", "probe-secret", true).await;
    assert_authenticated(probe(&server, &jwt).await);

    // A good one that wants another audience: the token is refused from then on.
    std::fs::write(
        &identity,
        format!(
            "[[jwt]]\nissuer = \"{}\"\naudiences = [\"elsewhere\"]\n",
            issuer.url
        ),
    )
    .unwrap();
    hangup();
    until("the identity file is reloaded", &jwt, false).await;
    assert_refused(
        probe(&server, &jwt).await,
        Code::Unauthenticated,
        "CREDENTIALS_INVALID",
    );
    assert_eq!(
        issuer.fetches(),
        1,
        "a reload keeps an unchanged issuer's keys"
    );
}
