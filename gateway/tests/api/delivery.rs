//! Nothing committed is lost on the way to a subscriber: a fresh gateway's first events, a cut
//! NATS link, a quiet board, a backlog after an outage, a client whose socket stays full, and
//! events from the Go original's task service (no headers, no seq).
use std::time::Duration;

use serde_json::{json, Value};
use taskboard_tasks::testing::{self, TcpProxy};

use crate::helpers::*;

/// A gateway whose NATS link goes through a proxy the test can cut, in front of a task service
/// that talks to NATS directly.
async fn app_behind_proxy(
    tune_gw: impl FnOnce(&mut taskboard_gateway::Config),
) -> (TestApp, TcpProxy) {
    let proxy = TcpProxy::start(testing::socket_addr_of(&testing::nats_url())).await;
    let url = format!("nats://{}", proxy.addr);
    let app = spawn_app_with(
        |_| {},
        |g| {
            g.nats_url = url;
            tune_gw(g);
        },
    )
    .await;
    (app, proxy)
}

/// Waits until the gateway's `/ready` says NATS is down.
async fn nats_down(app: &TestApp) -> bool {
    eventually(WAIT, || async {
        let r = app.http.get(app.url("/ready")).send().await.unwrap();
        if r.status() != 503 {
            return false;
        }
        let b: Value = r.json().await.unwrap();
        b["message"]
            .as_str()
            .is_some_and(|m| m.contains("nats: disconnected") || m.contains("nats: pending"))
    })
    .await
}

/// Reads events until `n` of them with a seq have arrived; returns their seqs in order.
async fn seqs(ws: &mut Ws, n: usize) -> Vec<i64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match ws.next().await {
            Ok(Next::Event(e)) => out.push(seq(&e)),
            Ok(Next::Close(c, r)) => panic!("closed with {c} ({r}) after {out:?}"),
            Err(e) => panic!("after {out:?}: {e}"),
        }
    }
    out
}

#[tokio::test]
async fn a_fresh_gateway_delivers_every_event_from_the_first_100_times_in_a_row() {
    const TRIES: i64 = 100;
    const EVENTS: i64 = 20;
    let tc = testing::test_config().await;
    let nats = tc.nats_url.clone();
    let tasks = testing::spawn_tasks(tc).await;
    for attempt in 1..=TRIES {
        // A gateway that has just started (not waited for), a client on a new board at once,
        // then a burst of creates through it.
        let mut app =
            spawn_gateway(gw_config(&tasks.grpc_addr(), &tasks.subject_prefix, &nats)).await;
        let mut ws = loop {
            match ws_connect(app.addr, &format!("board_id={attempt}")).await {
                Ok(ws) => break ws,
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        };
        for i in 0..EVENTS {
            let r = app
                .http
                .post(app.url("/api/tasks"))
                .json(&json!({"board_id": attempt, "title": format!("t{i}")}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201, "try {attempt}");
        }
        assert_eq!(
            seqs(&mut ws, EVENTS as usize).await,
            (1..=EVENTS).collect::<Vec<_>>(),
            "try {attempt}"
        );
        ws.close().await;
        app.stop_gateway().await.unwrap();
    }
}

/// A NATS server that completes the handshake and answers pings (so the client reports itself
/// connected) but never processes a subscription or delivers a message.
async fn deaf_nats() -> std::net::SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = s.into_split();
                let info = r#"INFO {"server_id":"deaf","version":"2.9.0","proto":1,"headers":true,"max_payload":1048576}"#;
                if w.write_all(format!("{info}\r\n").as_bytes()).await.is_err() {
                    return;
                }
                let mut lines = BufReader::new(r).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if line.starts_with("PING") && w.write_all(b"PONG\r\n").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn ready_waits_for_the_server_to_confirm_the_event_subscription() {
    let tc = testing::test_config().await;
    let tasks = testing::spawn_tasks(tc).await;
    let nats = format!("nats://{}", deaf_nats().await);
    let app = spawn_gateway(gw_config(&tasks.grpc_addr(), &tasks.subject_prefix, &nats)).await;
    // The task service answers and the NATS connection is up, yet the subscription is never
    // confirmed: not ready, and it says why.
    let said_why = eventually(WAIT, || async {
        let r = app.http.get(app.url("/ready")).send().await.unwrap();
        if r.status() != 503 {
            return false;
        }
        let b: Value = r.json().await.unwrap();
        b["message"] == "nats: event subscription not confirmed yet"
    })
    .await;
    assert!(said_why, "ready before the subscription was confirmed");
    let r = app.http.get(app.url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
}

#[tokio::test]
async fn ready_accepts_a_task_service_without_the_grpc_health_service() {
    // A gRPC server with no health service (as the Go original's): any answer to a plain call
    // means it is up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(taskboard_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(reflection)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let app = spawn_gateway(gw_config(
        &addr.to_string(),
        &testing::unique("tbt"),
        &testing::nats_url(),
    ))
    .await;
    app.wait_ready().await;
}

#[tokio::test]
async fn a_quiet_watched_board_gets_what_was_committed_while_the_gateways_nats_link_was_cut() {
    // Periodic checks far away: this is the reconnect's job.
    let (app, proxy) = app_behind_proxy(|g| g.event_check_interval_ms = 600_000).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(app.ws("board_id=31").await);
    }
    proxy.cut();
    assert!(nats_down(&app).await, "the gateway never noticed the cut");
    app.create(31, "while cut").await;
    proxy.restore();
    for ws in &mut clients {
        let e = ws.event().await.expect("the event after the reconnect");
        assert_eq!((seq(&e), e["title"].as_str()), (1, Some("while cut")));
    }
}

