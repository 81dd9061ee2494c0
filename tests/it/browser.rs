//! The web console in a real browser: headless Chromium driven through chromedriver
//! (WebDriver, plain HTTP and JSON). A stop made from the page, seen reaching Stopped live when
//! the callback is answered; a batch's dry run then its confirmation; a person who may only
//! read; a POST from another site. Chromium missing is a failure that says how to install it,
//! never a skip.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::Semaphore;

use crate::common::{Backend, Stack, create_pipeline, start_execution, wait_for_status};

/// Browsers running at once (each is a few processes; the machine may be small).
static BROWSERS: Semaphore = Semaphore::const_new(2);

/// The WebDriver name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a page may take to show what a test waits for.
const WAIT: Duration = Duration::from_secs(30);

fn executable(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: the console's browser tests need Debian's chromium and chromium-driver \
         (scripts/test installs them; or `apt-get install chromium chromium-driver`, or set \
         {variable})",
        path.display()
    );
    path
}

/// A headless Chromium with a fresh profile, driven through its own chromedriver.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
    _permit: tokio::sync::SemaphorePermit<'static>,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromium outlives a killed chromedriver: the session is ended first (Drop cannot
        // await, so by hand, in plain HTTP/1.1), which quits Chromium, then the driver.
        use std::io::{Read as _, Write as _};
        let address = self.url.trim_start_matches("http://");
        if let Ok(mut stream) = std::net::TcpStream::connect(address) {
            let _ = stream.set_read_timeout(Some(WAIT));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            // The answer comes once Chromium has quit; its first bytes are enough.
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read(&mut [0; 1024]);
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Self {
        let chromium = executable("CHROMIUM", "/usr/bin/chromium");
        let chromedriver = executable("CHROMEDRIVER", "/usr/bin/chromedriver");
        let permit = BROWSERS.acquire().await.unwrap();
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ready = http.get(format!("{url}/status")).send().await;
            if let Ok(response) = ready
                && let Ok(status) = response.json::<Value>().await
                && status["value"]["ready"] == true
            {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let created: Value = http
            .post(format!("{url}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome",
                "goog:chromeOptions": {"binary": chromium, "args": args}
            }}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {created}"))
            .to_string();
        Self {
            driver,
            url,
            session,
            http,
            _profile: profile,
            _permit: permit,
        }
    }

    /// A WebDriver command of this session; its `value`.
    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.url, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let answer: Value = request.send().await.unwrap().json().await.unwrap();
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {path}: {answer}");
        }
        answer["value"].clone()
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, body).await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// The elements `css` selects now.
    async fn all(&self, css: &str) -> Vec<String> {
        let found = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|element| element[ELEMENT].as_str().unwrap().to_string())
            .collect()
    }

    /// The element `css` selects, waiting for it.
    async fn find(&self, css: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(element) = self.all(css).await.into_iter().next() {
                return element;
            }
            if tokio::time::Instant::now() >= deadline {
                let page = Box::pin(self.text("body")).await;
                panic!("no {css} on the page:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn type_in(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    /// The text of the element `css` selects, or `""` when there is none (yet).
    async fn text(&self, css: &str) -> String {
        let Some(element) = self.all(css).await.into_iter().next() else {
            return String::new();
        };
        let url = format!(
            "{}/session/{}/element/{element}/text",
            self.url, self.session
        );
        // The element may go between finding and reading it (a live part is swapped).
        let answer: Value = self
            .http
            .get(url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        answer["value"].as_str().unwrap_or_default().to_string()
    }

    /// Waits until the text of `css` holds `wanted`.
    async fn wait_text(&self, css: &str, wanted: &str) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.text(css).await;
            if text.contains(wanted) {
                return text;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{css} never showed {wanted:?}; it shows {text:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", json!({"script": script, "args": []}))
            .await
    }

    /// The page as a PNG.
    async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let encoded = self
            .command(reqwest::Method::GET, "/screenshot", Value::Null)
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }

    /// Every request of this browser carries `headers` from now on (as a proxy in front
    /// would add them), through the DevTools protocol.
    async fn with_headers(&self, headers: Value) {
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Network.enable", "params": {}}),
        )
        .await;
        self.post(
            "/goog/cdp/execute",
            json!({"cmd": "Network.setExtraHTTPHeaders", "params": {"headers": headers}}),
        )
        .await;
    }
}

async fn stack(
    backend: Backend,
    tweak: impl FnOnce(&mut pipeline_control::config::ServeArgs),
) -> Stack {
    Stack::start(backend, 1000.0, |args| {
        args.console_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        args.poll_interval = Duration::from_millis(100);
        args.poller_linger = Duration::from_secs(2);
        tweak(args);
    })
    .await
}

fn console(stack: &Stack) -> String {
    format!("http://{}", stack.app.console.unwrap())
}

fn query(arn: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("arn", arn)
        .finish()
}

/// Where a screenshot goes: the test's temporary folder, and the folder named by
/// `PIPELINE_CONTROL_SCREENSHOTS` when set (README's picture is refreshed that way).
fn keep_screenshot(name: &str, png: &[u8]) {
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    std::fs::write(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name), png).unwrap();
    if let Some(folder) = std::env::var_os("PIPELINE_CONTROL_SCREENSHOTS") {
        std::fs::write(PathBuf::from(folder).join(name), png).unwrap();
    }
}

async fn a_stop_from_the_page_reaches_stopped_live_when_the_callback_is_answered(backend: Backend) {
    let stack = stack(backend, |_| {}).await;
    let arn = stack.callback_execution().await;
    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/executions?{}", console(&stack), query(&arn)))
        .await;
    browser.wait_text("#live-state", "live").await;
    browser.type_in("#reason", "on call: <runaway> job").await;
    let token = browser.text("#client-token").await;
    assert!(!token.is_empty());
    browser.click("#stop-form button[type=submit]").await;
    browser.wait_text("h1", "Stop this execution?").await;
    let confirmation = browser.text("main").await;
    assert!(confirmation.contains(&token) && confirmation.contains("on call: <runaway> job"));
    browser.click("button.danger").await;
    browser.wait_text("h1", "Stop requested").await;
    assert!(browser.text("main").await.contains("STOP_REQUESTED"));
    assert_eq!(stack.admin.stop_tokens(&arn).await.len(), 1);

    browser
        .goto(&format!("{}/executions?{}", console(&stack), query(&arn)))
        .await;
    browser.wait_text("#live-state", "live").await;
    let holding = browser.wait_text("#live", "What keeps it Stopping").await;
    assert!(holding.contains("Callback token"), "{holding}");
    keep_screenshot(
        "console-execution-stopping.png",
        &browser.screenshot().await,
    );
    // The page is not loaded again from here on: what changes arrives live.
    browser.script("window.stillTheSamePage = true;").await;
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
    browser.wait_text("#live .current", "Stopped").await;
    browser.wait_text("#live-state", "ended").await;
    assert_eq!(
        browser
            .script("return window.stillTheSamePage === true;")
            .await,
        true
    );
    assert!(
        !browser
            .text("#live")
            .await
            .contains("What keeps it Stopping")
    );
}

async fn a_batch_stop_shows_the_dry_run_then_stops_on_confirmation(backend: Backend) {
    let stack = stack(backend, |_| {}).await;
    let pipeline = create_pipeline(
        &stack.sagemaker,
        json!([{"Name": "Train", "Type": "Training",
            "Arguments": {"Emulator": {"DurationSeconds": 86400}}}]),
    )
    .await;
    let mut arns = Vec::new();
    for _ in 0..2 {
        let arn = start_execution(&stack.sagemaker, &pipeline).await;
        wait_for_status(&stack.sagemaker, &arn, "Executing").await;
        arns.push(arn);
    }
    let pipeline = arns[0].split("/execution/").next().unwrap().to_string();
    let browser = Browser::start().await;
    browser
        .goto(&format!(
            "{}/pipelines?{}",
            console(&stack),
            query(&pipeline)
        ))
        .await;
    browser.type_in("#reason", "incident 42").await;
    browser.click("#batch-form button[type=submit]").await;
    let count = browser
        .wait_text("#dry-run-count", "would be stopped")
        .await;
    let name = pipeline.rsplit('/').next().unwrap();
    assert!(
        count.contains(&format!(
            "Dry run: 2 Executing execution(s) of pipeline {name}"
        )),
        "{count}"
    );
    let listed = browser.text("ul.executions").await;
    assert!(arns.iter().all(|arn| listed.contains(arn)), "{listed}");
    for arn in &arns {
        assert!(
            stack.admin.stop_tokens(arn).await.is_empty(),
            "a dry run stops nothing"
        );
    }
    assert_eq!(
        browser.text("#confirm-batch").await,
        format!("Stop 2 execution(s) of pipeline {name}")
    );
    browser.click("#confirm-batch").await;
    browser
        .wait_text("#batch-summary", "2 selected: 2 stop requested")
        .await;
    for arn in &arns {
        assert_eq!(stack.admin.stop_tokens(arn).await.len(), 1);
    }
}

on_both_databases!(
    a_stop_from_the_page_reaches_stopped_live_when_the_callback_is_answered,
    a_batch_stop_shows_the_dry_run_then_stops_on_confirmation,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_who_may_only_read_sees_no_stop_button_and_a_stop_posted_anyway_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let identity = dir.path().join("identity.toml");
    std::fs::write(&identity, "[console]\nuser_header = \"x-forwarded-user\"\n").unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[allow]]\nprincipal = \"reader@example.com\"\nread = [\"*\"]\n",
    )
    .unwrap();
    let stack = stack(Backend::Sqlite, |args| {
        args.security.identity_file = Some(identity);
        args.security.policy_file = Some(policy);
    })
    .await;
    let arn = stack.callback_execution().await;
    let browser = Browser::start().await;
    // The proxy in front (loopback, trusted by default) names the person.
    browser
        .with_headers(json!({"x-forwarded-user": "reader@example.com"}))
        .await;
    browser
        .goto(&format!("{}/executions?{}", console(&stack), query(&arn)))
        .await;
    browser.wait_text("#live-state", "live").await;
    assert!(browser.text(".who").await.contains("reader@example.com"));
    assert!(browser.all("#stop-form").await.is_empty());
    assert!(browser.all("button.danger").await.is_empty());
    // A stop posted anyway, as a crafted form on the page would.
    browser
        .script(&format!(
            "const form = document.createElement('form');
             form.method = 'post'; form.action = '/executions/stop';
             for (const [name, value] of Object.entries({{arn: {arn:?}, reason: 'anyway', client_token: 'reader-1'}})) {{
                 const input = document.createElement('input');
                 input.name = name; input.value = value; form.appendChild(input);
             }}
             document.body.appendChild(form); form.submit();"
        ))
        .await;
    browser.wait_text("h1", "Not allowed").await;
    assert!(
        browser
            .text("main")
            .await
            .contains("reader@example.com may not stop this pipeline execution")
    );
    assert!(stack.admin.stop_tokens(&arn).await.is_empty());
    assert_eq!(stack.stored_requests().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_posted_from_another_site_is_refused() {
    let stack = stack(Backend::Sqlite, |_| {}).await;
    let arn = stack.callback_execution().await;
    // Another site (localhost is not 127.0.0.1's site) with a form aimed at the console.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = format!("http://localhost:{}", listener.local_addr().unwrap().port());
    let page = format!(
        r#"<!DOCTYPE html><html><body><form method="post" action="{}/executions/stop">
        <input type="hidden" name="arn" value="{arn}">
        <input type="hidden" name="reason" value="from elsewhere">
        <input type="hidden" name="client_token" value="elsewhere-1">
        <button id="go" type="submit">Go</button></form></body></html>"#,
        console(&stack)
    );
    let server = tokio::spawn(async move {
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(move || async move { axum::response::Html(page) }),
        );
        axum::serve(listener, router).await.unwrap();
    });
    let browser = Browser::start().await;
    browser.goto(&format!("{other}/")).await;
    browser.click("#go").await;
    browser
        .wait_text("h1", "Refused: not from this console")
        .await;
    assert!(stack.admin.stop_tokens(&arn).await.is_empty());
    assert_eq!(stack.stored_requests().await, 0);
    server.abort();
}
