//! Postgres failing over to a standby that lacks the last commits: a real primary and a real
//! streaming standby (asynchronous, made with `pg_basebackup -R`), in a temporary folder of
//! the test's own, reached through a proxy that moves to the promoted standby as a DNS name
//! would. Skipped, with a word, only where Postgres's server binaries are missing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{
    collections::HashSet,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pipeline_control::pb::{self, pipeline_control_client::PipelineControlClient};
use sqlx::{Connection as _, postgres::PgConnection};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::common::{
    Admin, TestApp, TestDb,
    proxy::{Proxy, Target},
    running, sagemaker_client, spawn_emulator, stack_args,
};

/// Postgres's server binaries (the newest installed), if any.
fn server_binaries() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| Some(entry.ok()?.path().join("bin")))
        .filter(|bin| bin.join("initdb").is_file() && bin.join("pg_basebackup").is_file())
        .collect();
    dirs.sort_by_key(|dir| {
        dir.parent()
            .and_then(|version| version.file_name()?.to_str()?.parse::<u32>().ok())
    });
    dirs.pop()
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| out.stdout.starts_with(b"0\n"))
}

/// Two clusters in a temporary folder (a primary, then its standby), on unix sockets there;
/// as root they run as `postgres`, since initdb refuses root. Stopped and removed on drop.
struct Clusters {
    bin: PathBuf,
    dir: tempfile::TempDir,
    root: bool,
}

const PRIMARY: u16 = 5433;
const STANDBY: u16 = 5434;

