//! AUTH=on from the outside: bearer tokens on REST and WebSocket, per-board authorization, boards
//! and members over REST, CSRF and Origin checks.
use std::process::Stdio;

use serde_json::{json, Value};
use taskboard_gateway::auth::{mint_hs256, now, Claims};

use crate::helpers::*;

pub(crate) const SECRET: &str = "gateway-test-secret-of-32-chars!!";
pub(crate) const SERVICE_TOKEN: &str = "gateway-test-service-token";

pub(crate) async fn spawn_auth() -> TestApp {
    spawn_auth_with(|g| g.jwt_leeway_secs = 0).await
}

/// Both services with AUTH=on, the gateway's config adjusted by `tune`.
pub(crate) async fn spawn_auth_with(tune: impl FnOnce(&mut taskboard_gateway::Config)) -> TestApp {
    spawn_app_with(
        |t| {
            t.auth = "on".into();
            t.service_token = Some(SERVICE_TOKEN.into());
        },
        |g| {
            g.auth = "on".into();
            g.jwt_secret = Some(SECRET.into());
            g.service_token = Some(SERVICE_TOKEN.into());
            tune(g);
        },
    )
    .await
}

pub(crate) fn token_for(user: i64, roles: &[&str], exp_in: i64) -> String {
    mint_hs256(
        SECRET,
        &Claims {
            sub: user.to_string(),
            exp: (now() as i64 + exp_in) as u64,
            nbf: None,
            iat: Some(now()),
            aud: Some("taskboard".into()),
            iss: None,
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        },
    )
    .unwrap()
}

pub(crate) fn token(user: i64) -> String {
    token_for(user, &[], 3600)
}

