//! Live events over a real WebSocket: order, filters, concurrency, resume, slow consumers.
use std::collections::BTreeSet;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn create_update_delete_arrive_in_order_with_contiguous_seq() {
    let app = spawn_app().await;
    let mut ws = app.ws("board_id=1").await;
    let t = app.create(1, "Real-time test").await;
    let id = t["id"].as_i64().unwrap();
    app.update(id, json!({"completed": true})).await;
    app.delete(id).await;

    let evs = ws.events(3).await.unwrap();
    let kinds: Vec<_> = evs.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["created", "updated", "deleted"]);
    assert_eq!(evs.iter().map(seq).collect::<Vec<_>>(), [1, 2, 3]);
    for e in &evs {
        // The original's fields, plus seq and the full task.
        assert_eq!(e["task_id"], id);
        assert_eq!(e["board_id"], 1);
        assert_eq!(e["title"], "Real-time test");
        assert!(e["timestamp"].as_i64().unwrap() > 1_700_000_000);
        assert_eq!(e["task"]["id"], id);
        assert_eq!(e["task"]["description"], "d");
        assert_eq!(e["task"]["created_by"], 100);
    }
    assert_eq!(
        evs[0]["completed"], false,
        "completed is a real boolean, never null"
    );
    assert_eq!(evs[1]["completed"], true);
    assert_eq!(
        evs[0]["task"]["created_at"], t["created_at"],
        "same timestamp text as REST"
    );
}

