//! Faults on the task service's links: a stopped NATS server, a database that goes away, and a
//! backlog of many boards after an outage.
use std::time::Duration;

use taskboard_proto::v1;
use taskboard_tasks::testing::{self, eventually, PrivateNats, TcpProxy};

use crate::helpers::*;

/// Events of `board` behind its outbox cursor.
async fn unpublished(db: &tokio_postgres::Client, board: i64) -> Vec<i64> {
    db.query(
        "SELECT seq FROM events WHERE board_id = $1 AND seq > \
           COALESCE((SELECT published_seq FROM outbox_cursor WHERE board_id = $1), 0) \
         ORDER BY seq",
        &[&board],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

#[tokio::test]
async fn events_sent_into_a_stopped_nats_server_stay_behind_the_cursor() {
    let mut nats = PrivateNats::start().await;
    let url = nats.url();
    let mut t = spawn_with(|c| c.nats_url = url.clone()).await;
    let db = t.db().await;
    t.create(1, "before").await;
    assert!(
        eventually(WAIT, || async { unpublished(&db, 1).await.is_empty() }).await,
        "the first event is published"
    );

    // A stopped server still takes bytes into its socket buffer, so a flush succeeds; the
    // event was not delivered to anyone and must stay in the outbox.
    nats.pause();
    let (_, seq) = t.create(1, "into a stopped server").await;
    let marked = eventually(Duration::from_secs(3), || async {
        unpublished(&db, 1).await.is_empty()
    })
    .await;
    assert!(
        !marked,
        "event {seq} was marked published while NATS was stopped"
    );

    // The server dies; a new one comes up: the relay publishes the event again.
    nats.resume();
    nats.kill();
    nats.restart().await;
    assert!(
        eventually(WAIT, || async { unpublished(&db, 1).await.is_empty() }).await,
        "the event is published once NATS is back"
    );
}

#[tokio::test]
async fn after_an_outage_the_relay_interleaves_boards() {
    // The relay's scan query directly: 300 events of board 1 and one of board 2, unpublished.
    let url = testing::fresh_database().await;
    let pg: tokio_postgres::Config = url.parse().unwrap();
    taskboard_tasks::db::migrate(&pg).await.unwrap();
    let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    c.batch_execute(
        "INSERT INTO boards (id, last_seq) VALUES (1, 300), (2, 1); \
         INSERT INTO events (board_id, seq, kind, task_id, payload) \
           SELECT 1, s, 'created', s, '{}' FROM generate_series(1, 300) s; \
         INSERT INTO events (board_id, seq, kind, task_id, payload) VALUES (2, 1, 'created', 1, '{}')",
    )
    .await
    .unwrap();
    let pool = taskboard_tasks::db::pool(pg, 2, Duration::from_secs(5));
    assert!(
        taskboard_tasks::db::behind(&pool, 256, Duration::from_secs(60))
            .await
            .unwrap()
            .is_empty(),
        "within the grace the committing replica is trusted to publish"
    );
    let batch = taskboard_tasks::db::behind(&pool, 256, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(batch.len(), 256);
    assert!(
        batch.iter().any(|e| e.board_id == 2),
        "board 2 waits behind board 1's whole backlog"
    );
    let ones: Vec<i64> = batch
        .iter()
        .filter(|e| e.board_id == 1)
        .map(|e| e.seq)
        .collect();
    assert_eq!(ones, (1..=255).collect::<Vec<_>>(), "board 1 in order");
}

#[tokio::test]
async fn while_the_database_is_gone_calls_fail_fast_and_recover_by_themselves() {
    let proxy = TcpProxy::start(testing::socket_addr_of(&testing::pg_admin_url())).await;
    let mut t = spawn_with(|c| {
        let db = c.database_url.clone().unwrap();
        let name = db.rsplit('/').next().unwrap().to_owned();
        c.database_url = Some(format!("postgres://postgres@{}/{name}", proxy.addr));
        c.db_acquire_timeout_ms = 5000;
    })
    .await;
    t.create(1, "before").await;

    proxy.cut();
    let create = |client: &mut v1::task_service_client::TaskServiceClient<_>| {
        let mut c = client.clone();
        async move {
            let mut req = tonic::Request::new(v1::CreateTaskRequest {
                board_id: 1,
                title: "during".into(),
                description: String::new(),
                created_by: 1,
                idempotency_key: None,
                ..Default::default()
            });
            req.set_timeout(Duration::from_secs(5));
            let started = tokio::time::Instant::now();
            let r = c.create_task(req).await;
            (r.map(|_| ()).map_err(|s| s.code()), started.elapsed())
        }
    };
    // The first call may be the one that finds out (the probe checks every second); from then
    // on, answers are immediate.
    let (first, took) = create(&mut t.client).await;
    assert_eq!(first, Err(tonic::Code::Unavailable));
    assert!(
        took < Duration::from_secs(3),
        "the first call waited {took:?}"
    );
    for _ in 0..5 {
        let (r, took) = create(&mut t.client).await;
        assert_eq!(r, Err(tonic::Code::Unavailable));
        assert!(took < Duration::from_secs(1), "a call waited {took:?}");
    }

    proxy.restore();
    let mut recovered = false;
    for _ in 0..100 {
        if create(&mut t.client).await.0.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "never recovered after the database came back");
}

/// Pooled-connection checkouts so far (every query the service runs through its pool is one), from
/// the service's own /metrics.
async fn checkouts(t: &TestTasks) -> f64 {
    metric(t, "taskboard_db_pool_wait_seconds_count").await
}

async fn next_seq(s: &mut tonic::Streaming<v1::Event>) -> i64 {
    tokio::time::timeout(WAIT, futures_util::StreamExt::next(s))
        .await
        .expect("an event in time")
        .unwrap()
        .unwrap()
        .seq
}

#[tokio::test]
async fn idle_watch_streams_do_not_poll_the_database() {
    const STREAMS: usize = 50;
    let mut t = spawn().await;
    t.create(9, "before the streams").await;
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let s = t
            .client
            .watch_events(v1::WatchEventsRequest {
                board_id: 9,
                since_seq: 0,
            })
            .await
            .unwrap()
            .into_inner();
        streams.push(s);
    }
    // Every stream has read the log once and is now idle.
    for s in &mut streams {
        assert_eq!(next_seq(s).await, 1);
    }
    // A measurement window (not a wait for something): the relay's own rounds use the pool
    // meanwhile (~10 a second here); 50 streams polling every 200 ms would add ~500.
    let before = checkouts(&t).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = checkouts(&t).await - before;
    assert!(
        during < 100.0,
        "{during} queries in 2 s with {STREAMS} idle streams"
    );
    // And they still wake for a change.
    t.create(9, "wakes every stream").await;
    for s in &mut streams {
        assert_eq!(next_seq(s).await, 2);
    }
}

/// Reads (and ignores) what arrives until EOF or an error; `true` when the server closed the
/// connection within `within`.
async fn closed_by_server(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 256];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test]
async fn silent_sockets_on_the_grpc_port_are_closed_and_clients_still_get_in() {
    let mut t = spawn_with(|c| c.handshake_timeout_ms = 300).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(tokio::net::TcpStream::connect(t.handle.addr).await.unwrap());
    }
    for s in &mut idle {
        assert!(
            closed_by_server(s, WAIT).await,
            "a silent socket was kept open"
        );
    }
    // Real clients are not affected.
    let (task, _) = t.create(1, "still served").await;
    assert!(task.id > 0);
}

