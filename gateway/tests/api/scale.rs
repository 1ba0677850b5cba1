//! Scale-out: each gateway subscribes to the boards its clients watch (not to every event), the
//! subscribe window loses nothing, lingering subscriptions are dropped, and the mixed versions of
//! a rolling upgrade still deliver every event once.
use std::time::Duration;

use futures_util::StreamExt;
use taskboard_tasks::testing::{self, TcpProxy};

use crate::helpers::*;

/// Waits until the gateway's `name` metric reads `want`.
async fn metric_reaches(app: &TestApp, name: &str, want: f64) -> bool {
    eventually(WAIT, || async {
        metric(app.metrics_addr, name).await == want
    })
    .await
}

#[tokio::test]
async fn events_committed_while_a_boards_subscription_is_being_made_are_delivered_at_once() {
    let tc = testing::test_config().await;
    let nats = tc.nats_url.clone();
    let tasks = testing::spawn_tasks(tc).await;
    let prefix = tasks.subject_prefix.clone();
    // The gateway's link to NATS goes through a proxy that can stall it; the periodic head check
    // is a minute away, so only the subscription's own window check can bring the events.
    let proxy = TcpProxy::start(testing::socket_addr_of(&nats)).await;
    let mut cfg = gw_config(
        &tasks.grpc_addr(),
        &prefix,
        &format!("nats://{}", proxy.addr),
    );
    cfg.event_check_interval_ms = 60_000;
    let mut app = spawn_gateway(cfg).await;
    app.tasks = Some(tasks);
    app.wait_ready().await;

    let watcher = async_nats::connect(&nats).await.unwrap();
    let mut published = watcher
        .subscribe(taskboard_proto::nats::board_interest(&prefix, 31))
        .await
        .unwrap();
    watcher.flush().await.unwrap();

    proxy.hold();
    // The client is in (its 101 answered) but the gateway's SUB for board 31 is held back.
    let mut ws = app.ws("board_id=31").await;
    app.create(31, "in the window 1").await;
    app.create(31, "in the window 2").await;
    for _ in 0..2 {
        tokio::time::timeout(WAIT, published.next())
            .await
            .expect("published while the gateway could not subscribe")
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.release();

    let got = tokio::time::timeout(Duration::from_secs(5), ws.events(2))
        .await
        .expect("delivered once the subscription is confirmed, not at the next periodic check")
        .unwrap();
    assert_eq!(got.iter().map(seq).collect::<Vec<_>>(), [1, 2], "in order");
    app.create(31, "live").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 3);
    ws.expect_silence(Duration::from_millis(300)).await;
    assert!(metric(app.metrics_addr, "taskboard_events_window_total").await >= 2.0);
}

#[tokio::test]
async fn a_boards_subscription_lingers_briefly_after_its_last_client_then_is_dropped() {
    let app = spawn_app_with(|_| {}, |g| g.nats_unsubscribe_linger_ms = 400).await;
    let subs = "taskboard_nats_board_subscriptions";
    let received = "taskboard_nats_messages_received_total";
    let mut ws = app.ws("board_id=41").await;
    assert!(metric_reaches(&app, subs, 1.0).await, "subscribed");
    app.create(41, "one").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 1);
    assert_eq!(metric(app.metrics_addr, received).await, 1.0);

    // A page that reconnects at once keeps the subscription (no new window).
    ws.close().await;
    let mut ws = app.ws("board_id=41").await;
    app.create(41, "two").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 2);
    assert_eq!(metric(app.metrics_addr, subs).await, 1.0);
    ws.close().await;

    // Past the linger it is dropped: the board's events no longer reach this gateway.
    assert!(metric_reaches(&app, subs, 0.0).await, "unsubscribed");
    app.create(41, "nobody here").await;
    let nats = async_nats::connect(testing::nats_url()).await.unwrap();
    let mut rt = taskboard_proto::nats::RoundTrip::new(&nats).await.unwrap();
    assert!(rt.confirm(&nats, WAIT).await.unwrap());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(app.metrics_addr, received).await,
        2.0,
        "not received"
    );

    // A later client starts from the board's head and follows it.
    let mut ws = app.ws("board_id=41").await;
    app.create(41, "four").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 4);
    ws.expect_silence(Duration::from_millis(300)).await;
}

