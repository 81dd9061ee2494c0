//! The store on both databases: connecting, migrating (twice, and concurrently), and the
//! schema the idempotency contract needs.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::{path::Path, time::Duration};

use crate::common::{Backend, TestDb, admin_url, with_database};
use pipeline_control::{
    config::DatabaseArgs,
    store::{self, StoreError},
};
use sqlx::{PgPool, Row as _, SqlitePool};

fn migration_count(backend: &str) -> i64 {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    std::fs::read_dir(dir)
        .expect("the migrations folder")
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sql"))
        })
        .count() as i64
}

#[tokio::test]
async fn migrations_run_twice_are_harmless_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = store::connect(&db.args().store()).await.unwrap();
    assert_eq!(store.backend(), store::Backend::Postgres);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&PgPool::connect(&db.url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(applied, migration_count("postgres"));
    assert!(applied >= 1);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn migrations_run_twice_are_harmless_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = store::connect(&db.args().store()).await.unwrap();
    assert_eq!(store.backend(), store::Backend::Sqlite);
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&SqlitePool::connect(&db.url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(applied, migration_count("sqlite"));
    assert!(applied >= 1);
    store.ping().await.unwrap();
}

#[tokio::test]
async fn replicas_migrating_at_once_all_succeed_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let settings = db.args().store();
        replicas.push(tokio::spawn(async move {
            let store = store::connect(&settings).await?;
            store.migrate().await?;
            store.close().await;
            Ok::<_, StoreError>(())
        }));
    }
    for replica in replicas {
        replica.await.unwrap().unwrap();
    }
}

