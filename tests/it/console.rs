//! The web console over HTTP: its pages, their headers and escaping, same-origin POSTs, a stop
//! posted twice, identity from the proxy in front and the policy, and the live part (SSE)
//! sharing the poller of a watch stream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{net::SocketAddr, time::Duration};

use pipeline_control::pb;
use reqwest::{StatusCode, header::HeaderMap};
use serde_json::json;

use crate::common::{Backend, Stack, until_scraped};
use crate::identity::{Issuer, SigningKey};

const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'";

/// A stack whose console listens on a free port; `tweak` adjusts the rest.
async fn stack(
    backend: Backend,
    tweak: impl FnOnce(&mut pipeline_control::config::ServeArgs),
) -> Stack {
    Stack::start(backend, 1000.0, |args| {
        args.console_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        args.poll_interval = Duration::from_millis(50);
        args.poller_linger = Duration::from_millis(500);
        tweak(args);
    })
    .await
}

fn base(stack: &Stack) -> String {
    format!(
        "http://{}",
        stack.app.console.expect("the console is served")
    )
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A page: its status, headers and text.
async fn get(
    stack: &Stack,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut request = client().get(format!("{}{path}", base(stack)));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    (status, headers, response.text().await.unwrap())
}

/// A form posted as a page of the console posts it (`Sec-Fetch-Site: same-origin`), with
/// `headers` more.
async fn post(
    stack: &Stack,
    path: &str,
    form: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = client()
        .post(format!("{}{path}", base(stack)))
        .header("sec-fetch-site", "same-origin")
        .form(form);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// The value of the form field `name` on a page.
fn field(page: &str, name: &str) -> String {
    let pattern = regex::Regex::new(&format!(r#"name="{name}" value="([^"]*)""#)).unwrap();
    pattern
        .captures(page)
        .unwrap_or_else(|| panic!("no field {name} in:\n{page}"))[1]
        .to_string()
}

fn encoded(arn: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("arn", arn)
        .finish()
}

#[tokio::test]
async fn pages_render_with_a_strict_content_security_policy_and_no_inline_script() {
    let stack = stack(Backend::Sqlite, |_| {}).await;
    let arn = stack.callback_execution().await;
    let pipeline = arn.split("/execution/").next().unwrap().to_string();
    for path in [
        "/".to_string(),
        "/history".to_string(),
        format!("/executions?{}", encoded(&arn)),
        format!("/pipelines?{}", encoded(&pipeline)),
    ] {
        let (status, headers, page) = get(&stack, &path, &[]).await;
        assert_eq!(status, StatusCode::OK, "{path}: {page}");
        assert_eq!(headers["content-security-policy"], CSP, "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["referrer-policy"], "same-origin");
        assert!(page.starts_with("<!DOCTYPE html>"), "{path}");
        // The only script is the console's own file.
        assert_eq!(page.matches("<script").count(), 1, "{path}");
        assert!(page.contains(r#"<script src="/assets/console.js" defer></script>"#));
        assert!(
            !page.contains(" style=") && !page.contains("<style"),
            "{path}"
        );
    }
    let (_, _, page) = get(&stack, &format!("/executions?{}", encoded(&arn)), &[]).await;
    assert!(
        page.contains("Approve") && page.contains("Executing"),
        "{page}"
    );
    assert!(page.contains(r#"id="stop-form""#), "{page}");
    assert!(page.contains(&format!(
        "data-live=\"/executions/events?{}\"",
        encoded(&arn).replace('&', "&amp;")
    )));
    let (_, _, page) = get(&stack, &format!("/pipelines?{}", encoded(&pipeline)), &[]).await;
    assert!(
        page.contains(&arn),
        "the pipeline lists its Executing execution: {page}"
    );
    // A pipeline ARN pasted into the field goes to its page.
    let (status, headers, _) =
        get(&stack, &format!("/executions?{}", encoded(&pipeline)), &[]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/pipelines?arn=")
    );
    let (status, headers, script) = get(&stack, "/assets/console.js", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    assert!(script.contains("EventSource"));
    let (status, _, _) = get(&stack, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&stack, "/nowhere", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Text from a caller and from SageMaker, as the console shows it: a stop recorded with
/// `reason`; the execution's failure reason and its one step's name and failure reason as
/// SageMaker gives them (no poller has read the execution yet: the page's own read gets these).
/// Returns the execution's page and the history page.
async fn shown(reason: &str, failure: &str, step: &str, step_failure: &str) -> (String, String) {
    let stack = stack(Backend::Sqlite, |_| {}).await;
    let arn = stack.callback_execution().await;
    stack
        .client
        .clone()
        .stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.clone(),
            reason: reason.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    stack
        .admin
        .set_fault(
            "DescribePipelineExecution",
            json!({"replace": {"FailureReason": failure}}),
        )
        .await;
    stack
        .admin
        .set_fault(
            "ListPipelineExecutionSteps",
            json!({"replace": {"PipelineExecutionSteps": [{
                "StepName": step,
                "StepStatus": "Failed",
                "FailureReason": step_failure,
                "AttemptCount": 1,
                "Metadata": {}
            }]}}),
        )
        .await;
    let (status, _, page) = get(&stack, &format!("/executions?{}", encoded(&arn)), &[]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let (_, _, history) = get(&stack, "/history", &[]).await;
    (page, history)
}

#[tokio::test]
async fn control_bidi_and_invisible_characters_from_sagemaker_or_a_caller_are_shown_escaped() {
    let (page, history) = shown(
        "INC-1\nforged\rrow\u{202e}gnp.exe\u{200b}end",
        "\u{1b}]0;pwned\u{7}\u{1b}[2Jcleared",
        "Train\u{2066}ing",
        "oom\u{9b}31m\u{feff}",
    )
    .await;
    for shown in [
        r"\u{1b}]0;pwned\u{7}\u{1b}[2Jcleared",
        r"Train\u{2066}ing",
        r"oom\u{9b}31m\u{feff}",
    ] {
        assert!(page.contains(shown), "{shown} in {page}");
    }
    assert!(
        history.contains(r"INC-1\nforged\rrow\u{202e}gnp.exe\u{200b}end"),
        "{history}"
    );
    for text in [&page, &history] {
        assert!(
            !text.contains([
                '\u{1b}', '\u{7}', '\u{9b}', '\u{feff}', '\u{2066}', '\u{202e}', '\u{200b}', '\r'
            ]),
            "{text:?}"
        );
    }
}

#[tokio::test]
async fn markup_from_sagemaker_or_a_caller_is_shown_as_text() {
    let (page, history) = shown(
        "<i>maintenance</i>",
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(2)>",
        "<b>bold</b> & \"quoted\"",
    )
    .await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(
        page.contains("&lt;img src=x onerror=alert(2)&gt;"),
        "{page}"
    );
    assert!(
        page.contains("&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;"),
        "{page}"
    );
    assert!(!page.contains("<img") && !page.contains("<b>") && !page.contains("<script>"));
    assert!(
        history.contains("&lt;i&gt;maintenance&lt;/i&gt;"),
        "{history}"
    );
    assert!(!history.contains("<i>"));
}

#[tokio::test]
async fn a_post_from_another_site_or_from_no_page_is_refused_and_stops_nothing() {
    let stack = stack(Backend::Sqlite, |_| {}).await;
    let arn = stack.callback_execution().await;
    let form = [
        ("arn", arn.as_str()),
        ("reason", "csrf"),
        ("client_token", "cross-site-1"),
    ];
    let url = format!("{}/executions/stop", base(&stack));
    let cases: [&[(&str, &str)]; 4] = [
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
        &[("origin", "http://evil.example")],
        &[],
    ];
    for headers in cases {
        let mut request = client().post(&url).form(&form);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{headers:?}");
        let page = response.text().await.unwrap();
        assert!(
            page.contains("did not come from a page of this console"),
            "{page}"
        );
    }
    // Without Sec-Fetch-Site, an Origin naming this console passes.
    let host = stack.app.console.unwrap().to_string();
    let response = client()
        .post(&url)
        .header("origin", format!("http://{host}"))
        .form(&[("arn", arn.as_str()), ("reason", ""), ("client_token", "t")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::BAD_REQUEST,
        "a reason is required"
    );
    assert!(stack.admin.stop_tokens(&arn).await.is_empty());
    assert_eq!(stack.stored_requests().await, 0);
}

async fn a_stop_posted_twice_stops_once(backend: Backend) {
    let stack = stack(backend, |_| {}).await;
    let arn = stack.callback_execution().await;
    let (_, _, page) = get(&stack, &format!("/executions?{}", encoded(&arn)), &[]).await;
    let token = field(&page, "client_token");
    assert!(page.contains(&format!(
        r#"<code class="token" id="client-token">{token}</code>"#
    )));
    let form = [
        ("arn", arn.as_str()),
        ("reason", "on call: runaway"),
        ("client_token", token.as_str()),
    ];
    // The confirmation repeats what will be stopped and carries the same token.
    let (status, confirmation) = post(&stack, "/executions/confirm", &form, &[]).await;
    assert_eq!(status, StatusCode::OK, "{confirmation}");
    assert!(confirmation.contains(&arn) && confirmation.contains("on call: runaway"));
    assert_eq!(field(&confirmation, "client_token"), token);
    assert!(
        stack.admin.stop_tokens(&arn).await.is_empty(),
        "confirming stops nothing"
    );
    // A double click, then a reload.
    let (first, second) = tokio::join!(
        post(&stack, "/executions/stop", &form, &[]),
        post(&stack, "/executions/stop", &form, &[]),
    );
    for (status, page) in [&first, &second] {
        assert_eq!(*status, StatusCode::OK, "{page}");
        assert!(page.contains("STOP_REQUESTED"), "{page}");
        assert!(page.contains(&token));
    }
    let (status, reload) = post(&stack, "/executions/stop", &form, &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        reload.contains("already made with this client token"),
        "{reload}"
    );
    assert_eq!(
        stack.admin.stop_tokens(&arn).await.len(),
        1,
        "one stop upstream"
    );
    assert_eq!(stack.stored_requests().await, 1, "one record");
    // The same token with another reason is refused, as StopExecution refuses it.
    let (status, page) = post(
        &stack,
        "/executions/stop",
        &[
            ("arn", arn.as_str()),
            ("reason", "another"),
            ("client_token", token.as_str()),
        ],
        &[],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{page}");
    assert!(page.contains("IDEMPOTENCY_KEY_REUSED"));
    // The stop is being stopped now, with what holds it.
    let (_, _, now) = get(&stack, "/", &[]).await;
    assert!(now.contains(&arn), "{now}");
}

on_both_databases!(a_stop_posted_twice_stops_once);

/// An identity file and a policy file for a server.
fn files(
    identity: &str,
    policy: Option<&str>,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Option<std::path::PathBuf>,
) {
    let dir = tempfile::tempdir().unwrap();
    let identity_path = dir.path().join("identity.toml");
    std::fs::write(&identity_path, identity).unwrap();
    let policy_path = policy.map(|policy| {
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, policy).unwrap();
        path
    });
    (dir, identity_path, policy_path)
}

#[tokio::test]
async fn a_person_who_may_only_read_sees_no_stop_button_and_a_posted_stop_is_refused() {
    let (_dir, identity, policy) = files(
        "[console]\nuser_header = \"x-forwarded-user\"\n",
        Some(
            "[[allow]]\nprincipal = \"reader@example.com\"\nread = [\"*\"]\n\n\
             [[allow]]\nprincipal = \"oncall@example.com\"\nread = [\"*\"]\nstop = [\"*\"]\n",
        ),
    );
    let stack = stack(Backend::Sqlite, |args| {
        args.security.identity_file = Some(identity);
        args.security.policy_file = policy;
    })
    .await;
    let arn = stack.callback_execution().await;
    let path = format!("/executions?{}", encoded(&arn));
    let reader = [("x-forwarded-user", "reader@example.com")];
    let (status, _, page) = get(&stack, &path, &reader).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("reader@example.com"));
    assert!(
        !page.contains("stop-form") && !page.contains("/executions/confirm"),
        "{page}"
    );
    assert!(page.contains("may read this execution but not stop it"));
    let form = [
        ("arn", arn.as_str()),
        ("reason", "I should not"),
        ("client_token", "reader-token-1"),
    ];
    for path in ["/executions/confirm", "/executions/stop"] {
        let (status, page) = post(&stack, path, &form, &reader).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
        assert!(
            page.contains("reader@example.com may not stop this pipeline execution"),
            "{page}"
        );
    }
    assert!(stack.admin.stop_tokens(&arn).await.is_empty());
    assert_eq!(stack.stored_requests().await, 0);
    // Someone the policy lets stop has the button.
    let (_, _, page) = get(&stack, &path, &[("x-forwarded-user", "oncall@example.com")]).await;
    assert!(page.contains(r#"id="stop-form""#), "{page}");
    // Nobody named: the policy allows anonymous nothing.
    let (status, _, _) = get(&stack, &path, &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_person_is_named_by_a_jwt_header_and_a_user_header_counts_only_from_a_trusted_proxy() {
    let issuer = Issuer::start().await;
    let key = SigningKey::rsa("k1");
    issuer.publish(&key);
    let (_dir, identity, _) = files(
        &format!(
            "{}\n[console]\njwt_header = \"x-forwarded-access-token\"\nuser_header = \"x-forwarded-user\"\ntrusted_proxies = [\"10.0.0.0/8\"]\n",
            issuer.entry("")
        ),
        None,
    );
    let stack = stack(Backend::Sqlite, |args| {
        args.security.identity_file = Some(identity);
    })
    .await;
    let jwt = key.sign(&issuer.service_account("ops", "oncall"));
    let (status, _, page) = get(&stack, "/", &[("x-forwarded-access-token", &jwt)]).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("system:serviceaccount:ops:oncall"), "{page}");
    let bearer = format!("Bearer {jwt}");
    let (status, _, _) = get(&stack, "/", &[("x-forwarded-access-token", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);
    // Not a valid token, no credentials, and a user header from a peer that is not a trusted
    // proxy (this test's loopback): all unauthenticated, since JWT issuers are configured.
    for headers in [
        &[("x-forwarded-access-token", "not-a-jwt")][..],
        &[("x-forwarded-access-token", "a.b.c")][..],
        &[][..],
        &[("x-forwarded-user", "mallory@example.com")][..],
    ] {
        let (status, _, page) = get(&stack, "/", headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{headers:?}: {page}");
        assert!(!page.contains("mallory"));
    }
}

/// Reads a Server-Sent Events response until an event whose text holds every one of `wanted`;
/// returns the text read so far.
async fn until_event(stream: &mut reqwest::Response, seen: &mut String, wanted: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(at) = seen.find("\n\n") {
            let event: String = seen.drain(..at + 2).collect();
            if wanted.iter().all(|w| event.contains(w)) {
                return;
            }
            continue;
        }
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no event with {wanted:?} in time"))
            .unwrap()
            .expect("the stream goes on");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn the_live_part_shares_the_watch_poller_and_streams_until_stopped() {
    let stack = stack(Backend::Sqlite, |_| {}).await;
    let arn = stack.callback_execution().await;
    // A watch stream and a page's live part on the same execution: one poller.
    let mut watch = stack
        .client
        .clone()
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let response = client()
        .get(format!(
            "{}/executions/events?{}",
            base(&stack),
            encoded(&arn)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = response;
    let mut seen = String::new();
    until_event(
        &mut events,
        &mut seen,
        &["event: snapshot", "Executing", "Approve"],
    )
    .await;
    until_scraped(
        &stack.app,
        Duration::from_secs(10),
        "two watch streams, one poller",
        |m| {
            m.value("pipeline_control_watch_streams", &[]) == 2.0
                && m.value("pipeline_control_pollers", &[]) == 1.0
        },
    )
    .await;

    stack.stop(&arn).await;
    until_event(
        &mut events,
        &mut seen,
        &[
            "event: snapshot",
            "Stopping",
            "What keeps it Stopping",
            "callback-token",
        ],
    )
    .await;
    let steps = crate::common::all_steps(&stack.sagemaker, &arn).await;
    let approve = steps
        .iter()
        .find(|s| s.step_name() == Some("Approve"))
        .unwrap();
    stack
        .sagemaker
        .send_pipeline_execution_step_success()
        .callback_token(crate::common::callback_token(approve))
        .send()
        .await
        .unwrap();
    until_event(
        &mut events,
        &mut seen,
        &["event: snapshot", "status-stopped"],
    )
    .await;
    until_event(&mut events, &mut seen, &["event: end"]).await;
}

#[tokio::test]
async fn force_from_the_page_releases_the_callback_only_for_those_the_policy_lets_force() {
    let (_dir, identity, policy) = files(
        "[console]\nuser_header = \"x-forwarded-user\"\n",
        Some(
            "[[allow]]\nprincipal = \"oncall@example.com\"\nread = [\"*\"]\nstop = [\"*\"]\n\n\
             [[allow]]\nprincipal = \"lead@example.com\"\nread = [\"*\"]\nstop = [\"*\"]\nforce = [\"*\"]\n",
        ),
    );
    let stack = stack(Backend::Sqlite, |args| {
        args.security.identity_file = Some(identity);
        args.security.policy_file = policy;
        args.completer_interval = Duration::from_millis(100);
    })
    .await;
    let arn = stack.callback_execution().await;
    let path = format!("/executions?{}", encoded(&arn));
    let oncall = [("x-forwarded-user", "oncall@example.com")];
    let lead = [("x-forwarded-user", "lead@example.com")];
    let (_, _, page) = get(&stack, &path, &oncall).await;
    assert!(
        page.contains(r#"id="stop-form""#) && !page.contains(r#"name="force""#),
        "{page}"
    );
    let form = |token| {
        [
            ("arn", arn.as_str()),
            ("reason", "release it"),
            ("client_token", token),
            ("force", "on"),
        ]
    };
    let refused = form("oncall-force-1");
    let (status, page) = post(&stack, "/executions/stop", &refused, &oncall).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    assert!(page.contains("oncall@example.com may not force"), "{page}");
    assert!(stack.admin.stop_tokens(&arn).await.is_empty());

    let (_, _, page) = get(&stack, &path, &lead).await;
    assert!(page.contains(r#"name="force""#), "{page}");
    let forced = form("lead-force-1");
    let (status, page) = post(&stack, "/executions/stop", &forced, &lead).await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Forced at"), "{page}");
    // The forcer answers the Callback step: the execution reaches Stopped.
    crate::common::wait_for_status(&stack.sagemaker, &arn, "Stopped").await;
}

#[tokio::test]
async fn a_page_open_beside_a_watch_reads_nothing_more_from_sagemaker() {
    // Pollers read once, then not for an hour: any read after the first is the page's own.
    let stack = stack(Backend::Sqlite, |args| {
        args.poll_interval = Duration::from_secs(3600);
        args.poller_linger = Duration::from_secs(3600);
    })
    .await;
    let arn = stack.callback_execution().await;
    let reads = || async {
        stack.admin.calls("DescribePipelineExecution").await
            + stack.admin.calls("ListPipelineExecutionSteps").await
    };
    let before = reads().await;
    let mut watch = stack
        .client
        .clone()
        .watch_execution(pb::WatchExecutionRequest {
            pipeline_execution_arn: arn.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let with_watch = reads().await;
    assert!(with_watch > before, "the watch's poller read the execution");
    for _ in 0..3 {
        let (status, _, page) = get(&stack, &format!("/executions?{}", encoded(&arn)), &[]).await;
        assert_eq!(status, StatusCode::OK);
        assert!(page.contains("Approve"));
        let mut events = client()
            .get(format!(
                "{}/executions/events?{}",
                base(&stack),
                encoded(&arn)
            ))
            .send()
            .await
            .unwrap();
        let mut seen = String::new();
        until_event(&mut events, &mut seen, &["event: snapshot", "Approve"]).await;
    }
    assert_eq!(
        reads().await,
        with_watch,
        "pages and their live parts read nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn being_stopped_now_says_what_holds_an_execution_nobody_watches() {
    let stack = stack(Backend::Sqlite, |_| {}).await;
    let arn = stack.callback_execution().await;
    // Stopped over gRPC: no page and no watch has a poller on it.
    stack.stop(&arn).await;
    let (status, _, now) = get(&stack, "/", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(now.contains(&arn), "{now}");
    assert!(now.contains("Stopping"), "{now}");
    assert!(
        now.contains("Approve (Callback)"),
        "what holds it is read, shared as GetExecution's reads are: {now}"
    );
}
