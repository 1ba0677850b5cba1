//! Access changes on open sockets, across gateways: a member removed, a role downgraded and a
//! board deleted close the sockets they reach (after the event itself, nothing later) on every
//! gateway, with a close code and reason that say why.
use std::time::{Duration, Instant};

use reqwest::Method as M;
use serde_json::json;

use crate::auth::{
    board_socket, call, create_as, new_board, spawn_auth, token, SECRET, SERVICE_TOKEN,
};
use crate::helpers::*;

/// Well within the "about a second", on a loaded 2-core machine.
const WITHIN: Duration = Duration::from_millis(1500);

pub(crate) async fn second_gateway_with(
    app: &TestApp,
    tune: impl FnOnce(&mut taskboard_gateway::Config),
) -> TestApp {
    let tasks = app.tasks.as_ref().unwrap();
    let nats = taskboard_tasks::testing::nats_url();
    let mut cfg = gw_config(&tasks.grpc_addr(), &tasks.subject_prefix, &nats);
    cfg.auth = "on".into();
    cfg.jwt_secret = Some(SECRET.into());
    cfg.service_token = Some(SERVICE_TOKEN.into());
    tune(&mut cfg);
    let other = spawn_gateway(cfg).await;
    other.wait_ready().await;
    other
}

async fn second_gateway(app: &TestApp) -> TestApp {
    second_gateway_with(app, |_| {}).await
}

async fn socket(gw: &TestApp, board: i64, user: i64) -> Ws {
    board_socket(gw.addr, board, &token(user)).await
}

/// The next event's type, then (within [`WITHIN`] of `since`) the close.
pub(crate) async fn event_then_close(ws: &mut Ws, kind: &str, since: Instant) -> (u16, String) {
    match ws.next().await.unwrap() {
        Next::Event(e) => assert_eq!(e["type"], kind, "{e}"),
        other => panic!("expected a {kind} event first, got {other:?}"),
    }
    let left = WITHIN.saturating_sub(since.elapsed());
    match tokio::time::timeout(left, ws.next()).await {
        Ok(Ok(Next::Close(code, reason))) => (code, reason),
        other => panic!("no close within {WITHIN:?} of the change: {other:?}"),
    }
}

