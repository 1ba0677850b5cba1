//! Small holes a hostile client found (issue 10's short list): characters PostgreSQL refuses,
//! lenient ids, a lax WebSocket handshake, missing nosniff, unbounded header blocks.
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

/// Sends raw bytes on a fresh connection; returns the start of the answer.
async fn raw(app: &TestApp, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, s.read(&mut out))
        .await
        .expect("an answer in time")
        .unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).into_owned()
}

#[tokio::test]
async fn nul_characters_are_refused_with_400_not_500() {
    let app = spawn_app().await;
    for body in [
        json!({"board_id": 1, "title": "a\u{0}b"}),
        json!({"board_id": 1, "title": "ok", "description": "x\u{0}"}),
    ] {
        let r = app
            .http
            .post(app.url("/api/tasks"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        let b: Value = r.json().await.unwrap();
        assert!(b["error"].as_str().unwrap().contains("NUL"), "{b}");
    }
    let t = app.create(1, "fine").await;
    let r = app
        .update(t["id"].as_i64().unwrap(), json!({"title": "\u{0}"}))
        .await;
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn task_ids_are_plain_digits() {
    let app = spawn_app().await;
    let t = app.create(1, "one").await;
    let id = t["id"].as_i64().unwrap();
    for path in [
        format!("/api/tasks/+{id}"),
        format!("/api/tasks/0{id}x"),
        format!("/api/tasks/ {id}"),
    ] {
        let r = app.http.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 400, "{path}");
    }
    let r = app
        .http
        .get(app.url(&format!("/api/tasks/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_websocket_handshake_needs_http_1_1_and_a_real_key() {
    let app = spawn_app().await;
    let host = app.addr;
    let good_key = "dGhlIHNhbXBsZSBub25jZQ==";
    let req = |version: &str, key: &str| {
        format!(
            "GET /ws?board_id=1 {version}\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    };
    for (version, key) in [
        ("HTTP/1.1", ""),
        ("HTTP/1.1", "short"),
        ("HTTP/1.0", good_key),
    ] {
        let answer = raw(&app, req(version, key).as_bytes()).await;
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.0 400"),
            "{version} key {key:?}: {answer}"
        );
    }
    let answer = raw(&app, req("HTTP/1.1", good_key).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
}

#[tokio::test]
async fn api_answers_and_errors_say_nosniff() {
    let app = spawn_app().await;
    for path in ["/api/tasks?board_id=1", "/api/tasks/x", "/nope", "/ready"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(
            r.headers()
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn an_oversized_header_block_is_refused() {
    let app = spawn_app().await;
    let big = "a".repeat(300 * 1024);
    let answer = raw(
        &app,
        format!("GET /health HTTP/1.1\r\nHost: t\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(
        !answer.starts_with("HTTP/1.1 200"),
        "a 300 KiB header block was served: {answer}"
    );
    // Normal requests still work.
    let r = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

/// The largest legal title and description: 4-byte characters at the character limits.
fn maximal() -> (String, String) {
    ("𝄞".repeat(500), "𝄞".repeat(10_000))
}

#[tokio::test]
async fn a_board_of_a_hundred_maximal_tasks_still_opens() {
    let app = spawn_app().await;
    let (title, description) = maximal();
    for _ in 0..100 {
        let r = app
            .http
            .post(app.url("/api/tasks"))
            .json(&json!({"board_id": 3, "title": title, "description": description}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // What the board page asks for.
    let r = app
        .http
        .get(app.url("/api/tasks?board_id=3&page_size=100"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["tasks"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn a_resume_over_a_thousand_large_events_is_delivered_whole() {
    const EVENTS: i64 = 1000;
    let app = spawn_app().await;
    let (title, description) = maximal();
    let r = app
        .http
        .post(app.url("/api/tasks"))
        .json(&json!({"board_id": 4, "title": title, "description": description}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    // Every event carries the whole (large) task: ~40 KB each, ~40 MB in all.
    for i in 1..EVENTS {
        let r = app.update(id, json!({"completed": i % 2 == 1})).await;
        assert_eq!(r.status(), 200);
    }
    let mut ws = app.ws("board_id=4&since=0").await;
    for want in 1..=EVENTS {
        let e = ws.event().await.expect("every event, not a 1013");
        assert_eq!(seq(&e), want);
    }
}

/// A WebSocket upgrade request through reqwest: its answer says whether the gateway would upgrade.
async fn upgrade_request(app: &TestApp) -> reqwest::Response {
    app.http
        .get(app.url("/ws?board_id=1"))
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("Sec-WebSocket-Version", "13")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn over_the_websocket_cap_new_ones_get_503_and_rest_is_still_answered() {
    let app = spawn_app_with(|_| {}, |g| g.max_websockets = 2).await;
    let first = app.ws("board_id=1").await;
    let _second = app.ws("board_id=1").await;
    let r = upgrade_request(&app).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["code"], "resource_exhausted");
    let h = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(h.status(), 200);
    app.create(1, "REST still works").await;
    // A slot comes back when a session ends.
    first.close().await;
    assert!(
        eventually(WAIT, || async {
            upgrade_request(&app).await.status() == 101
        })
        .await,
        "the closed session's slot never came back"
    );
    let text = scrape(app.metrics_addr).await;
    let rejected = sample(
        &text,
        "taskboard_connections_rejected_total",
        &[("kind", "websocket")],
    );
    assert!(rejected.is_some_and(|n| n >= 1.0), "{text}");
}

#[tokio::test]
async fn over_the_connection_cap_new_sockets_get_503_and_are_closed() {
    let app = spawn_app_with(|_| {}, |g| g.max_connections = 4).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(app.addr).await.unwrap());
    }
    let answer = raw(&app, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("Too many connections"), "{answer}");
    drop(idle);
    assert!(
        eventually(WAIT, || async {
            raw(
                &app,
                b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
            )
            .await
            .starts_with("HTTP/1.1 200")
        })
        .await,
        "slots never came back"
    );
}