/// Every column the idempotency contract needs exists, with the database's defaults and
/// checks: a claimed row, then a completed one; a completed row without an outcome is refused.
#[tokio::test]
async fn schema_holds_the_idempotency_record_and_audit_trail_on_postgres() {
    let db = TestDb::new(Backend::Postgres).await;
    let store = store::connect(&db.args().store()).await.unwrap();
    store.migrate().await.unwrap();
    let pool = &PgPool::connect(&db.url).await.unwrap();

    sqlx::query(
        "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
             pipeline_execution_arn, reason, upstream_token, lease_owner, lease_expires_at,
             expires_at)
         VALUES ('anonymous', 'tok-1', 'f', 'StopExecution', 'arn:x', 'why', 'u', 'replica-a',
             now() + interval '30 seconds', now() + interval '30 days')",
    )
    .execute(pool)
    .await
    .unwrap();
    let row = sqlx::query(
        "SELECT state, epoch, attempts, created_at <= now() AS past FROM stop_requests",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("state"), "pending");
    assert_eq!(row.get::<i64, _>("epoch"), 1);
    assert_eq!(row.get::<i32, _>("attempts"), 0);
    assert!(row.get::<bool, _>("past"));

    // The same key twice is refused by the primary key.
    let duplicate = sqlx::query(
        "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
             pipeline_execution_arn, upstream_token, expires_at)
         VALUES ('anonymous', 'tok-1', 'g', 'StopExecution', 'arn:y', 'u', now())",
    )
    .execute(pool)
    .await;
    assert!(duplicate.is_err());

    // Completed without outcome or error: refused by the completion check.
    let incomplete = sqlx::query(
        "UPDATE stop_requests SET state = 'completed', completed_at = now() WHERE client_token = 'tok-1'",
    )
    .execute(pool)
    .await;
    assert!(incomplete.is_err());
    sqlx::query(
        "UPDATE stop_requests SET state = 'completed', outcome = 'STOP_REQUESTED',
             execution_status = 'Stopping', completed_at = now(), epoch = epoch + 1
         WHERE client_token = 'tok-1' AND epoch = 1",
    )
    .execute(pool)
    .await
    .unwrap();

    sqlx::query(
        "INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason, event, outcome, epoch, worker)
         VALUES ('anonymous', 'tok-1', 'arn:x', 'why', 'completed', 'STOP_REQUESTED', 1, 'replica-a')",
    )
    .execute(pool)
    .await
    .unwrap();
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM stop_audit WHERE at <= now()")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn schema_holds_the_idempotency_record_and_audit_trail_on_sqlite() {
    let db = TestDb::new(Backend::Sqlite).await;
    let store = store::connect(&db.args().store()).await.unwrap();
    store.migrate().await.unwrap();
    let pool = &SqlitePool::connect(&db.url).await.unwrap();
    const NOW: &str = "CAST(unixepoch('subsec') * 1000 AS INTEGER)";

    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
             pipeline_execution_arn, reason, upstream_token, lease_owner, lease_expires_at,
             expires_at)
         VALUES ('anonymous', 'tok-1', 'f', 'StopExecution', 'arn:x', 'why', 'u', 'replica-a',
             {NOW} + 30000, {NOW} + 2592000000)"
    )))
    .execute(pool)
    .await
    .unwrap();
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT state, epoch, attempts, created_at <= {NOW} AS past,
                created_at > {NOW} - 60000 AS recent
         FROM stop_requests"
    )))
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("state"), "pending");
    assert_eq!(row.get::<i64, _>("epoch"), 1);
    assert_eq!(row.get::<i64, _>("attempts"), 0);
    assert!(row.get::<bool, _>("past"));
    assert!(
        row.get::<bool, _>("recent"),
        "times are milliseconds since the epoch"
    );

    let duplicate = sqlx::query(
        "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
             pipeline_execution_arn, upstream_token, expires_at)
         VALUES ('anonymous', 'tok-1', 'g', 'StopExecution', 'arn:y', 'u', 0)",
    )
    .execute(pool)
    .await;
    assert!(duplicate.is_err());

    // STRICT tables refuse a time that is not an integer.
    let text_time = sqlx::query(
        "INSERT INTO stop_requests (principal, client_token, fingerprint, method,
             pipeline_execution_arn, upstream_token, expires_at)
         VALUES ('anonymous', 'tok-2', 'g', 'StopExecution', 'arn:y', 'u', 'tomorrow')",
    )
    .execute(pool)
    .await;
    assert!(text_time.is_err());

    let incomplete = sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE stop_requests SET state = 'completed', completed_at = {NOW} WHERE client_token = 'tok-1'"
    )))
    .execute(pool)
    .await;
    assert!(incomplete.is_err());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE stop_requests SET state = 'completed', error_code = 'EXECUTION_NOT_FOUND',
             completed_at = {NOW}, epoch = epoch + 1
         WHERE client_token = 'tok-1' AND epoch = 1"
    )))
    .execute(pool)
    .await
    .unwrap();

    sqlx::query(
        "INSERT INTO stop_audit (principal, client_token, pipeline_execution_arn, reason, event, error_code, epoch, worker)
         VALUES ('anonymous', 'tok-1', 'arn:x', 'why', 'completed', 'EXECUTION_NOT_FOUND', 1, 'replica-a')",
    )
    .execute(pool)
    .await
    .unwrap();
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM stop_audit")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test]
async fn connect_picks_the_backend_from_the_url() {
    let pg = TestDb::new(Backend::Postgres).await;
    let store = store::connect(&pg.args().store()).await.unwrap();
    assert_eq!(store.backend(), store::Backend::Postgres);
    store.close().await;

    let dir = tempfile::tempdir().unwrap();
    let plain_path = dir.path().join("plain.db");
    for url in [
        plain_path.display().to_string(),
        format!("sqlite://{}", dir.path().join("url.db").display()),
    ] {
        let store = store::connect(&DatabaseArgs::new(url.clone()).store())
            .await
            .unwrap();
        assert_eq!(store.backend(), store::Backend::Sqlite, "{url}");
        store.migrate().await.unwrap();
        store.close().await;
    }
    assert!(plain_path.exists(), "a missing SQLite file is created");
}