#[tokio::test]
async fn a_board_filter_sees_only_its_board_and_no_filter_sees_all() {
    let app = spawn_app().await;
    let mut two = app.ws("board_id=2").await;
    let mut all = app.ws("").await;
    let mut both = app.ws("board_id=1&board_id=2").await;
    app.create(1, "on one").await;
    app.create(2, "on two").await;
    let e = two.event().await.unwrap();
    assert_eq!(
        (e["board_id"].as_i64(), e["title"].as_str()),
        (Some(2), Some("on two"))
    );
    let a = all.events(2).await.unwrap();
    assert_eq!(
        a.iter()
            .map(|e| e["board_id"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        [1, 2]
    );
    let b = both.events(2).await.unwrap();
    assert_eq!(b.len(), 2);
    two.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn two_hundred_concurrent_creates_give_seq_1_to_200_exactly_once() {
    let app = spawn_app().await;
    let mut ws = app.ws("board_id=9").await;
    let mut joins = Vec::new();
    for i in 0..200 {
        let http = app.http.clone();
        let url = app.url("/api/tasks");
        joins.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"board_id": 9, "title": format!("c{i}"), "created_by": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }));
    }
    for j in joins {
        j.await.unwrap();
    }
    let evs = ws.events(200).await.unwrap();
    let seqs: Vec<i64> = evs.iter().map(seq).collect();
    assert_eq!(
        seqs,
        (1..=200).collect::<Vec<_>>(),
        "in order, no gap, no duplicate"
    );
    let ids: BTreeSet<i64> = evs.iter().map(|e| e["task_id"].as_i64().unwrap()).collect();
    assert_eq!(ids.len(), 200);
    ws.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn resume_with_since_replays_what_was_missed_then_continues_live() {
    let app = spawn_app().await;
    let mut ws = app.ws("board_id=3").await;
    for i in 0..3 {
        app.create(3, &format!("before {i}")).await;
    }
    let first = ws.events(3).await.unwrap();
    assert_eq!(seq(&first[2]), 3);
    ws.close().await;

    // Committed while disconnected.
    for i in 0..3 {
        app.create(3, &format!("while away {i}")).await;
    }
    let mut ws = app.ws("board_id=3&since=3").await;
    app.create(3, "after").await;
    let evs = ws.events(4).await.unwrap();
    assert_eq!(evs.iter().map(seq).collect::<Vec<_>>(), [4, 5, 6, 7]);
    assert_eq!(evs[3]["title"], "after");
    ws.expect_silence(Duration::from_millis(300)).await;

    // The per-board form, and since=0 from the start.
    let mut ws = app.ws("board_id=3&board_id=4&since=3:5").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 6);
    assert_eq!(seq(&ws.event().await.unwrap()), 7);
    let mut ws = app.ws("board_id=3&since=0").await;
    assert_eq!(
        ws.events(7)
            .await
            .unwrap()
            .iter()
            .map(seq)
            .collect::<Vec<_>>(),
        (1..=7).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_since_beyond_the_board_head_gets_a_reset() {
    let app = spawn_app().await;
    app.create(5, "only").await;
    let mut ws = app.ws("board_id=5&since=40").await;
    let e = ws.event().await.unwrap();
    assert_eq!(e, json!({"type": "reset", "board_id": 5, "seq": 1}));
    app.create(5, "next").await;
    assert_eq!(seq(&ws.event().await.unwrap()), 2);
}

#[tokio::test]
async fn bad_ws_queries_are_400_before_the_upgrade() {
    let app = spawn_app().await;
    for q in ["board_id=abc", "since=4", "board_id=1&since=x"] {
        // A real upgrade request: the answer must be a 400 with the JSON error body, not 101.
        let r = app
            .http
            .get(app.url(&format!("/ws?{q}")))
            .header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
            .header("Sec-WebSocket-Version", "13")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{q}");
        let b: serde_json::Value = r.json().await.unwrap();
        assert_eq!(b["code"], "invalid_argument", "{q}: {b}");
        assert!(
            b["error"].as_str().unwrap().starts_with("Invalid"),
            "{q}: {b}"
        );
        // And the WebSocket client sees its handshake refused.
        assert!(ws_connect(app.addr, q).await.is_err(), "{q}");
    }
}

#[tokio::test]
async fn a_slow_subscriber_is_closed_with_1013_while_a_fast_one_gets_everything() {
    const N: i64 = 120;
    // A small queue and a small socket buffer make "slow" quick to reach (32 events of ~2 KB: far
    // below the 120 sent, yet room for the fast client on a loaded 2-core machine).
    let app = spawn_app_with(
        |_| {},
        |g| {
            g.ws_queue = 32;
            g.ws_send_buffer = Some(4096);
        },
    )
    .await;
    let mut fast = app.ws("board_id=6").await;

    // The slow client: a tiny receive window, and it does not read until the end.
    let mut slow = ws_small_window(app.addr, "board_id=6").await;

    let desc = "x".repeat(2000);
    let fast_reader = tokio::spawn(async move {
        let evs = fast.events(N as usize).await.unwrap();
        evs.iter().map(seq).collect::<Vec<_>>()
    });
    for i in 0..N {
        let r = app
            .http
            .post(app.url("/api/tasks"))
            .json(&json!({"board_id": 6, "title": format!("bulk {i}"), "description": desc, "created_by": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(fast_reader.await.unwrap(), (1..=N).collect::<Vec<_>>());

    // Now read the slow one: some events, then a 1013 close that says where to resume.
    let mut got = Vec::new();
    let (code, reason) = loop {
        match slow.next().await.unwrap() {
            Next::Event(e) => got.push(seq(&e)),
            Next::Close(c, r) => break (c, r),
        }
    };
    assert_eq!(code, 1013, "reason: {reason}");
    assert!(
        (got.len() as i64) < N,
        "the slow client cannot have received everything"
    );
    assert_eq!(
        got,
        (1..=got.len() as i64).collect::<Vec<_>>(),
        "what it got was in order"
    );
    let last = got.last().copied().unwrap_or(0);
    assert!(reason.contains(&format!("since={last}")), "{reason}");

    // Resuming from there gets the rest, exactly.
    let mut again = app.ws(&format!("board_id=6&since={last}")).await;
    let rest = again.events((N - last) as usize).await.unwrap();
    assert_eq!(
        rest.iter().map(seq).collect::<Vec<_>>(),
        ((last + 1)..=N).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_client_that_stops_answering_pings_is_dropped() {
    let app = spawn_app_with(|_| {}, |g| g.ws_ping_interval_ms = 200).await;
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let ws = ws_handshake(stream, app.addr, "board_id=1").await.unwrap();
    // Never read again: no pongs. The server must close the TCP connection.
    let mut raw = ws.into_inner();
    let mut buf = vec![0u8; 4096];
    let mut saw_ping = false;
    let closed = tokio::time::timeout(WAIT, async {
        use tokio::io::AsyncReadExt;
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => saw_ping |= buf[..n].contains(&0x89),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "server kept a silent client");
    assert!(saw_ping, "the server pinged before giving up");
    // A client that answers pings stays connected across several intervals.
    let mut ok = app.ws("board_id=1").await;
    // Reading answers pings; three intervals pass.
    ok.expect_silence(Duration::from_millis(700)).await;
    app.create(1, "still here").await;
    assert_eq!(ok.event().await.unwrap()["title"], "still here");
}

#[tokio::test]
async fn a_client_breaking_the_protocol_gets_1002_and_a_ping_gets_a_pong() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let mut raw = raw_websocket(&app, "board_id=1").await;
    // A masked ping with payload "hi": the answer is an unmasked pong with the same payload.
    let mask = [1u8, 2, 3, 4];
    let mut ping = vec![0x89, 0x82];
    ping.extend_from_slice(&mask);
    ping.extend(b"hi".iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    raw.write_all(&ping).await.unwrap();
    let mut head = [0u8; 4];
    tokio::time::timeout(WAIT, raw.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head, [0x8A, 0x02, b'h', b'i']);
    // An unmasked frame from a client is a protocol error: close 1002.
    raw.write_all(&[0x81, 0x01, b'x']).await.unwrap();
    assert_eq!(close_code(&mut raw).await, 1002);
}

/// A WebSocket after its handshake, as the raw upgraded stream (to send what no client library
/// would).
async fn raw_websocket(app: &TestApp, query: &str) -> TokioIo<hyper::upgrade::Upgraded> {
    let stream = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    ws_handshake(stream, app.addr, query)
        .await
        .unwrap()
        .into_inner()
}

/// Reads the server's close frame; its code.
async fn close_code(raw: &mut TokioIo<hyper::upgrade::Upgraded>) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut close = [0u8; 4];
    tokio::time::timeout(WAIT, raw.read_exact(&mut close))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(close[0], 0x88, "a close frame");
    u16::from_be_bytes([close[2], close[3]])
}

#[tokio::test]
async fn a_text_message_that_is_not_utf8_gets_1007() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let mut raw = raw_websocket(&app, "board_id=1").await;
    let mask = [9u8, 8, 7, 6];
    let mut text = vec![0x81, 0x82];
    text.extend_from_slice(&mask);
    text.extend(
        [0xC3u8, 0x28]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4]),
    );
    raw.write_all(&text).await.unwrap();
    assert_eq!(close_code(&mut raw).await, 1007);
}

#[tokio::test]
async fn resuming_in_the_middle_of_a_burst_gives_every_event_once() {
    // Events commit while the connection subscribes and replays: the live feed and the replay
    // overlap, and the overlap must be delivered once, in order.
    const N: i64 = 60;
    let app = spawn_app().await;
    let http = app.http.clone();
    let url = app.url("/api/tasks");
    let writer = tokio::spawn(async move {
        for i in 0..N {
            let r = http
                .post(&url)
                .json(&json!({"board_id": 12, "title": format!("burst {i}"), "created_by": 1}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
    });
    // Join part-way through the burst, from the beginning of the board.
    let mut probe = app.ws("board_id=12").await;
    for _ in 0..N / 3 {
        probe.event().await.unwrap();
    }
    let mut ws = app.ws("board_id=12&since=0").await;
    writer.await.unwrap();
    let evs = ws.events(N as usize).await.unwrap();
    assert_eq!(
        evs.iter().map(seq).collect::<Vec<_>>(),
        (1..=N).collect::<Vec<_>>()
    );
    ws.expect_silence(Duration::from_millis(300)).await;
}

/// The event JSON is built in SQL (once per event), the REST JSON in Rust: every field of the
/// event's `task` must equal the REST answer, for every kind of event.
#[tokio::test]
async fn event_payloads_and_rest_answers_agree_on_every_field_of_every_kind() {
    let app = spawn_app().await;
    let mut ws = app.ws("board_id=21").await;
    let created = app.create(21, "two encoders <&> \"quoted\" é").await;
    let e = ws.event().await.unwrap();
    assert_eq!(e["type"], "created");
    assert_eq!(e["task"], created, "created");

    let r = app
        .update(
            created["id"].as_i64().unwrap(),
            serde_json::json!({"completed": true, "description": "line\nbreak\ttab",
                               "assignee": 7, "due_at": "2027-03-04T05:06:07.000008Z",
                               "position": 2.5}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let updated: serde_json::Value = r.json().await.unwrap();
    let e = ws.event().await.unwrap();
    assert_eq!(e["type"], "updated");
    assert_eq!(e["task"], updated, "updated");

    let id = created["id"].as_i64().unwrap();
    assert_eq!(app.delete(id).await.status(), 204);
    let e = ws.event().await.unwrap();
    assert_eq!(e["type"], "deleted");
    assert_eq!(e["task"], updated, "deleted: the task as it was last");

    // The original's top-level fields mirror the task.
    for (k, t) in [
        ("task_id", "id"),
        ("board_id", "board_id"),
        ("title", "title"),
        ("completed", "completed"),
    ] {
        assert_eq!(e[k], e["task"][t], "{k}");
    }
    let keys: Vec<&String> = updated.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 12, "{keys:?}");
    assert_eq!(
        (
            &updated["assignee"],
            &updated["due_at"],
            &updated["position"]
        ),
        (
            &json!(7),
            &json!("2027-03-04T05:06:07.000008Z"),
            &json!(2.5)
        )
    );
}
