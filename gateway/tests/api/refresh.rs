//! In-band token refresh on an open WebSocket: `{"type":"auth","token":…}` keeps a socket past its
//! first token's `exp`, a bad token is refused without harm, and a token naming someone else
//! closes the socket with 1008.
use std::time::Duration;

use serde_json::json;
use taskboard_gateway::auth::now;

use crate::auth::{board_socket, create_as, new_board, spawn_auth, token, token_for};
use crate::helpers::*;

/// Alice's board, and her socket on it opened with a token that expires in 2 s.
async fn short_lived_socket(app: &TestApp) -> (i64, Ws) {
    let board = new_board(app, &token(1)).await;
    (
        board,
        board_socket(app.addr, board, &token_for(1, &[], 2)).await,
    )
}

#[tokio::test]
async fn a_socket_refreshed_in_band_outlives_its_first_token() {
    let app = spawn_auth().await;
    let (board, mut ws) = short_lived_socket(&app).await;

    let fresh = token_for(1, &[], 3600);
    let ok = ws.refresh(&fresh).await.unwrap();
    assert_eq!(ok["type"], "auth_ok", "{ok}");
    let exp = ok["expires_at"].as_u64().unwrap();
    assert!(exp.abs_diff(now() + 3600) <= 2, "{ok}");

    // A refused refresh changes nothing (after the one-per-second limit has passed).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let bad = ws.refresh("not-a-token").await.unwrap();
    assert_eq!(bad["type"], "auth_error", "{bad}");
    assert!(
        bad["message"]
            .as_str()
            .unwrap()
            .starts_with("token refused"),
        "{bad}"
    );

    // Past the first token's exp (whole seconds, "now > exp"): the socket is still open and live.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    create_as(&app, &token(1), board, "after the first exp").await;
    let e = ws.event().await.unwrap();
    assert_eq!(e["title"], "after the first exp", "{e}");

    // A token for another user: the socket ends with 1008 and says why.
    ws.send_json(&json!({"type": "auth", "token": token(2)}))
        .await
        .unwrap();
    match ws.next().await.unwrap() {
        Next::Close(code, reason) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("another user"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
    let text = scrape(app.metrics_addr).await;
    let refreshes = |outcome| {
        sample(
            &text,
            "taskboard_ws_token_refreshes_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(refreshes("ok"), Some(1.0));
    assert_eq!(refreshes("refused"), Some(1.0));
    assert_eq!(refreshes("other_principal"), Some(1.0));
}

#[tokio::test]
async fn a_socket_that_is_not_refreshed_still_closes_at_exp_and_other_text_is_ignored() {
    let app = spawn_auth().await;
    let (_, mut ws) = short_lived_socket(&app).await;
    ws.send_json(&json!({"type": "hello"})).await.unwrap();
    ws.send_json(&json!({"type": "auth"})).await.unwrap();
    match ws.next().await.unwrap() {
        Next::Event(v) => {
            assert_eq!(v["type"], "auth_error", "{v}");
            assert!(v["message"].as_str().unwrap().contains("needs a token"));
        }
        other => panic!("expected an answer, got {other:?}"),
    }
    match ws.next().await.unwrap() {
        Next::Close(code, reason) => {
            assert_eq!(code, 1008);
            assert!(reason.contains("token expired"), "{reason}");
        }
        other => panic!("expected a close, got {other:?}"),
    }
}