#[tokio::test]
async fn an_event_lost_without_any_disconnect_arrives_within_two_check_intervals() {
    // The task service publishes on other subjects than the gateway reads: every event is
    // "lost" on the way, and only the periodic head check can bring it.
    let mut tc = testing::test_config().await;
    let gw_prefix = testing::unique("tbt_gw");
    tc.nats_subject_prefix = testing::unique("tbt_elsewhere");
    let nats = tc.nats_url.clone();
    let tasks = testing::spawn_tasks(tc).await;
    let mut cfg = gw_config(&tasks.grpc_addr(), &gw_prefix, &nats);
    cfg.event_check_interval_ms = 300;
    let app = spawn_gateway(cfg).await;
    app.wait_ready().await;
    let mut ws = app.ws("board_id=4").await;
    app.create(4, "lost 1").await;
    app.create(4, "lost 2").await;
    assert_eq!(seqs(&mut ws, 2).await, [1, 2]);
    assert!(metric(app.metrics_addr, "taskboard_events_recovered_total").await >= 2.0);
}

#[tokio::test]
async fn a_backlog_after_an_outage_reaches_prompt_readers_without_1013() {
    const BACKLOG: i64 = 100;
    // A queue far smaller than the backlog.
    let (app, proxy) = app_behind_proxy(|g| {
        g.ws_queue = 16;
        g.event_check_interval_ms = 600_000;
    })
    .await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(app.ws("board_id=8").await);
    }
    app.create(8, "before").await;
    for ws in &mut clients {
        assert_eq!(seqs(ws, 1).await, [1]);
    }
    proxy.cut();
    assert!(nats_down(&app).await, "the gateway never noticed the cut");
    for i in 0..BACKLOG {
        app.create(8, &format!("during {i}")).await;
    }
    proxy.restore();
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut ws| tokio::spawn(async move { seqs(&mut ws, BACKLOG as usize).await }))
        .collect();
    // `seqs` fails on a close frame: none of them is closed with 1013.
    for r in readers {
        assert_eq!(r.await.unwrap(), (2..=BACKLOG + 1).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn a_client_whose_socket_stays_full_gets_1013_with_a_usable_hint_and_is_counted() {
    const N: i64 = 60;
    let app = spawn_app_with(
        |_| {},
        |g| {
            g.ws_write_timeout_ms = 300;
            g.ws_send_buffer = Some(4096);
        },
    )
    .await;
    // A tiny receive window, and no reading until the server gave up.
    let mut stuck = ws_small_window(app.addr, "board_id=9").await;
    let desc = "y".repeat(3000);
    for i in 0..N {
        let r = app
            .http
            .post(app.url("/api/tasks"))
            .json(&json!({"board_id": 9, "title": format!("big {i}"), "description": desc}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert!(
        eventually(WAIT, || async {
            metric(app.metrics_addr, "taskboard_ws_slow_consumers_total").await >= 1.0
        })
        .await,
        "the write timeout was not counted as a slow consumer"
    );
    // Now read: whole events in order, then the close frame.
    let mut got = Vec::new();
    let (code, reason) = loop {
        match stuck
            .next()
            .await
            .expect("frames, then a close frame (not a reset)")
        {
            Next::Event(e) => got.push(seq(&e)),
            Next::Close(c, r) => break (c, r),
        }
    };
    assert_eq!(code, 1013, "{reason}");
    assert_eq!(got, (1..=got.len() as i64).collect::<Vec<_>>());
    let last = got.last().copied().unwrap_or(0);
    assert!(reason.ends_with(&format!("since={last}")), "{reason}");
    let mut again = app.ws(&format!("board_id=9&since={last}")).await;
    assert_eq!(
        seqs(&mut again, (N - last) as usize).await,
        ((last + 1)..=N).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn header_less_events_of_the_original_are_delivered_without_breaking_the_seq() {
    // In front of the Go original's task service (which publishes only `<prefix>.<kind>`), a
    // gateway subscribes to everything.
    let app = spawn_app_with(|_| {}, |g| g.nats_subscribe = "wildcard".into()).await;
    let prefix = app.tasks.as_ref().unwrap().subject_prefix.clone();
    let mut ws = app.ws("board_id=12").await;
    let mut all = app.ws("").await;
    app.create(12, "ours 1").await;
    for ws in [&mut ws, &mut all] {
        assert_eq!(seq(&ws.event().await.unwrap()), 1);
    }
    // Exactly what the Go original's task service publishes: no headers, its own JSON.
    let original = json!({"type": "created", "task_id": 99, "board_id": 12, "title": "from the original",
                          "completed": null, "timestamp": 1_795_801_831});
    let nats = async_nats::connect(testing::nats_url()).await.unwrap();
    // Not routable (no headers and no board): dropped, and counted.
    nats.publish(format!("{prefix}.created"), "{}".into())
        .await
        .unwrap();
    nats.publish(format!("{prefix}.created"), original.to_string().into())
        .await
        .unwrap();
    nats.flush().await.unwrap();
    for ws in [&mut ws, &mut all] {
        let legacy: Value = ws.event().await.unwrap();
        assert_eq!(legacy, original, "passed on verbatim");
    }
    app.create(12, "ours 2").await;
    for ws in [&mut ws, &mut all] {
        assert_eq!(
            seq(&ws.event().await.unwrap()),
            2,
            "the seq goes on unbroken"
        );
    }
    ws.expect_silence(Duration::from_millis(300)).await;
    assert!(metric(app.metrics_addr, "taskboard_nats_unsequenced_total").await >= 1.0);
    assert!(metric(app.metrics_addr, "taskboard_nats_dropped_total").await >= 1.0);
}

#[tokio::test]
async fn frames_the_fan_out_begins_and_the_session_finishes_arrive_whole_and_in_order() {
    const N: i64 = 40;
    // Small buffers both ways and frames larger than either: the fan-out's direct writes to
    // this idle subscriber are cut short, and its session finishes them.
    let app = spawn_app_with(|_| {}, |g| g.ws_send_buffer = Some(4096)).await;
    let mut slow = ws_small_window(app.addr, "board_id=10").await;
    let http = app.http.clone();
    let url = app.url("/api/tasks");
    let creates = tokio::spawn(async move {
        for i in 0..N {
            let desc = format!("{i:>4}").repeat(1500);
            let r = http
                .post(&url)
                .json(&json!({"board_id": 10, "title": format!("big {i}"), "description": desc}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    });
    for want in 1..=N {
        // A reader a little slower than the writer.
        tokio::time::sleep(Duration::from_millis(3)).await;
        let Next::Event(e) = slow.next().await.unwrap() else {
            panic!("closed before event {want}");
        };
        assert_eq!(seq(&e), want);
        let desc = e["task"]["description"].as_str().unwrap();
        assert_eq!(
            desc,
            format!("{:>4}", want - 1).repeat(1500),
            "event {want} whole"
        );
    }
    creates.await.unwrap();
    assert!(metric(app.metrics_addr, "taskboard_ws_direct_writes_total").await >= 1.0);
    assert_eq!(
        metric(app.metrics_addr, "taskboard_ws_slow_consumers_total").await,
        0.0
    );
}