/// What the NATS server sent each connection, and its subscriptions (`/connz?subs=1`).
async fn connections(nats: &testing::PrivateNats) -> Vec<(u64, Vec<String>)> {
    let url = format!("http://127.0.0.1:{}/connz?subs=1", nats.monitor_port);
    let body: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    body["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let subs = c["subscriptions_list"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .filter_map(|s| s.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            (c["out_msgs"].as_u64().unwrap(), subs)
        })
        .collect()
}

#[tokio::test]
async fn two_gateways_each_receive_only_their_own_boards_and_an_older_one_still_gets_everything_once(
) {
    // A NATS server of this test's own, so its monitoring counts only these connections.
    let server = testing::PrivateNats::start().await;
    let mut tc = testing::test_config().await;
    tc.nats_url = server.url();
    let tasks = testing::spawn_tasks(tc).await;
    let prefix = tasks.subject_prefix.clone();
    let gateway = |tune: fn(&mut taskboard_gateway::Config)| {
        let mut c = gw_config(&tasks.grpc_addr(), &prefix, &server.url());
        tune(&mut c);
        spawn_gateway(c)
    };
    let a = gateway(|_| {}).await;
    let b = gateway(|_| {}).await;
    // A gateway from before per-board subjects: everything under the prefix.
    let old = gateway(|c| c.nats_subscribe = "wildcard".into()).await;
    for g in [&a, &b, &old] {
        g.wait_ready().await;
    }
    let mut on_a = a.ws("board_id=51").await;
    let mut on_b = b.ws("board_id=52").await;
    let mut on_old = old.ws("").await;
    for i in 0..10 {
        a.create(51, &format!("a{i}")).await;
        a.create(52, &format!("b{i}")).await;
    }
    let seqs = |v: Vec<serde_json::Value>| v.iter().map(seq).collect::<Vec<_>>();
    let want: Vec<i64> = (1..=10).collect();
    assert_eq!(seqs(on_a.events(10).await.unwrap()), want);
    assert_eq!(seqs(on_b.events(10).await.unwrap()), want);
    let all = on_old.events(20).await.unwrap();
    for board in [51, 52] {
        let of: Vec<i64> = all
            .iter()
            .filter(|e| e["board_id"] == board)
            .map(seq)
            .collect();
        assert_eq!(of, want, "board {board} once each, in order");
    }
    for ws in [&mut on_a, &mut on_b, &mut on_old] {
        ws.expect_silence(Duration::from_millis(300)).await;
    }
    // What the server sent each gateway: its own board's 10 events, plus its round trips'
    // echoes; the older gateway all 20 once, on their legacy subjects (the board subjects lie
    // outside `<prefix>.>`, so the Go original's api-gateway, which does not deduplicate, gets
    // no second copy either).
    let conns = connections(&server).await;
    let of = |subject: String| {
        conns
            .iter()
            .find(|(_, subs)| subs.contains(&subject))
            .unwrap_or_else(|| panic!("nobody subscribes {subject}: {conns:?}"))
    };
    let (to_a, subs_a) = of(taskboard_proto::nats::board_interest(&prefix, 51));
    let (to_b, subs_b) = of(taskboard_proto::nats::board_interest(&prefix, 52));
    let (to_old, _) = of(taskboard_proto::nats::wildcard(&prefix));
    let events = |subs: &Vec<String>| subs.iter().filter(|s| s.starts_with("board.")).count();
    assert_eq!(events(subs_a), 1, "a: only board 51 {subs_a:?}");
    assert_eq!(events(subs_b), 1, "b: only board 52 {subs_b:?}");
    assert!((10..=14).contains(to_a), "a was sent {to_a}");
    assert!((10..=14).contains(to_b), "b was sent {to_b}");
    assert!(
        (20..=24).contains(to_old),
        "the older gateway was sent {to_old}"
    );
    drop(tasks);
}