#[tokio::test]
async fn over_the_grpc_connection_cap_new_sockets_are_closed_at_once() {
    let t = spawn_with(|c| c.max_connections = 2).await;
    // Two open connections (the test's own client is one).
    let _second = connect(&t.handle).await;
    let mut third = tokio::net::TcpStream::connect(t.handle.addr).await.unwrap();
    assert!(
        closed_by_server(&mut third, Duration::from_secs(2)).await,
        "a connection over the cap was kept"
    );
}

#[tokio::test]
async fn one_connection_holds_at_most_max_streams_per_connection_streams() {
    let t = spawn_with(|c| c.max_streams_per_connection = 2).await;
    let watch = |board| {
        let mut c = t.client.clone();
        async move {
            c.watch_events(v1::WatchEventsRequest {
                board_id: board,
                since_seq: 0,
            })
            .await
            .map(tonic::Response::into_inner)
        }
    };
    let first = watch(1).await.expect("first stream");
    let _second = watch(2).await.expect("second stream");
    // The third waits for a free stream on this connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
    // instead of being served...
    let third = tokio::spawn(watch(3));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third stream was opened over the cap"
    );
    // ...and goes through once one ends.
    drop(first);
    tokio::time::timeout(WAIT, third)
        .await
        .expect("the third stream opens once a slot frees")
        .unwrap()
        .expect("third stream");
}

#[tokio::test]
async fn events_committed_while_nats_is_away_go_out_when_it_is_back_without_the_scan() {
    let mut nats = PrivateNats::start().await;
    let url = nats.url();
    // The scan runs once at start, then not for a minute: only this replica's own retry is left.
    let mut t = spawn_with(|c| {
        c.nats_url = url.clone();
        c.relay_poll_interval_ms = 60_000;
    })
    .await;
    let db = t.db().await;
    t.create(1, "before").await;
    assert!(
        eventually(WAIT, || async { unpublished(&db, 1).await.is_empty() }).await,
        "the first event is published"
    );
    nats.kill();
    let (_, seq) = t.create(1, "while NATS is away").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        unpublished(&db, 1).await,
        [seq],
        "not published while NATS is away"
    );
    nats.restart().await;
    assert!(
        eventually(WAIT, || async { unpublished(&db, 1).await.is_empty() }).await,
        "published (and confirmed) once NATS is back"
    );
}