#[tokio::test]
async fn a_removed_member_s_socket_on_another_gateway_is_closed_and_gets_nothing_after() {
    let app = spawn_auth().await;
    let other = second_gateway(&app).await;
    let owner = token(100);
    let b = new_board(&app, &owner).await;
    for (u, role) in [(101, "editor"), (102, "editor")] {
        let (s, body) = call(
            &app,
            M::PUT,
            &format!("/api/boards/{b}/members/{u}"),
            Some(&owner),
            Some(json!({ "role": role })),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
    // Sockets opened after the member events, on the second gateway; the owner's on the first.
    let mut removed = socket(&other, b, 101).await;
    let mut downgraded = socket(&other, b, 102).await;
    let mut owners = socket(&app, b, 100).await;

    let t = Instant::now();
    let (s, _) = call(
        &app,
        M::DELETE,
        &format!("/api/boards/{b}/members/101"),
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (code, reason) = event_then_close(&mut removed, "member_changed", t).await;
    assert_eq!(code, 4003, "{reason}");
    assert!(reason.contains(&format!("board {b}")), "{reason}");
    println!(
        "removed member's socket closed {:?} after the DELETE was sent",
        t.elapsed()
    );

    // Everyone else keeps receiving: the removal, then a task.
    create_as(&app, &owner, b, "after the removal").await;
    let seen: Vec<String> = owners
        .events(2)
        .await
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["member_changed", "created"]);
    let e = downgraded.events(2).await.unwrap();
    assert_eq!(e[0]["user_id"], 101);
    assert_eq!(e[0]["role"], serde_json::Value::Null);

    // A downgrade closes with a resume hint: the reconnect carries on under the new role.
    let t = Instant::now();
    let (s, _) = call(
        &app,
        M::PUT,
        &format!("/api/boards/{b}/members/102"),
        Some(&owner),
        Some(json!({ "role": "viewer" })),
    )
    .await;
    assert_eq!(s, 200);
    let (code, reason) = event_then_close(&mut downgraded, "member_changed", t).await;
    assert_eq!(code, 4005, "{reason}");
    assert!(
        reason.contains("viewer") && reason.contains("since="),
        "{reason}"
    );
    // The removed member cannot come back; the downgraded one can, and misses nothing.
    let auth = format!("Bearer {}", token(101));
    let refused = ws_connect_with(
        other.addr,
        &format!("board_id={b}"),
        &[("Authorization", &auth)],
    )
    .await;
    assert!(refused.is_err(), "a removed member's new socket is refused");
    let hint = reason
        .split("since=")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let auth = format!("Bearer {}", token(102));
    let (mut back, _) = ws_connect_with(
        other.addr,
        &format!("board_id={b}&since={hint}"),
        &[("Authorization", &auth)],
    )
    .await
    .unwrap();
    create_as(&app, &owner, b, "after the downgrade").await;
    assert_eq!(back.event().await.unwrap()["title"], "after the downgrade");

    // A deleted board closes every socket on it, the owner's too, after the final event.
    owners.events(2).await.unwrap(); // the downgrade and the task
    let t = Instant::now();
    let (s, _) = call(
        &app,
        M::DELETE,
        &format!("/api/boards/{b}"),
        Some(&owner),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (code, reason) = event_then_close(&mut owners, "board_deleted", t).await;
    assert_eq!(code, 4004, "{reason}");
    let (code, _) = event_then_close(&mut back, "board_deleted", t).await;
    assert_eq!(code, 4004);
    let m = metric(other.metrics_addr, "taskboard_access_changes_total").await;
    assert!(m >= 3.0, "removal, downgrade and deletion counted: {m}");
}

pub(crate) async fn me(gw: &TestApp, t: &str) -> i64 {
    let (s, me) = call(gw, M::GET, "/api/me", Some(t), None).await;
    assert_eq!(s, 200, "{me}");
    me["user_id"].as_i64().unwrap()
}

fn named_token(sub: &str) -> String {
    use taskboard_gateway::auth::{mint_hs256, now, Claims};
    let claims = Claims {
        sub: sub.into(),
        exp: now() + 3600,
        nbf: None,
        iat: Some(now()),
        aud: Some("taskboard".into()),
        iss: None,
        roles: Vec::new(),
    };
    mint_hs256(SECRET, &claims).unwrap()
}

/// A string subject (an email, a UUID) is a user of its own: the same id on every call and every
/// gateway, above every numeric subject, and it owns and shares boards like any other.
#[tokio::test]
async fn string_subjects_are_users_with_stable_ids_on_every_gateway() {
    let app = spawn_auth().await;
    let other = second_gateway(&app).await;
    let (alice, bob) = (
        named_token("alice@example.com"),
        named_token("5f0c6d1e-2b7a-4c39-9d8e-0a1b2c3d4e5f"),
    );
    let a = me(&app, &alice).await;
    assert!(a >= 1_000_000_000_000, "{a}");
    assert_eq!(
        me(&other, &alice).await,
        a,
        "the same id on another gateway"
    );
    assert_eq!(me(&app, &alice).await, a);
    let b_id = me(&other, &bob).await;
    assert_ne!(b_id, a);

    let board = new_board(&app, &alice).await;
    let (s, body) = call(
        &app,
        M::GET,
        &format!("/api/boards/{board}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = call(
        &other,
        M::PUT,
        &format!("/api/boards/{board}/members/{b_id}"),
        Some(&alice),
        Some(json!({ "role": "viewer" })),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = call(
        &app,
        M::GET,
        &format!("/api/boards/{board}"),
        Some(&bob),
        None,
    )
    .await;
    assert_eq!((s, body["role"].as_str()), (200, Some("viewer")), "{body}");
}
