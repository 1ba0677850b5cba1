//! The outbox relay and migrations across replicas.
use std::time::Duration;

use futures_util::StreamExt;
use taskboard_tasks::testing;

use crate::helpers::*;

#[tokio::test]
async fn events_are_published_with_routing_headers_and_the_cursor_moves_past_them() {
    let mut t = spawn().await;
    let nats = async_nats::connect(testing::nats_url()).await.unwrap();
    let mut sub = nats
        .subscribe(taskboard_proto::nats::all_boards(&t.handle.subject_prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let (task, seq) = t.create(4, "published").await;
    let m = tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("published in time")
        .unwrap();
    assert_eq!(
        m.subject.as_str(),
        taskboard_proto::nats::board_subject(&t.handle.subject_prefix, 4, "created")
    );
    let h = m.headers.expect("headers");
    assert_eq!(h.get("Taskboard-Board").unwrap().as_str(), "4");
    assert_eq!(h.get("Taskboard-Seq").unwrap().as_str(), seq.to_string());
    assert_eq!(h.get("Nats-Msg-Id").unwrap().as_str(), format!("4-{seq}"));
    let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
    assert_eq!(body["task_id"], task.id);
    assert_eq!(body["completed"], false);

    let db = t.db().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if published_up_to(&db, 4).await == seq {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cursor never moved past the event"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every event on the original's subject (with the same headers and payload) and on its board's,
/// with NATS_LEGACY_SUBJECTS=on (the default); only on the board's with off.
#[tokio::test]
async fn legacy_subjects_carry_the_same_event_until_they_are_turned_off() {
    for legacy in ["on", "off"] {
        let mut t = spawn_with(|c| c.nats_legacy_subjects = legacy.into()).await;
        let prefix = t.handle.subject_prefix.clone();
        let nats = async_nats::connect(testing::nats_url()).await.unwrap();
        // The original's subjects (what its api-gateway subscribes to) and every board's.
        let legacy_sub = nats
            .subscribe(taskboard_proto::nats::wildcard(&prefix))
            .await
            .unwrap();
        let boards_sub = nats
            .subscribe(taskboard_proto::nats::all_boards(&prefix))
            .await
            .unwrap();
        let mut sub = futures_util::stream::select(legacy_sub, boards_sub);
        nats.flush().await.unwrap();
        let (_, first) = t.create(5, "one").await;
        let (_, second) = t.create(5, "two").await;
        let mut got = Vec::new();
        let want = if legacy == "on" { 4 } else { 2 };
        while got.len() < want {
            let m = tokio::time::timeout(WAIT, sub.next())
                .await
                .unwrap_or_else(|_| panic!("legacy={legacy}: {} of {want} copies", got.len()))
                .unwrap();
            let seq: i64 = m
                .headers
                .as_ref()
                .unwrap()
                .get("Taskboard-Seq")
                .unwrap()
                .as_str()
                .parse()
                .unwrap();
            got.push((m.subject.to_string(), seq, m.payload));
        }
        // Nothing more arrives (a round trip through the server proves it).
        let mut rt = taskboard_proto::nats::RoundTrip::new(&nats).await.unwrap();
        assert!(rt.confirm(&nats, WAIT).await.unwrap());
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next())
                .await
                .is_err(),
            "legacy={legacy}: an extra copy"
        );
        let board_subject = taskboard_proto::nats::board_subject(&prefix, 5, "created");
        let legacy_subject = format!("{prefix}.created");
        for seq in [first, second] {
            let copies: Vec<_> = got.iter().filter(|(_, s, _)| *s == seq).collect();
            let on_board = copies
                .iter()
                .filter(|(s, _, _)| *s == board_subject)
                .count();
            let on_legacy = copies
                .iter()
                .filter(|(s, _, _)| *s == legacy_subject)
                .count();
            assert_eq!(
                on_board, 1,
                "legacy={legacy}: seq {seq} on its board's subject"
            );
            assert_eq!(
                on_legacy,
                usize::from(legacy == "on"),
                "legacy={legacy}: seq {seq} on the original's subject"
            );
            assert!(copies.windows(2).all(|w| w[0].2 == w[1].2), "same payload");
        }
    }
}

/// Where board `board`'s outbox cursor stands (0 before its first publish).
pub async fn published_up_to(db: &tokio_postgres::Client, board: i64) -> i64 {
    db.query_opt(
        "SELECT published_seq FROM outbox_cursor WHERE board_id = $1",
        &[&board],
    )
    .await
    .unwrap()
    .map_or(0, |r| r.get(0))
}

#[tokio::test]
async fn the_committing_replica_publishes_without_waiting_for_the_scan() {
    // The relay's scan runs once at start, then not for a minute: only the commit path is left.
    let t = spawn_with(|c| c.relay_poll_interval_ms = 60_000).await;
    let nats = async_nats::connect(testing::nats_url()).await.unwrap();
    let mut sub = nats
        .subscribe(taskboard_proto::nats::all_boards(&t.handle.subject_prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut t = t;
    // The service connects to NATS in the background: the first event may wait for that.
    t.create(7, "first").await;
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("the first event is published")
        .unwrap();
    for i in 2..=4 {
        let (_, seq) = t.create(7, &format!("live {i}")).await;
        let m = tokio::time::timeout(Duration::from_secs(2), sub.next())
            .await
            .expect("published at commit, not by the scan")
            .unwrap();
        assert_eq!(
            m.headers.unwrap().get("Taskboard-Seq").unwrap().as_str(),
            seq.to_string()
        );
    }
    let db = t.db().await;
    assert!(
        testing::eventually(WAIT, || async { published_up_to(&db, 7).await == 4 }).await,
        "the cursor follows"
    );
}

#[tokio::test]
async fn events_a_replica_committed_but_never_published_are_published_by_the_scan() {
    let t = spawn().await;
    let nats = async_nats::connect(testing::nats_url()).await.unwrap();
    let mut sub = nats
        .subscribe(taskboard_proto::nats::all_boards(&t.handle.subject_prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut t = t;
    t.create(1, "the service is up (migrated)").await;
    let db = t.db().await;
    // What a replica that stopped right after its commit leaves behind: events past the cursor.
    db.batch_execute(
        "INSERT INTO boards (id, last_seq) VALUES (9, 2); \
         INSERT INTO events (board_id, seq, kind, task_id, payload, created_at) VALUES \
           (9, 1, 'created', 1, '{\"seq\":1}', now() - interval '10 seconds'), \
           (9, 2, 'created', 2, '{\"seq\":2}', now() - interval '10 seconds')",
    )
    .await
    .unwrap();
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("published by the scan")
            .unwrap();
        let h = m.headers.unwrap();
        // Only board 9's: the create above has an event of its own on board 1.
        if h.get("Taskboard-Board").unwrap().as_str() == "9" {
            seqs.push(h.get("Taskboard-Seq").unwrap().to_string());
        }
    }
    assert_eq!(seqs, ["1", "2"]);
    assert!(
        testing::eventually(WAIT, || async { published_up_to(&db, 9).await == 2 }).await,
        "the cursor moves past them"
    );
}

#[tokio::test]
async fn a_cursor_never_skips_events_still_unpublished() {
    let url = testing::fresh_database().await;
    let pg: tokio_postgres::Config = url.parse().unwrap();
    taskboard_tasks::db::migrate(&pg).await.unwrap();
    let pool = taskboard_tasks::db::pool(pg, 2, Duration::from_secs(5));
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let ev = |seq| taskboard_tasks::db::EventRow {
        board_id: 3,
        seq,
        kind: "created".into(),
        task_id: seq,
        payload: bytes::Bytes::new(),
        committed_at: chrono::Utc::now(),
        actor: None,
        trace: None,
    };
    let advance = |events: Vec<taskboard_tasks::db::EventRow>| {
        let pool = pool.clone();
        async move { taskboard_tasks::db::advance(&pool, &events).await.unwrap() }
    };
    // 3..4 published by one replica while 1..2 (another's) are not: the cursor stays at 0.
    advance(vec![ev(3), ev(4)]).await;
    assert_eq!(published_up_to(&db, 3).await, 0);
    // 1..2 confirmed: the cursor moves over both runs, to 4 (nothing is left to republish).
    advance(vec![ev(1), ev(2)]).await;
    assert_eq!(published_up_to(&db, 3).await, 4);
    // A batch with a hole moves it only to the hole, and keeps what lies beyond.
    advance(vec![ev(5), ev(7), ev(8)]).await;
    assert_eq!(published_up_to(&db, 3).await, 5);
    advance(vec![ev(6)]).await;
    assert_eq!(published_up_to(&db, 3).await, 8, "the kept run 7..8 joins");
    // An older run never moves it back, and nothing is left over.
    advance(vec![ev(1)]).await;
    assert_eq!(published_up_to(&db, 3).await, 8);
    let left: i64 = db
        .query_one("SELECT count(*) FROM outbox_runs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn two_replicas_on_one_database_publish_every_event_and_the_cursor_follows() {
    // Each replica publishes what it committed, so NATS may see a board's seqs out of order
    // across replicas (subscribers order by seq); every event goes out, and the cursor reaches
    // the head without the scan republishing anything.
    let mut config = testing::test_config().await;
    config.relay_poll_interval_ms = 60_000;
    let second_config = config.clone();
    let a = testing::spawn_tasks(config).await;
    let b = testing::spawn_tasks(second_config).await;
    let nats = async_nats::connect(testing::nats_url()).await.unwrap();
    let mut sub = nats
        .subscribe(taskboard_proto::nats::all_boards(&a.subject_prefix))
        .await
        .unwrap();
    nats.flush().await.unwrap();
    let mut ca = connect(&a).await;
    let mut cb = connect(&b).await;
    let req = |board: i64, title: String| taskboard_proto::v1::CreateTaskRequest {
        board_id: board,
        title,
        description: String::new(),
        created_by: 1,
        idempotency_key: None,
        ..Default::default()
    };
    // Both replicas connected to NATS first (each publishes its own warm-up event).
    ca.create_task(req(100, "warm a".into())).await.unwrap();
    cb.create_task(req(200, "warm b".into())).await.unwrap();
    let mut warm = 0;
    while warm < 2 {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("warm-up events")
            .unwrap();
        warm += 1;
    }
    for i in 0..20 {
        let c = if i % 2 == 0 { &mut ca } else { &mut cb };
        c.create_task(req(1, format!("r{i}"))).await.unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("in time")
            .unwrap();
        seqs.push(
            m.headers
                .unwrap()
                .get("Taskboard-Seq")
                .unwrap()
                .as_str()
                .parse::<i64>()
                .unwrap(),
        );
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "each once");
    let db = {
        let (c, conn) = tokio_postgres::connect(&a.database_url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    assert!(
        testing::eventually(WAIT, || async { published_up_to(&db, 1).await == 20 }).await,
        "the cursor reaches the head"
    );
    // Nothing is published twice (the scan is a minute away, and nothing is left for it).
    assert!(tokio::time::timeout(Duration::from_millis(500), sub.next())
        .await
        .is_err());
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn replicas_starting_together_migrate_once() {
    let url = testing::fresh_database().await;
    let pg: tokio_postgres::Config = url.parse().unwrap();
    let runs = (0..4).map(|_| {
        let pg = pg.clone();
        tokio::spawn(async move { taskboard_tasks::db::migrate(&pg).await })
    });
    for r in futures_util::future::join_all(runs).await {
        r.unwrap().unwrap();
    }
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let n: i64 = c
        .query_one("SELECT count(*) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 10, "each of the ten migrations recorded once");
}

#[tokio::test]
async fn an_applied_migration_that_was_edited_stops_the_start() {
    let url = testing::fresh_database().await;
    let pg: tokio_postgres::Config = url.parse().unwrap();
    taskboard_tasks::db::migrate(&pg).await.unwrap();
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let recorded: String = c
        .query_one(
            "SELECT checksum FROM schema_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded.len(), 64, "a sha256 in hex: {recorded}");

    // A database migrated by a build that recorded no checksum gets one, and starts.
    c.batch_execute("UPDATE schema_migrations SET checksum = NULL")
        .await
        .unwrap();
    taskboard_tasks::db::migrate(&pg).await.unwrap();
    let again: String = c
        .query_one(
            "SELECT checksum FROM schema_migrations WHERE version = 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, recorded);

    // Applied with other text than this build's: refuse, and say what to do.
    c.batch_execute("UPDATE schema_migrations SET checksum = 'edited'")
        .await
        .unwrap();
    let e = taskboard_tasks::db::migrate(&pg).await.unwrap_err();
    assert!(
        matches!(
            e,
            taskboard_tasks::Error::MigrationEdited { version: 1, .. }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("new migration"), "{e}");
}

#[tokio::test]
async fn shutdown_returns_promptly_even_with_an_open_watch_stream() {
    let mut t = spawn().await;
    let _stream = t
        .client
        .watch_events(taskboard_proto::v1::WatchEventsRequest {
            board_id: 1,
            since_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let started = tokio::time::Instant::now();
    t.handle.stop().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "took {:?}",
        started.elapsed()
    );
}

/// The real binary: migrates, serves, and exits 0 on SIGTERM.
#[tokio::test]
async fn the_binary_serves_and_exits_zero_on_sigterm() {
    let db = testing::fresh_database().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskboard-tasks"))
        .kill_on_drop(true)
        .env_clear()
        .env("PORT", port.to_string())
        .env("METRICS_PORT", "0")
        .env("BIND_ADDR", "127.0.0.1")
        .env("DATABASE_URL", &db)
        .env("NATS_URL", testing::nats_url())
        .env("SERVICE_TOKEN", "binary-test-token-0123456789")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    // AUTH is on by default: calls carry the service token.
    let mut client = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            Ok(c) => {
                break taskboard_proto::v1::task_service_client::TaskServiceClient::with_interceptor(
                    c,
                    |mut r: tonic::Request<()>| {
                        r.metadata_mut().insert(
                            "authorization",
                            "Bearer binary-test-token-0123456789".parse().unwrap(),
                        );
                        Ok(r)
                    },
                )
            }
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("binary never served: {e}"),
        }
    };
    let r = client
        .create_task(taskboard_proto::v1::CreateTaskRequest {
            board_id: 1,
            title: "via binary".into(),
            description: String::new(),
            created_by: 1,
            idempotency_key: None,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(r.into_inner().seq, 1);
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .expect("exited in time")
        .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn help_lists_the_original_env_vars_and_bad_sslmode_exits_64() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskboard-tasks"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for var in [
        "PORT",
        "DB_HOST",
        "DB_PORT",
        "DB_USER",
        "DB_PASSWORD",
        "DB_NAME",
        "DATABASE_URL",
        "NATS_URL",
        "METRICS_PORT",
        "DB_POOL_SIZE",
    ] {
        assert!(help.contains(var), "--help does not mention {var}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskboard-tasks"))
        .env_clear()
        .env("DB_SSLMODE", "require")
        .env("AUTH", "off")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    // Authentication is on unless turned off, and then it needs its token.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_taskboard-tasks"))
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SERVICE_TOKEN") && err.contains("AUTH=off"),
        "{err}"
    );
}

#[tokio::test]
async fn event_payloads_are_the_text_the_previous_release_wrote() {
    // The statements build the JSON inline; `taskboard_event_payload` (migration 0001) is what
    // earlier releases wrote, and subscribers parse both.
    let mut t = spawn().await;
    let (task, _) = t.create(5, "same \"text\" ✓").await;
    t.client
        .update_task(taskboard_proto::v1::UpdateTaskRequest {
            id: task.id,
            title: None,
            description: Some("line\nbreak".into()),
            completed: Some(true),
            expected_version: None,
            ..Default::default()
        })
        .await
        .unwrap();
    let db = t.db().await;
    // The task as each event saw it: the update's row is the current one.
    let (created, updated): (String, String) = {
        let rows = db
            .query(
                "SELECT payload FROM events WHERE board_id = 5 ORDER BY seq",
                &[],
            )
            .await
            .unwrap();
        (rows[0].get(0), rows[1].get(0))
    };
    let expected: String = db
        .query_one(
            "SELECT taskboard_event_payload('updated', 2, t) FROM tasks t WHERE id = $1",
            &[&task.id],
        )
        .await
        .unwrap()
        .get(0);
    // Byte for byte but for `timestamp` (the transaction's time, a different one here).
    let cut = |s: &str| {
        s[..s.find("\"timestamp\"").unwrap()].to_owned() + &s[s.find(", \"seq\"").unwrap()..]
    };
    assert_eq!(cut(&updated), cut(&expected));
    assert!(created.starts_with("{\"type\" : \"created\""), "{created}");
}