/// Sends a JSON request as `user`; returns the status and the body (Null when empty).
pub(crate) async fn call(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = app.http.request(method, app.url(path));
    if let Some(t) = bearer {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Creates a task on `board` as the holder of `owner` (a token); it must succeed.
pub(crate) async fn create_as(app: &TestApp, owner: &str, board: i64, title: &str) {
    let body = json!({ "board_id": board, "title": title });
    let (s, t) = call(
        app,
        reqwest::Method::POST,
        "/api/tasks",
        Some(owner),
        Some(body),
    )
    .await;
    assert_eq!(s, 201, "{t}");
}

/// A WebSocket on `board` of gateway `addr`, opened with `bearer` (a token).
pub(crate) async fn board_socket(addr: std::net::SocketAddr, board: i64, bearer: &str) -> Ws {
    let auth = format!("Bearer {bearer}");
    ws_connect_with(
        addr,
        &format!("board_id={board}"),
        &[("Authorization", &auth)],
    )
    .await
    .unwrap()
    .0
}

pub(crate) async fn new_board(app: &TestApp, owner: &str) -> i64 {
    let (s, b) = call(
        app,
        reqwest::Method::POST,
        "/api/boards",
        Some(owner),
        Some(json!({"name": "Board"})),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["role"], "owner");
    b["id"].as_i64().unwrap()
}

#[tokio::test]
async fn every_api_call_needs_a_valid_token_and_says_why_not() {
    let app = spawn_auth().await;
    let r = app
        .http
        .get(app.url("/api/tasks?board_id=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    let b: Value = r.json().await.unwrap();
    assert_eq!(
        (b["error"].as_str(), b["code"].as_str()),
        (Some("Unauthorized"), Some("unauthenticated"))
    );
    assert!(
        b["message"].as_str().unwrap().contains("bearer token"),
        "{b}"
    );

    let expired = token_for(1, &[], -10);
    let forged = mint_hs256(
        "another-secret-that-is-32-chars-long",
        &Claims {
            sub: "1".into(),
            exp: now() + 60,
            nbf: None,
            iat: None,
            aud: Some("taskboard".into()),
            iss: None,
            roles: vec!["service".into()],
        },
    )
    .unwrap();
    for (t, why) in [(&expired, "expired"), (&forged, "signature")] {
        let (s, b) = call(
            &app,
            reqwest::Method::POST,
            "/api/tasks",
            Some(t),
            Some(json!({"board_id": 1, "title": "x"})),
        )
        .await;
        assert_eq!(s, 401, "{b}");
        assert!(b["message"].as_str().unwrap().contains(why), "{b}");
    }
    // Health and readiness stay open; /ready says authentication is on.
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = app
        .http
        .get(app.url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["auth"], "on");
    // Who am I.
    let (s, me) = call(&app, reqwest::Method::GET, "/api/me", Some(&token(7)), None).await;
    assert_eq!((s, me["user_id"].as_i64()), (200, Some(7)));
}

#[tokio::test]
async fn another_users_board_can_be_neither_read_nor_changed() {
    let app = spawn_auth().await;
    let alice = token(1);
    let mallory = token(2);
    let board = new_board(&app, &alice).await;
    let (s, task) = call(
        &app,
        reqwest::Method::POST,
        "/api/tasks",
        Some(&alice),
        Some(json!({"board_id": board, "title": "secret plan", "created_by": 999})),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(task["created_by"], 1, "created_by comes from the token");
    let id = task["id"].as_i64().unwrap();

    // `curl -XDELETE /api/tasks/1` no longer deletes another board's task.
    let (s, _) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("/api/tasks/{id}"),
        Some(&mallory),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &app,
        reqwest::Method::PUT,
        &format!("/api/tasks/{id}"),
        Some(&mallory),
        Some(json!({"title": "pwned"})),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/tasks/{id}"),
        Some(&mallory),
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, b) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/tasks?board_id={board}"),
        Some(&mallory),
        None,
    )
    .await;
    assert_eq!(s, 403);
    assert_eq!(b["code"], "permission_denied");
    assert!(
        b["message"].as_str().unwrap().contains("not a member"),
        "{b}"
    );
    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/tasks",
        Some(&mallory),
        Some(json!({"board_id": board, "title": "spam"})),
    )
    .await;
    assert_eq!(s, 403, "{b}");
    // Alice's task is untouched.
    let (s, t) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/tasks/{id}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!((s, t["title"].as_str()), (200, Some("secret plan")));
}

#[tokio::test]
async fn owners_manage_members_and_roles_decide_what_members_may_do() {
    let app = spawn_auth().await;
    let alice = token(1);
    let bob = token(2);
    let board = new_board(&app, &alice).await;
    let members = format!("/api/boards/{board}/members");
    let (s, m) = call(
        &app,
        reqwest::Method::PUT,
        &format!("{members}/2"),
        Some(&alice),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!((s, m["role"].as_str()), (200, Some("viewer")));
    let (s, _) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/tasks?board_id={board}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, 200, "a viewer reads");
    let (s, b) = call(
        &app,
        reqwest::Method::POST,
        "/api/tasks",
        Some(&bob),
        Some(json!({"board_id": board, "title": "x"})),
    )
    .await;
    assert_eq!(s, 403);
    assert!(b["message"].as_str().unwrap().contains("viewer"), "{b}");
    let (s, _) = call(
        &app,
        reqwest::Method::PUT,
        &format!("{members}/3"),
        Some(&bob),
        Some(json!({"role": "owner"})),
    )
    .await;
    assert_eq!(s, 403, "only owners manage members");
    let (s, b) = call(
        &app,
        reqwest::Method::PUT,
        &format!("{members}/1"),
        Some(&alice),
        Some(json!({"role": "viewer"})),
    )
    .await;
    assert_eq!(s, 409, "the last owner stays: {b}");
    let (s, b) = call(
        &app,
        reqwest::Method::PUT,
        &format!("{members}/2"),
        Some(&alice),
        Some(json!({"role": "king"})),
    )
    .await;
    assert_eq!(s, 400, "{b}");

    let (s, list) = call(&app, reqwest::Method::GET, &members, Some(&bob), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        list["members"],
        json!([{"user_id": 1, "role": "owner"}, {"user_id": 2, "role": "viewer"}])
    );
    let (s, mine) = call(&app, reqwest::Method::GET, "/api/boards", Some(&bob), None).await;
    assert_eq!(s, 200);
    assert_eq!(mine["boards"][0]["id"], board);
    assert_eq!(mine["boards"][0]["role"], "viewer");

    let (s, _) = call(
        &app,
        reqwest::Method::DELETE,
        &format!("{members}/2"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/boards/{board}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = call(
        &app,
        reqwest::Method::GET,
        "/api/boards/999999",
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, 404);
}

/// A WebSocket refusal: the handshake's status and JSON body.
async fn ws_refused(app: &TestApp, query: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = app
        .http
        .get(app.url(&format!("/ws?{query}")))
        .header("Upgrade", "websocket")
        .header("Connection", "Upgrade")
        .header("Sec-WebSocket-Version", "13")
        .header("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_feed_needs_a_token_and_membership_and_every_board_needs_the_service_role() {
    let app = spawn_auth().await;
    let alice = token(1);
    let mallory = token(2);
    let service = token_for(100, &["service"], 3600);
    let board = new_board(&app, &alice).await;
    let q = format!("board_id={board}");

    let (s, _) = ws_refused(&app, &q, &[]).await;
    assert_eq!(s, 401);
    let m = format!("Bearer {mallory}");
    let (s, b) = ws_refused(&app, &q, &[("Authorization", &m)]).await;
    assert_eq!(s, 403, "{b}");
    // A feed of every board's titles is not for ordinary users.
    let a = format!("Bearer {alice}");
    let (s, b) = ws_refused(&app, "", &[("Authorization", &a)]).await;
    assert_eq!(s, 403);
    assert!(
        b["message"].as_str().unwrap().contains("service role"),
        "{b}"
    );

    // A browser offers the token as a subprotocol and gets `taskboard` back.
    let proto = format!("taskboard, bearer.{alice}");
    let (mut own, h) = ws_connect_with(app.addr, &q, &[("Sec-WebSocket-Protocol", &proto)])
        .await
        .unwrap();
    assert_eq!(h["sec-websocket-protocol"], "taskboard");
    let s = format!("Bearer {service}");
    let (mut all, _) = ws_connect_with(app.addr, "", &[("Authorization", &s)])
        .await
        .unwrap();

    let (st, _) = call(
        &app,
        reqwest::Method::POST,
        "/api/tasks",
        Some(&alice),
        Some(json!({"board_id": board, "title": "live"})),
    )
    .await;
    assert_eq!(st, 201);
    for ws in [&mut own, &mut all] {
        let e = ws.event().await.unwrap();
        assert_eq!((e["title"].as_str(), seq(&e)), (Some("live"), 1));
    }
}

#[tokio::test]
async fn a_websocket_is_closed_with_1008_when_its_token_expires() {
    let app = spawn_auth().await;
    let alice = token(1);
    let board = new_board(&app, &alice).await;
    let short = token_for(1, &[], 2);
    let a = format!("Bearer {short}");
    let (mut ws, _) = ws_connect_with(
        app.addr,
        &format!("board_id={board}"),
        &[("Authorization", &a)],
    )
    .await
    .unwrap();
    match ws.next().await.unwrap() {
        Next::Close(code, reason) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("token expired"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
}

#[tokio::test]
async fn cross_site_requests_are_refused() {
    // AUTH=off is where a simple cross-site POST would otherwise run (no token to forge).
    let app = spawn_app().await;
    for ct in ["text/plain", "application/x-www-form-urlencoded"] {
        let r = app
            .http
            .post(app.url("/api/tasks"))
            .header("content-type", ct)
            .header("origin", "https://evil.example")
            .body(r#"{"board_id": 1, "title": "csrf"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 415, "{ct}");
    }
    let list: Value = app
        .http
        .get(app.url("/api/tasks?board_id=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["total_count"], 0, "nothing was created");

    // With authentication on: no cross-origin grant by default, and the feed refuses other
    // origins (its own is fine).
    let app = spawn_auth().await;
    let alice = token(1);
    let r = app
        .http
        .get(app.url("/api/boards"))
        .bearer_auth(&alice)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let board = new_board(&app, &alice).await;
    let a = format!("Bearer {alice}");
    let (s, _) = ws_refused(
        &app,
        &format!("board_id={board}"),
        &[("Authorization", &a), ("Origin", "https://evil.example")],
    )
    .await;
    assert_eq!(s, 403);
    let own = format!("http://{}", app.addr);
    ws_connect_with(
        app.addr,
        &format!("board_id={board}"),
        &[("Authorization", &a), ("Origin", &own)],
    )
    .await
    .expect("the page's own origin");
}

#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let app = spawn_auth().await;
    for path in ["/health", "/api/tasks?board_id=1", "/nope", "/openapi.json"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
        assert!(h.contains_key("content-security-policy"), "{path}");
    }
}

#[tokio::test]
async fn the_binary_will_not_start_without_keys_unless_auth_is_off() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskboard-gateway"))
        .env_clear()
        .env("HTTP_PORT", "0")
        .stdout(Stdio::null())
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("JWT_SECRET") && err.contains("AUTH=off"),
        "{err}"
    );
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_taskboard-gateway"))
        .env_clear()
        .env("JWT_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SERVICE_TOKEN"));
}

#[tokio::test]
async fn floods_get_429_with_retry_after_per_user_and_per_address() {
    let app = spawn_auth_with(|g| {
        g.rate_user_writes_per_sec = 1;
        g.rate_user_writes_burst = 3;
        g.rate_user_connects_per_sec = 1;
        g.rate_user_connects_burst = 2;
        g.rate_address_per_sec = 1;
        g.rate_address_burst = 40;
    })
    .await;
    let alice = token(1);
    let board = new_board(&app, &alice).await; // one write
    let create = |t: String| {
        let app = &app;
        async move {
            app.http
                .post(app.url("/api/tasks"))
                .bearer_auth(t)
                .json(&json!({"board_id": board, "title": "x"}))
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(create(alice.clone()).await.status(), 201);
    assert_eq!(create(alice.clone()).await.status(), 201);
    let r = create(alice.clone()).await;
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    let b: Value = r.json().await.unwrap();
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("changes by this user"),
        "{b}"
    );
    // Reads are not writes; the service role is never limited.
    let (s, _) = call(
        &app,
        reqwest::Method::GET,
        &format!("/api/tasks?board_id={board}"),
        Some(&alice),
        None,
    )
    .await;
    assert_eq!(s, 200);
    let service = token_for(99, &["service"], 3600);
    for _ in 0..5 {
        assert_eq!(create(service.clone()).await.status(), 201);
    }

    // WebSocket connects and resumes of one user.
    let a = format!("Bearer {alice}");
    let q = format!("board_id={board}&since=0");
    for _ in 0..2 {
        ws_connect_with(app.addr, &q, &[("Authorization", &a)])
            .await
            .unwrap();
    }
    let (s, b) = ws_refused(&app, &q, &[("Authorization", &a)]).await;
    assert_eq!(s, 429, "{b}");

    // One address: every call counts, failed sign-ins included.
    let mut limited = 0;
    for _ in 0..60 {
        let r = app.http.get(app.url("/api/boards")).send().await.unwrap();
        match r.status().as_u16() {
            401 => {}
            429 => limited += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert!(limited >= 10, "only {limited} of 60 refused");
    let text = scrape(app.metrics_addr).await;
    for limit in ["user_writes", "user_connects", "address"] {
        let n = sample(&text, "taskboard_rate_limited_total", &[("limit", limit)]).unwrap_or(0.0);
        assert!(n >= 1.0, "{limit}: {n}");
    }
}

/// Who changed what, when: a board's log and a task's own history over REST, each entry the event
/// as the WebSocket sends it plus its actor and commit time; members only.
#[tokio::test]
async fn history_says_who_changed_what_and_is_for_members_only() {
    use reqwest::Method as M;
    let app = spawn_auth().await;
    let (owner, bob, eve) = (token(30), token(31), token(32));
    let b = new_board(&app, &owner).await;
    let (s, _) = call(
        &app,
        M::PUT,
        &format!("/api/boards/{b}/members/31"),
        Some(&owner),
        Some(json!({"role": "editor"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, t) = call(
        &app,
        M::POST,
        "/api/tasks",
        Some(&bob),
        Some(json!({"board_id": b, "title": "draft"})),
    )
    .await;
    assert_eq!(s, 201);
    let id = t["id"].as_i64().unwrap();
    let path = format!("/api/tasks/{id}");
    let (s, _) = call(
        &app,
        M::PUT,
        &path,
        Some(&owner),
        Some(json!({"title": "final"})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(&app, M::DELETE, &path, Some(&bob), None).await;
    assert_eq!(s, 204);

    let (s, h) = call(&app, M::GET, &format!("{path}/events"), Some(&owner), None).await;
    assert_eq!(s, 200, "{h}");
    let got: Vec<(i64, &str, i64, &str)> = h["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_i64().unwrap(),
                e["type"].as_str().unwrap(),
                e["actor"].as_i64().unwrap(),
                e["task"]["title"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            // seq 1: bob joining the board.
            (2, "created", 31, "draft"),
            (3, "updated", 30, "final"),
            (4, "deleted", 31, "final")
        ]
    );
    assert!(h["events"][0]["committed_at"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    assert_eq!(h["head_seq"], 4);

    let (s, h) = call(
        &app,
        M::GET,
        &format!("/api/boards/{b}/events?after=2&limit=1"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, 200, "{h}");
    assert_eq!(h["events"].as_array().unwrap().len(), 1);
    assert_eq!(h["events"][0]["seq"], 3);
    assert_eq!(h["events"][0]["actor"], 30);

    // Outsiders: the task is not found, the board forbidden.
    let (s, e) = call(&app, M::GET, &format!("{path}/events"), Some(&eve), None).await;
    assert_eq!((s, e["error"].as_str()), (404, Some("Task not found")));
    let (s, e) = call(
        &app,
        M::GET,
        &format!("/api/boards/{b}/events"),
        Some(&eve),
        None,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("permission_denied")));
    // Bad input says what to send.
    for q in ["after=-1", "limit=0", "limit=5000", "after=x"] {
        let (s, e) = call(
            &app,
            M::GET,
            &format!("/api/boards/{b}/events?{q}"),
            Some(&bob),
            None,
        )
        .await;
        assert_eq!(s, 400, "{q}: {e}");
        assert!(e["message"].as_str().unwrap().contains("must be"), "{e}");
    }
    let (s, _) = call(&app, M::GET, "/api/tasks/abc/events", Some(&bob), None).await;
    assert_eq!(s, 400);
    let (s, _) = call(
        &app,
        M::POST,
        &format!("{path}/events"),
        Some(&bob),
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 405);
}

/// Search over REST: hits with the task and its marked words, paging, and clear errors.
#[tokio::test]
async fn search_answers_marked_hits_from_my_boards() {
    use reqwest::Method as M;
    let app = spawn_auth().await;
    let (me, other) = (token(50), token(51));
    let b = new_board(&app, &me).await;
    let theirs = new_board(&app, &other).await;
    for (board, who, title, description) in [
        (b, &me, "Release notes", "write the release notes for 2.0"),
        (b, &me, "Deploy", "after the release"),
        (theirs, &other, "Release party", ""),
    ] {
        let (s, _) = call(
            &app,
            M::POST,
            "/api/tasks",
            Some(who),
            Some(json!({"board_id": board, "title": title, "description": description})),
        )
        .await;
        assert_eq!(s, 201);
    }
    let (s, r) = call(&app, M::GET, "/api/search?q=releases", Some(&me), None).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["total_count"], 2);
    assert_eq!(
        (r["page"].as_i64(), r["page_size"].as_i64()),
        (Some(1), Some(20))
    );
    let hit = &r["hits"][0];
    assert_eq!(hit["task"]["title"], "Release notes");
    assert_eq!(hit["task"]["board_id"], b);
    assert_eq!(
        hit["title"],
        json!([{"text": "Release", "match": true}, {"text": " notes", "match": false}])
    );
    assert!(hit["snippet"]
        .as_array()
        .unwrap()
        .contains(&json!({"text": "release", "match": true})));
    assert!(hit["rank"].as_f64().unwrap() > r["hits"][1]["rank"].as_f64().unwrap());
    assert_eq!(r["hits"][1]["task"]["title"], "Deploy");

    let (s, r) = call(
        &app,
        M::GET,
        &format!("/api/search?q=release&board_id={b}&page=2&page_size=1"),
        Some(&me),
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(r["hits"].as_array().unwrap().len(), 1);
    assert_eq!(r["hits"][0]["task"]["title"], "Deploy");

    let (s, e) = call(
        &app,
        M::GET,
        &format!("/api/search?q=release&board_id={theirs}"),
        Some(&me),
        None,
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("permission_denied")));
    let (s, e) = call(&app, M::GET, "/api/search", Some(&me), None).await;
    assert_eq!(s, 400);
    assert!(e["message"].as_str().unwrap().contains("q="), "{e}");
    let long = "a".repeat(501);
    let (s, e) = call(
        &app,
        M::GET,
        &format!("/api/search?q={long}"),
        Some(&me),
        None,
    )
    .await;
    assert_eq!(s, 400);
    assert!(e["error"].as_str().unwrap().contains("too long"), "{e}");
    let (s, _) = call(&app, M::GET, "/api/search?q=release", None, None).await;
    assert_eq!(s, 401);
}

/// Boards over REST: rename, archive (hidden, read-only), unarchive, delete; WebSocket subscribers
/// see each as an event on the board's seq, the deletion as the final one.
#[tokio::test]
async fn boards_are_renamed_archived_and_deleted_over_rest_and_subscribers_see_it() {
    use reqwest::Method as M;
    let app = spawn_auth().await;
    let (owner, editor) = (token(70), token(71));
    let b = new_board(&app, &owner).await;
    let path = format!("/api/boards/{b}");
    call(
        &app,
        M::PUT,
        &format!("{path}/members/71"),
        Some(&owner),
        Some(json!({"role": "editor"})),
    )
    .await;
    let auth = format!("Bearer {editor}");
    let (mut ws, _) = ws_connect_with(
        app.addr,
        &format!("board_id={b}"),
        &[("Authorization", &auth)],
    )
    .await
    .unwrap();

    let r = app
        .http
        .put(app.url(&path))
        .bearer_auth(&editor)
        .json(&json!({"name": "Renamed", "description": "what we do"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["taskboard-seq"], "2");
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (
            body["name"].as_str(),
            body["description"].as_str(),
            body["archived"].as_bool()
        ),
        (Some("Renamed"), Some("what we do"), Some(false))
    );
    let ev = ws.event().await.unwrap();
    assert_eq!(
        (ev["type"].as_str(), ev["seq"].as_i64()),
        (Some("board_updated"), Some(2))
    );
    assert_eq!(ev["board"]["name"], "Renamed");

    let (s, e) = call(
        &app,
        M::PUT,
        &path,
        Some(&editor),
        Some(json!({"archived": true})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (403, Some("permission_denied")));
    let (s, e) = call(&app, M::PUT, &path, Some(&owner), Some(json!({}))).await;
    assert_eq!(s, 400, "{e}");
    let (s, body) = call(
        &app,
        M::PUT,
        &path,
        Some(&owner),
        Some(json!({"archived": true})),
    )
    .await;
    assert_eq!((s, body["archived"].as_bool()), (200, Some(true)));
    assert!(body["archived_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(ws.event().await.unwrap()["board"]["archived"], true);
    let (_, list) = call(&app, M::GET, "/api/boards", Some(&owner), None).await;
    assert_eq!(list["boards"], json!([]));
    let (_, list) = call(
        &app,
        M::GET,
        "/api/boards?archived=true",
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(list["boards"][0]["id"], b);
    let (s, e) = call(
        &app,
        M::POST,
        "/api/tasks",
        Some(&editor),
        Some(json!({"board_id": b, "title": "t"})),
    )
    .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("conflict")), "{e}");
    assert!(e["error"].as_str().unwrap().contains("archived"), "{e}");
    let (s, _) = call(
        &app,
        M::PUT,
        &path,
        Some(&owner),
        Some(json!({"archived": false})),
    )
    .await;
    assert_eq!(s, 200);
    let (s, _) = call(
        &app,
        M::POST,
        "/api/tasks",
        Some(&editor),
        Some(json!({"board_id": b, "title": "t"})),
    )
    .await;
    assert_eq!(s, 201);
    let seqs: Vec<i64> = ws.events(2).await.unwrap().iter().map(seq).collect();
    assert_eq!(seqs, vec![4, 5]);

    let (s, _) = call(&app, M::DELETE, &path, Some(&editor), None).await;
    assert_eq!(s, 403);
    let r = app
        .http
        .delete(app.url(&path))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["taskboard-seq"], "6");
    let last = ws.event().await.unwrap();
    assert_eq!(
        (last["type"].as_str(), last["seq"].as_i64()),
        (Some("board_deleted"), Some(6))
    );
    let (s, _) = call(&app, M::GET, &path, Some(&owner), None).await;
    assert_eq!(s, 404);
    let (s, _) = call(&app, M::DELETE, &path, Some(&owner), None).await;
    assert_eq!(s, 404);
}

/// Assignee, due date and position over REST; null removes the first two; filters and orders.
#[tokio::test]
async fn tasks_take_an_assignee_a_due_date_and_a_position_over_rest() {
    use reqwest::Method as M;
    let app = spawn_auth().await;
    let owner = token(90);
    let b = new_board(&app, &owner).await;
    call(
        &app,
        M::PUT,
        &format!("/api/boards/{b}/members/91"),
        Some(&owner),
        Some(json!({"role": "editor"})),
    )
    .await;
    let (s, a) = call(
        &app,
        M::POST,
        "/api/tasks",
        Some(&owner),
        Some(json!({"board_id": b, "title": "a", "assignee": 91, "due_at": "2027-01-02T03:04:05+01:00"})),
    )
    .await;
    assert_eq!(s, 201, "{a}");
    assert_eq!(a["assignee"], 91);
    assert_eq!(a["due_at"], "2027-01-02T02:04:05.000000Z");
    let (_, c) = call(
        &app,
        M::POST,
        "/api/tasks",
        Some(&owner),
        Some(json!({"board_id": b, "title": "c"})),
    )
    .await;
    assert_eq!(
        (c["assignee"].clone(), c["due_at"].clone()),
        (Value::Null, Value::Null)
    );
    assert!(c["position"].as_f64().unwrap() < a["position"].as_f64().unwrap());

    let list = |q: &str| format!("/api/tasks?board_id={b}&{q}");
    let titles = |v: &Value| -> Vec<String> {
        v["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["title"].as_str().unwrap().to_owned())
            .collect()
    };
    let (_, r) = call(&app, M::GET, &list("assignee=91"), Some(&owner), None).await;
    assert_eq!(titles(&r), ["a"]);
    let (_, r) = call(&app, M::GET, &list("assignee=none"), Some(&owner), None).await;
    assert_eq!(titles(&r), ["c"]);
    let (_, r) = call(
        &app,
        M::GET,
        &list("due_before=2027-02-01T00:00:00Z&sort=due"),
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(titles(&r), ["a"]);

    // Move a above c, unassign it and clear its due date: one change.
    let pos = c["position"].as_f64().unwrap() - 1.0;
    let (s, moved) = call(
        &app,
        M::PUT,
        &format!("/api/tasks/{}", a["id"]),
        Some(&owner),
        Some(json!({"position": pos, "assignee": null, "due_at": null})),
    )
    .await;
    assert_eq!(s, 200, "{moved}");
    assert_eq!(
        (
            moved["assignee"].clone(),
            moved["due_at"].clone(),
            moved["version"].clone()
        ),
        (Value::Null, Value::Null, json!(2))
    );
    let (_, r) = call(&app, M::GET, &list("sort=position"), Some(&owner), None).await;
    assert_eq!(titles(&r), ["a", "c"]);
    // Absent fields stay as they are.
    let (_, same) = call(
        &app,
        M::PUT,
        &format!("/api/tasks/{}", c["id"]),
        Some(&owner),
        Some(json!({"title": "c2"})),
    )
    .await;
    assert_eq!(same["position"], c["position"]);

    for (method, path, body) in [
        (
            M::POST,
            "/api/tasks".to_owned(),
            json!({"board_id": b, "title": "x", "due_at": "tomorrow"}),
        ),
        (
            M::POST,
            "/api/tasks".to_owned(),
            json!({"board_id": b, "title": "x", "assignee": 12345}),
        ),
        (
            M::PUT,
            format!("/api/tasks/{}", a["id"]),
            json!({"assignee": -1}),
        ),
        (M::GET, list("sort=random"), Value::Null),
        (M::GET, list("assignee=me"), Value::Null),
        (M::GET, list("due_before=soon"), Value::Null),
    ] {
        let body = (!body.is_null()).then_some(body);
        let (s, e) = call(&app, method, &path, Some(&owner), body).await;
        assert_eq!(s, 400, "{path}: {e}");
        assert!(e["error"].is_string(), "{e}");
    }
}

/// Who is viewing a board, across two gateways: the list on subscribe, joins and leaves live,
/// and the viewers of a gateway that stops announcing (cut off from NATS here) gone within the
/// TTL. The service role is never shown.
#[tokio::test]
async fn presence_shows_who_views_a_board_across_gateways_and_forgets_a_silent_one() {
    use reqwest::Method as M;
    use taskboard_tasks::testing;
    const TTL_MS: u64 = 900;
    let app = spawn_app_with(
        |t| {
            t.auth = "on".into();
            t.service_token = Some(SERVICE_TOKEN.into());
        },
        |g| {
            g.auth = "on".into();
            g.jwt_secret = Some(SECRET.into());
            g.service_token = Some(SERVICE_TOKEN.into());
            g.presence_ttl_ms = TTL_MS;
        },
    )
    .await;
    let tasks = app.tasks.as_ref().unwrap();
    let proxy = testing::TcpProxy::start(testing::socket_addr_of(&testing::nats_url())).await;
    let mut cfg = gw_config(
        &tasks.grpc_addr(),
        &tasks.subject_prefix,
        &format!("nats://{}", proxy.addr),
    );
    cfg.auth = "on".into();
    cfg.jwt_secret = Some(SECRET.into());
    cfg.service_token = Some(SERVICE_TOKEN.into());
    cfg.presence_ttl_ms = TTL_MS;
    let other = spawn_gateway(cfg).await;
    other.wait_ready().await;

    let owner = token(100);
    let b = new_board(&app, &owner).await;
    for u in [101, 102] {
        call(
            &app,
            M::PUT,
            &format!("/api/boards/{b}/members/{u}"),
            Some(&owner),
            Some(json!({"role": "viewer"})),
        )
        .await;
    }
    let ws = |gw: &TestApp, user: i64| {
        let (addr, auth) = (gw.addr, format!("Bearer {}", token(user)));
        async move {
            ws_connect_with(addr, &format!("board_id={b}"), &[("Authorization", &auth)])
                .await
                .unwrap()
                .0
        }
    };
    let mut mine = ws(&app, 100).await;
    mine.presence(&[100]).await.unwrap();
    let mut theirs = ws(&other, 101).await;
    theirs.presence(&[100, 101]).await.unwrap();
    mine.presence(&[100, 101]).await.unwrap();
    // The service role watching the board is not a viewer.
    let svc = format!("Bearer {}", token_for(9, &["service"], 3600));
    let (_svc_ws, _) = ws_connect_with(
        app.addr,
        &format!("board_id={b}"),
        &[("Authorization", &svc)],
    )
    .await
    .unwrap();
    theirs.close().await;
    mine.presence(&[100]).await.unwrap();
    let _third = ws(&other, 102).await;
    mine.presence(&[100, 102]).await.unwrap();

    // The other gateway goes silent (cut off from NATS, as if it died): its viewer expires.
    proxy.cut();
    let t = std::time::Instant::now();
    mine.presence(&[100]).await.unwrap();
    assert!(
        t.elapsed() < std::time::Duration::from_millis(TTL_MS * 3),
        "{:?}",
        t.elapsed()
    );
}

/// POSTs a create as `bearer`, with an Idempotency-Key when given.
async fn post_create(
    app: &TestApp,
    bearer: &str,
    body: Value,
    key: Option<&str>,
) -> (u16, Value, bool, i64) {
    let mut r = app
        .http
        .post(app.url("/api/tasks"))
        .bearer_auth(bearer)
        .json(&body);
    if let Some(k) = key {
        r = r.header("Idempotency-Key", k);
    }
    let r = r.send().await.unwrap();
    let replayed = r.headers().get("Idempotent-Replayed").is_some();
    let seq = r
        .headers()
        .get("Taskboard-Seq")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null), replayed, seq)
}

#[tokio::test]
async fn creates_arriving_while_a_call_is_out_go_together_each_with_its_own_answer() {
    // One create call out at a time: everything arriving meanwhile is gathered.
    let app = spawn_auth_with(|g| g.create_calls = 1).await;
    let (alice, bob) = (token(1), token(2));
    let board = new_board(&app, &alice).await;
    // The first create's commit waits for this lock, so its call stays out while the rest
    // arrive.
    let (db, conn) = tokio_postgres::connect(
        &app.tasks.as_ref().unwrap().database_url,
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    db.batch_execute(&format!(
        "BEGIN; SELECT last_seq FROM boards WHERE id = {board} FOR UPDATE"
    ))
    .await
    .unwrap();
    let first = tokio::spawn({
        let (app_url, http, alice) = (app.url("/api/tasks"), app.http.clone(), alice.clone());
        async move {
            http.post(app_url)
                .bearer_auth(alice)
                .json(&json!({"board_id": board, "title": "first"}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let gathered_before = metric(app.metrics_addr, "taskboard_creates_gathered_total").await;

    // 16 good creates, an invalid one, one by a non-member, and an idempotent one.
    let mut calls = Vec::new();
    for i in 0..16 {
        let body = json!({"board_id": board, "title": format!("t{i}"), "created_by": 7});
        calls.push((format!("t{i}"), body, &alice, None));
    }
    calls.push((
        "".into(),
        json!({"board_id": board, "title": ""}),
        &alice,
        None,
    ));
    calls.push((
        "intruder".into(),
        json!({"board_id": board, "title": "intruder"}),
        &bob,
        None,
    ));
    calls.push((
        "keyed".into(),
        json!({"board_id": board, "title": "keyed"}),
        &alice,
        Some("gather-key"),
    ));
    let answers = futures_util::future::join_all(
        calls
            .iter()
            .map(|(_, body, who, key)| post_create(&app, who, body.clone(), *key)),
    );
    let (answers, ()) = tokio::join!(answers, async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        db.batch_execute("COMMIT").await.unwrap();
    });
    assert_eq!(first.await.unwrap(), 201);

    let mut seqs = vec![1];
    for ((title, _, _, _), (status, body, replayed, seq)) in calls.iter().zip(&answers) {
        match title.as_str() {
            "" => {
                assert_eq!(*status, 400, "{body}");
                assert_eq!(body["code"], "invalid_argument", "{body}");
            }
            "intruder" => assert_eq!(*status, 403, "{body}"),
            _ => {
                assert_eq!(*status, 201, "{title}: {body}");
                assert_eq!(body["title"], title.as_str(), "each its own task");
                assert_eq!(body["created_by"], 1, "the token's user, not the body's");
                assert!(!replayed);
                seqs.push(*seq);
            }
        }
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=18).collect::<Vec<i64>>(), "gap-free, one each");
    let gathered = metric(app.metrics_addr, "taskboard_creates_gathered_total").await;
    assert!(
        gathered - gathered_before >= 19.0,
        "the 19 creates that arrived while a call was out went gathered ({gathered_before} → {gathered})"
    );

    // A retry of the keyed create answers the same task, marked replayed.
    let keyed = &answers[18].1;
    let (status, again, replayed, _) = post_create(
        &app,
        &alice,
        json!({"board_id": board, "title": "keyed"}),
        Some("gather-key"),
    )
    .await;
    assert_eq!((status, replayed), (201, true), "{again}");
    assert_eq!(again["id"], keyed["id"]);
}