impl Clusters {
    fn new(bin: PathBuf) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = root();
        let clusters = Self { bin, dir, root };
        let chmod = Command::new("chmod")
            .arg("755")
            .arg(clusters.dir.path())
            .status()
            .unwrap();
        assert!(chmod.success());
        if root {
            let chown = Command::new("chown")
                .arg("postgres:")
                .arg(clusters.dir.path())
                .status()
                .unwrap();
            assert!(chown.success());
        }
        clusters
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Postgres's `program`, to run as `postgres` when root.
    fn command(&self, program: &str) -> Command {
        let binary = self.bin.join(program);
        if self.root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        }
    }

    /// Runs Postgres's `program`; panics with its output on failure.
    fn run(&self, program: &str, args: &[&str]) {
        let out = self.command(program).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self, name: &str, port: u16) {
        let data = self.path(name);
        let log = self.path(&format!("{name}.log"));
        let options = format!(
            "-c listen_addresses='' -k {} -c port={port} -c max_connections=100 -c fsync=off",
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
    }

    fn stop(&self, name: &str, mode: &str) {
        self.run(
            "pg_ctl",
            &["-D", path(&self.path(name)), "-m", mode, "-w", "stop"],
        );
    }

    /// The unix socket of the cluster on `port`.
    fn socket(&self, port: u16) -> PathBuf {
        self.path(&format!(".s.PGSQL.{port}"))
    }

    /// A connection URL of the cluster on `port`, straight (not through the proxy).
    fn url(&self, port: u16) -> String {
        format!(
            "postgres://postgres@localhost:{port}/postgres?host={}",
            self.dir.path().display()
        )
    }

    /// A primary, and a streaming standby of it (asynchronous: the primary never waits).
    fn primary_and_standby(&self) {
        self.run(
            "initdb",
            &[
                "-D",
                path(&self.path("primary")),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        self.start("primary", PRIMARY);
        let port = PRIMARY.to_string();
        self.run(
            "pg_basebackup",
            &[
                "-D",
                path(&self.path("standby")),
                "-R",
                "-X",
                "stream",
                "--no-sync",
                "-h",
                path(self.dir.path()),
                "-p",
                &port,
                "-U",
                "postgres",
            ],
        );
        self.start("standby", STANDBY);
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        for name in ["primary", "standby"] {
            let data = self.path(name);
            if data.join("postmaster.pid").exists() {
                let _ = self
                    .command("pg_ctl")
                    .args(["-D", path(&data), "-m", "immediate", "-w", "stop"])
                    .output();
            }
        }
    }
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Rows in `stop_requests` of the cluster at `url`.
async fn recorded(url: &str) -> i64 {
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar("SELECT count(*) FROM stop_requests")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// StopExecution of `arn` with `token`, retried while the service answers UNAVAILABLE (the
/// database moving), as a client does; each call bounded, and all of them within a minute.
async fn stop(
    client: &PipelineControlClient<Channel>,
    arn: &str,
    token: &str,
) -> (pb::StopExecutionResponse, u32) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut unavailable = 0;
    loop {
        let mut client = client.clone();
        let call = client.stop_execution(pb::StopExecutionRequest {
            pipeline_execution_arn: arn.to_string(),
            client_request_token: token.to_string(),
            reason: "failover test".to_string(),
            ..Default::default()
        });
        match tokio::time::timeout(Duration::from_secs(30), call).await {
            Ok(Ok(response)) => return (response.into_inner(), unavailable),
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => unavailable += 1,
            Ok(Err(status)) => panic!("stop {arn}: {status:?}"),
            Err(_) => panic!("stop {arn} hung for 30 s"),
        }
        assert!(
            Instant::now() < deadline,
            "stop {arn}: unavailable for a minute"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_retried_after_a_failover_that_lost_commits_are_answered_consistently_and_sent_once()
{
    // Never green without running: skipped only when asked to, by name.
    let Some(bin) = server_binaries() else {
        assert!(
            std::env::var_os("PIPELINE_CONTROL_TEST_SKIP_FAILOVER").is_some(),
            "no Postgres server binaries (initdb, pg_basebackup) under /usr/lib/postgresql/*/bin: \
             install Debian's postgresql, or set PIPELINE_CONTROL_TEST_SKIP_FAILOVER=1 to skip this test"
        );
        println!("skipped (PIPELINE_CONTROL_TEST_SKIP_FAILOVER): no Postgres server binaries");
        return;
    };
    let clusters = Clusters::new(bin);
    clusters.primary_and_standby();
    // The service reaches the database by one address (a proxy), which moves on failover.
    let proxy = Proxy::start(Target::Unix(clusters.socket(PRIMARY))).await;
    let db = TestDb::at(format!("postgres://postgres@{}/postgres", proxy.addr));
    let emulator = spawn_emulator(1.0, None).await;
    let sagemaker = sagemaker_client(&emulator.endpoint_url, 1);
    let admin = Admin::new(&emulator.endpoint_url);
    let settings = || {
        let mut args = stack_args(&db, &emulator.endpoint_url);
        args.database.database_timeout = Duration::from_secs(2);
        args
    };
    let app = TestApp::spawn(settings()).await;
    let client = PipelineControlClient::new(app.channel().await);
    let mut executions = Vec::new();
    for _ in 0..12 {
        executions.push((running(&sagemaker).await, uuid::Uuid::new_v4().to_string()));
    }

    // Six stops recorded on the primary and streamed to the standby.
    let mut first = Vec::new();
    for (arn, token) in &executions[..6] {
        first.push(stop(&client, arn, token).await.0);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while recorded(&clusters.url(STANDBY)).await < 6 {
        assert!(Instant::now() < deadline, "the standby never caught up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Six more that the standby never receives (it is down meanwhile): the commits an
    // asynchronous standby lacks when its primary dies.
    clusters.stop("standby", "fast");
    for (arn, token) in &executions[6..] {
        first.push(stop(&client, arn, token).await.0);
    }
    assert_eq!(recorded(&clusters.url(PRIMARY)).await, 12);

    // The primary dies; the standby is promoted, and the address moves to it.
    clusters.stop("primary", "immediate");
    clusters.start("standby", STANDBY);
    clusters.run(
        "pg_ctl",
        &["-D", path(&clusters.path("standby")), "-w", "promote"],
    );
    proxy.point_to(Target::Unix(clusters.socket(STANDBY)));
    assert_eq!(recorded(&clusters.url(STANDBY)).await, 6);

    // Every stop retried with its token gets an answer that agrees with the first one: on a
    // replica that answered it before (which remembers what it answered), and on one started
    // since (which knows only what the database kept).
    for ((arn, token), before) in executions.iter().zip(&first) {
        let (after, _) = stop(&client, arn, token).await;
        assert!(after.replayed, "{arn}");
        assert_eq!(
            (after.outcome, after.first_requested_at),
            (before.outcome, before.first_requested_at),
            "{arn}"
        );
    }
    let fresh = TestApp::spawn(settings()).await;
    let fresh_client = PipelineControlClient::new(fresh.channel().await);
    let (mut replayed, mut lost, mut unavailable) = (0, 0, 0);
    for ((arn, token), before) in executions.iter().zip(&first) {
        let (after, refused) = stop(&fresh_client, arn, token).await;
        unavailable += refused;
        assert_eq!(
            before.outcome(),
            pb::StopOutcome::StopRequested,
            "{before:?}"
        );
        if after.replayed {
            replayed += 1;
            assert_eq!(
                (after.outcome, after.first_requested_at),
                (before.outcome, before.first_requested_at),
                "{arn}"
            );
        } else {
            // The record was lost with the primary: the stop is decided anew, from what
            // SageMaker says, under the same upstream token.
            // SageMaker answers the repeated upstream token as it answered the first time.
            lost += 1;
            assert_eq!(after.outcome, before.outcome, "{arn}");
        }
    }
    println!(
        "after the failover, on a replica started since: {replayed} stops replayed, {lost} decided anew (records lost), {unavailable} UNAVAILABLE answers while the address moved"
    );
    assert_eq!((replayed, lost), (6, 6));
    // SageMaker saw one upstream token per execution, however often it was asked: the
    // executions whose record was lost were asked twice, under the same token.
    let mut asked = 0;
    for (arn, _) in &executions {
        let sent = admin.stop_tokens(arn).await;
        asked += sent.len();
        let tokens: HashSet<String> = sent.into_iter().collect();
        assert_eq!(tokens.len(), 1, "{arn}: {tokens:?}");
    }
    println!("StopPipelineExecution: {asked} calls, one upstream token per execution");
    // Now recorded on the new primary: a third try replays.
    for (arn, token) in &executions {
        assert!(stop(&fresh_client, arn, token).await.0.replayed, "{arn}");
    }
    drop(fresh);
    drop(app);
    drop(proxy);
    drop(clusters);
}