#[tokio::test]
async fn an_all_boards_client_makes_its_gateway_subscribe_to_every_board_until_it_leaves() {
    let app = spawn_app_with(|_| {}, |g| g.nats_unsubscribe_linger_ms = 200).await;
    let received = "taskboard_nats_messages_received_total";
    // Answered once the gateway's subscription to every board is confirmed: an event committed
    // right after the 101 arrives.
    let mut all = app.ws("").await;
    app.create(61, "x").await;
    app.create(62, "y").await;
    let got = all.events(2).await.unwrap();
    assert_eq!(
        got.iter()
            .map(|e| e["board_id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [61, 62]
    );
    all.close().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    app.create(63, "z").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        metric(app.metrics_addr, received).await,
        2.0,
        "dropped after the linger"
    );
}

#[tokio::test]
async fn nats_url_takes_a_list_and_a_dead_entry_does_not_stop_either_service() {
    let dead = format!("nats://127.0.0.1:{}", testing::free_port());
    let list = format!("{dead}, {}", testing::nats_url());
    let app = spawn_app_with(|t| t.nats_url = list.clone(), |g| g.nats_url = list.clone()).await;
    let mut ws = app.ws("board_id=71").await;
    for i in 1..=3 {
        app.create(71, &format!("t{i}")).await;
    }
    let got = ws.events(3).await.unwrap();
    assert_eq!(got.iter().map(seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[tokio::test]
async fn an_all_boards_client_is_answered_once_the_subscription_to_every_board_is_confirmed() {
    let tc = testing::test_config().await;
    let nats = tc.nats_url.clone();
    let tasks = testing::spawn_tasks(tc).await;
    let proxy = TcpProxy::start(testing::socket_addr_of(&nats)).await;
    let cfg = gw_config(
        &tasks.grpc_addr(),
        &tasks.subject_prefix,
        &format!("nats://{}", proxy.addr),
    );
    let mut app = spawn_gateway(cfg).await;
    app.tasks = Some(tasks);
    app.wait_ready().await;
    proxy.hold();
    let connecting = tokio::spawn(ws_connect(app.addr, ""));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !connecting.is_finished(),
        "answered before the server had the subscription: events committed meanwhile would be lost"
    );
    proxy.release();
    let mut all = connecting.await.unwrap().unwrap();
    app.create(81, "right after the 101").await;
    assert_eq!(all.event().await.unwrap()["board_id"], 81);
}

#[tokio::test]
async fn a_client_joining_a_board_on_another_gateway_under_write_load_misses_nothing() {
    let app = spawn_app().await;
    let tasks = app.tasks.as_ref().unwrap();
    let other = spawn_gateway(gw_config(
        &tasks.grpc_addr(),
        &tasks.subject_prefix,
        &testing::nats_url(),
    ))
    .await;
    other.wait_ready().await;
    // Writes keep coming through the first gateway (whose watcher checks them all)...
    let mut load = crate::failover::Load::start(&app, &[98]).await;
    load.acked_at_least(20).await;
    // ...while a client joins the board on the second, which has no subscription for it yet.
    let mut late = other.ws("board_id=98").await;
    load.acked_at_least(load.acked() + 40).await;
    let (_, heads) = load.finish(&app).await;
    let head = heads[&98] as i64;
    let first = seq(&late.event().await.unwrap());
    let rest = late.events((head - first) as usize).await.unwrap();
    let got: Vec<i64> = std::iter::once(first).chain(rest.iter().map(seq)).collect();
    let want: Vec<i64> = (first..=head).collect();
    assert_eq!(
        got, want,
        "from where it joined to the head, once each, in order"
    );
    late.expect_silence(Duration::from_millis(300)).await;
}