#[tokio::test]
async fn bad_database_urls_fail_with_a_clear_error() {
    for url in ["", "mysql://root@localhost/db", "postgres://user@[::1/db"] {
        let error = store::connect(&DatabaseArgs::new(url).store())
            .await
            .unwrap_err();
        assert!(
            matches!(error, StoreError::InvalidUrl(_)),
            "{url:?}: {error}"
        );
        assert!(
            error.to_string().starts_with("invalid database URL"),
            "{error}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_database_fails_within_the_timeout() {
    // A database that does not exist on the test server: the server answers, and refuses.
    let missing = with_database(&admin_url(), "no_such_database_here");
    // Nothing listens on port 1 of the loopback address.
    let closed = "postgres://user:secret@127.0.0.1:1/db".to_string();
    for url in [missing, closed] {
        let mut settings = DatabaseArgs::new(url.clone()).store();
        settings.timeout = Duration::from_secs(2);
        let result = tokio::time::timeout(Duration::from_secs(60), store::connect(&settings))
            .await
            .expect("connect gives up by itself");
        let error = result.unwrap_err();
        assert!(
            matches!(error, StoreError::Connect { .. }),
            "{url}: {error}"
        );
        let message = error.to_string();
        assert!(
            message.starts_with("cannot connect to postgres database"),
            "{message}"
        );
        assert!(
            !message.contains("secret"),
            "the password is never shown: {message}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let inside_missing_dir = dir.path().join("missing").join("x.db");
    let error =
        store::connect(&DatabaseArgs::new(inside_missing_dir.display().to_string()).store())
            .await
            .unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("cannot connect to sqlite database"),
        "{error}"
    );
}

mod records {
    //! The stop-request records on both databases: claims, take-overs, fencing, principals and
    //! how they were proven.
    use std::time::Duration;

    use crate::common::{Backend, TestDb};
    use pipeline_control::store::{
        self, AuthMethod, Completion, ExecutionArn, ExecutionStatus, ListQuery, NewStopRequest,
        RecordState, RequestKey, StopOutcome, Store, StoreError,
    };

    fn request(principal: &str, token: &str) -> NewStopRequest {
        NewStopRequest {
            key: RequestKey {
                principal: principal.into(),
                token: token.into(),
            },
            fingerprint: "f".repeat(64),
            method: "StopExecution".into(),
            pipeline_execution_arn: ExecutionArn::parse(
                "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl",
            )
            .unwrap(),
            reason: "test".into(),
            upstream_token: "u".repeat(64),
            force_after: None,
            proof: AuthMethod::Token.into(),
        }
    }

    fn done() -> Completion {
        Completion::Stopped {
            outcome: StopOutcome::StopRequested,
            status: ExecutionStatus::Stopping,
        }
    }

    async fn open(backend: Backend) -> (TestDb, std::sync::Arc<dyn Store>) {
        let db = TestDb::new(backend).await;
        let store = store::connect(&db.args().store()).await.unwrap();
        store.migrate().await.unwrap();
        (db, store)
    }

    const LONG: Duration = Duration::from_secs(3600);

    async fn a_stale_owner_cannot_overwrite_a_newer_epoch(backend: Backend) {
        let (_db, store) = open(backend).await;
        let req = request("anonymous", "t");
        let first = store
            .insert_new(&req, "replica-a", Duration::from_millis(100), LONG)
            .await
            .unwrap()
            .expect("a new key is recorded");
        assert_eq!((first.epoch, first.attempts), (1, 1));

        // While the lease lives, nobody else gets it.
        assert!(
            store
                .take_over(&req.key, "replica-b", LONG, None)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .insert_new(&req, "replica-b", LONG, LONG)
                .await
                .unwrap()
                .is_none()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let second = store
            .take_over(&req.key, "replica-b", LONG, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((second.epoch, second.attempts), (2, 2));
        assert_eq!(second.lease_owner.as_deref(), Some("replica-b"));

        // Replica A wakes up: its writes are fenced off.
        assert!(
            store
                .complete(&req.key, 1, "replica-a", &done())
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            !store
                .release(&req.key, 1, "replica-a", "late")
                .await
                .unwrap()
        );
        let current = store.get(&req.key).await.unwrap().unwrap();
        assert_eq!(current.state, RecordState::Pending);
        assert_eq!(current.epoch, 2);

        let completed = store
            .complete(&req.key, 2, "replica-b", &done())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(completed.state, RecordState::Completed(done()));
        assert!(completed.completed_at.is_some());
        assert_eq!(completed.lease_owner, None);
        // Completed records are never taken over.
        assert!(
            store
                .take_over(&req.key, "replica-c", LONG, None)
                .await
                .unwrap()
                .is_none()
        );
    }

    async fn two_principals_with_one_token_do_not_collide(backend: Backend) {
        let (_db, store) = open(backend).await;
        let mut theirs = request("alice", "shared");
        theirs.fingerprint = "a".repeat(64);
        let claims = [
            store
                .insert_new(&request("anonymous", "shared"), "w", LONG, LONG)
                .await
                .unwrap(),
            store.insert_new(&theirs, "w", LONG, LONG).await.unwrap(),
        ];
        for claim in &claims {
            assert!(matches!(claim, Some(r) if r.epoch == 1), "{claim:?}");
        }
        let alice = store
            .get(&RequestKey {
                principal: "alice".into(),
                token: "shared".into(),
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(alice.fingerprint, "a".repeat(64));
    }

    async fn expired_leases_are_listed_and_expired_records_deleted(backend: Backend) {
        let (_db, store) = open(backend).await;
        store
            .insert_new(&request("p", "leased"), "w", LONG, LONG)
            .await
            .unwrap();
        store
            .insert_new(&request("p", "lapsed"), "w", Duration::ZERO, LONG)
            .await
            .unwrap();
        store
            .insert_new(&request("p", "expired"), "w", LONG, Duration::ZERO)
            .await
            .unwrap();
        let lapsed = store.expired_leases(10).await.unwrap();
        assert_eq!(
            lapsed,
            vec![RequestKey {
                principal: "p".into(),
                token: "lapsed".into()
            }]
        );
        assert!(
            store
                .get(&request("p", "expired").key)
                .await
                .unwrap()
                .is_none()
        );
        assert_eq!(store.delete_expired(10).await.unwrap(), 1);
        assert_eq!(store.delete_expired(10).await.unwrap(), 0);
    }

    /// A value this version does not know (a newer version wrote it, or a person) is an
    /// error when the row is read, never a guess that would be replayed for 30 days.
    async fn unknown_values_in_a_row_are_decode_errors(backend: Backend) {
        let (db, store) = open(backend).await;
        for (column, value) in [
            ("outcome", "STOP_DEFERRED"),
            ("error_code", "EXECUTION_ON_FIRE"),
            ("execution_status", "Paused"),
            ("pipeline_execution_arn", "arn:aws:sagemaker:somewhere"),
            ("auth_method", "kerberos"),
        ] {
            let token = format!("unknown-{column}");
            let req = request("p", &token);
            let record = store
                .insert_new(&req, "w", LONG, LONG)
                .await
                .unwrap()
                .unwrap();
            let completion = if column == "error_code" {
                Completion::Refused {
                    error: store::RecordedError::ExecutionNotFound,
                    status: None,
                }
            } else {
                done()
            };
            store
                .complete(&req.key, record.epoch, "w", &completion)
                .await
                .unwrap()
                .unwrap();
            // The schema checks outcomes: write past the check, as a newer version's schema
            // would let it.
            let bypass = match backend {
                Backend::Postgres => {
                    "ALTER TABLE stop_requests DROP CONSTRAINT IF EXISTS stop_requests_outcome_check"
                }
                Backend::Sqlite => "PRAGMA ignore_check_constraints = ON",
            };
            let update = format!(
                "UPDATE stop_requests SET {column} = '{value}' WHERE client_token = '{token}'"
            );
            crate::common::execute(&db, &[bypass, &update]).await;
            let error = store.get(&req.key).await.unwrap_err();
            assert!(
                matches!(&error, StoreError::Decode { column: c, value: v } if *c == column && v == value),
                "{column}: {error:?}"
            );
        }
    }

    async fn audit_rows_past_their_retention_are_deleted_in_batches(backend: Backend) {
        let (db, store) = open(backend).await;
        let event = |days_ago: i64, token: &str| store::AuditEvent {
            at: chrono::Utc::now() - chrono::Duration::days(days_ago),
            principal: "p".into(),
            proof: AuthMethod::Token.into(),
            token: token.into(),
            pipeline_execution_arn: "arn".into(),
            reason: String::new(),
            kind: store::AuditKind::Replayed,
            outcome: Some(StopOutcome::StopRequested),
            error: None,
            epoch: 1,
            worker: "w".into(),
        };
        store
            .audit(&[
                event(100, "old-1"),
                event(95, "old-2"),
                event(91, "old-3"),
                event(89, "kept-1"),
                event(0, "kept-2"),
            ])
            .await
            .unwrap();
        let ninety_days = Duration::from_secs(90 * 24 * 3600);
        assert_eq!(store.delete_old_audit(ninety_days, 2).await.unwrap(), 2);
        assert_eq!(store.delete_old_audit(ninety_days, 2).await.unwrap(), 1);
        assert_eq!(store.delete_old_audit(ninety_days, 2).await.unwrap(), 0);
        assert_eq!(
            crate::common::count_where(&db, "stop_audit", "client_token LIKE 'kept-%'").await,
            2
        );
        assert_eq!(crate::common::count_rows(&db, "stop_audit").await, 2);
    }

    /// Rows of `table` where `condition` holds.
    async fn rows(db: &TestDb, table: &str, condition: &str) -> i64 {
        crate::common::count_where(db, table, condition).await
    }

    /// The record keeps how its principal was proven; each audit row keeps how the caller of
    /// its own call was: a retry that takes the record over, or a replay, proven another way
    /// says so, while what the service does on the record's behalf carries the record's.
    async fn the_method_is_recorded_and_each_audit_row_names_its_own_callers(backend: Backend) {
        let (db, store) = open(backend).await;
        let req = request("spiffe://example.org/billing", "proven");
        let received = store
            .insert_new(&req, "w", Duration::ZERO, LONG)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received.auth_method, Some(AuthMethod::Token));
        // The same principal, now proven as an assumed IAM role, retries and takes over the
        // lapsed lease: its session name goes into the row about its own call.
        let role = store::Proof {
            method: AuthMethod::Iam,
            session: Some("i-0abc@billing".into()),
        };
        let taken = store
            .take_over(&req.key, "w", LONG, Some(&role))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            taken.auth_method,
            Some(AuthMethod::Token),
            "the record's stays"
        );
        let completed = store
            .complete(&req.key, taken.epoch, "w", &done())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(completed.auth_method, Some(AuthMethod::Token));
        // Its replay by a client certificate, written behind.
        store
            .audit(&[store::AuditEvent::about(
                &completed,
                store::AuditKind::Replayed,
                &AuthMethod::Mtls.into(),
                "w",
            )])
            .await
            .unwrap();
        assert_eq!(
            rows(
                &db,
                "stop_requests",
                "client_token = 'proven' AND auth_method = 'token'"
            )
            .await,
            1
        );
        for (event, method) in [
            ("received", "token"),
            ("taken_over", "iam"),
            ("completed", "token"),
            ("replayed", "mtls"),
        ] {
            assert_eq!(
                rows(
                    &db,
                    "stop_audit",
                    &format!(
                        "client_token = 'proven' AND principal = 'spiffe://example.org/billing' \
                         AND event = '{event}' AND auth_method = '{method}'"
                    ),
                )
                .await,
                1,
                "{event} by {method}"
            );
        }
        assert_eq!(rows(&db, "stop_audit", "auth_method IS NULL").await, 0);
        assert_eq!(
            rows(&db, "stop_audit", "auth_session IS NOT NULL").await,
            rows(
                &db,
                "stop_audit",
                "event = 'taken_over' AND auth_session = 'i-0abc@billing'"
            )
            .await,
        );
        assert_eq!(
            rows(&db, "stop_audit", "auth_session = 'i-0abc@billing'").await,
            1,
            "only the role's own call carries its session"
        );

        // The completer takes over an anonymous caller's abandoned request: on its behalf.
        let mut abandoned = request("anonymous", "abandoned");
        abandoned.proof = AuthMethod::Anonymous.into();
        store
            .insert_new(&abandoned, "gone", Duration::ZERO, LONG)
            .await
            .unwrap()
            .unwrap();
        let resumed = store
            .take_over(&abandoned.key, "completer", LONG, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resumed.auth_method, Some(AuthMethod::Anonymous));
        assert_eq!(
            rows(
                &db,
                "stop_audit",
                "client_token = 'abandoned' AND auth_method = 'anonymous'"
            )
            .await,
            2,
            "received and taken_over"
        );
    }

    /// Rows recorded before the method was kept hold NULL: they read back as unknown, are
    /// listed, and are worked on like any other (their audit rows unknown too), never an error.
    async fn a_record_from_before_the_method_was_kept_reads_as_unknown(backend: Backend) {
        let (db, store) = open(backend).await;
        let (now, day) = match backend {
            Backend::Postgres => ("now()", "interval '1 day'"),
            Backend::Sqlite => ("CAST(unixepoch('subsec') * 1000 AS INTEGER)", "86400000"),
        };
        let arn = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p/execution/abcdefghijkl";
        let columns = "principal, client_token, fingerprint, method, pipeline_execution_arn, \
                       pipeline_arn, reason, upstream_token, state, outcome, execution_status, \
                       lease_owner, lease_expires_at, attempts, completed_at, expires_at";
        let pipeline = "arn:aws:sagemaker:us-east-1:123456789012:pipeline/p";
        let completed = format!(
            "INSERT INTO stop_requests ({columns}) VALUES ('p', 'before', 'f', 'StopExecution', \
             '{arn}', '{pipeline}', 'old', 'u', 'completed', 'STOP_REQUESTED', 'Stopping', \
             NULL, NULL, 1, {now}, {now} + {day})"
        );
        let pending = format!(
            "INSERT INTO stop_requests ({columns}) VALUES ('p', 'abandoned', 'f', 'StopExecution', \
             '{arn}', '{pipeline}', 'old', 'u', 'pending', NULL, NULL, \
             'gone', {now}, 1, NULL, {now} + {day})"
        );
        crate::common::execute(&db, &[&completed, &pending]).await;

        let key = |token: &str| RequestKey {
            principal: "p".into(),
            token: token.into(),
        };
        let before = store.get(&key("before")).await.unwrap().unwrap();
        assert_eq!(before.auth_method, None);
        assert_eq!(before.state, RecordState::Completed(done()));
        let listed = store
            .list(&ListQuery {
                principal: Some("p".into()),
                limit: 10,
                ..ListQuery::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|record| record.auth_method.is_none()));

        // The completer resumes the abandoned one; a retry would name its own method.
        let resumed = store
            .take_over(&key("abandoned"), "completer", LONG, None)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resumed.auth_method, None);
        store
            .complete(&key("abandoned"), resumed.epoch, "completer", &done())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            rows(
                &db,
                "stop_audit",
                "client_token = 'abandoned' AND auth_method IS NULL"
            )
            .await,
            2,
            "taken_over and completed"
        );
    }

    on_both_databases!(
        the_method_is_recorded_and_each_audit_row_names_its_own_callers,
        a_record_from_before_the_method_was_kept_reads_as_unknown,
        audit_rows_past_their_retention_are_deleted_in_batches,
        unknown_values_in_a_row_are_decode_errors,
        a_stale_owner_cannot_overwrite_a_newer_epoch,
        two_principals_with_one_token_do_not_collide,
        expired_leases_are_listed_and_expired_records_deleted,
    );
}
