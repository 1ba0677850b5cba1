//! The `/ws` upgrade: checks the request (method, Origin, query), subscribes the session before
//! answering 101, and hands the upgraded socket to it.
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::auth::{Principal, WS_PROTOCOL};
use crate::error::ApiError;
use crate::response::{not_allowed, Resp};
use crate::AppState;

pub async fn upgrade(state: &Arc<AppState>, mut req: Request<Incoming>, peer: SocketAddr) -> Resp {
    if req.method() != Method::GET {
        return not_allowed("GET");
    }
    if !fastwebsockets::upgrade::is_upgrade_request(&req) {
        let mut r = ApiError::new(
            StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "Upgrade Required",
        )
        .with_message("/ws speaks WebSocket; connect with a WebSocket client")
        .into_response();
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        return r;
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        if !state
            .cors
            .allows_from(origin, req.headers().get(header::HOST))
        {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "Origin not allowed",
            )
            .with_message("this page's origin may not open the feed (CORS_ORIGINS)")
            .into_response();
        }
    }
    if let Err(e) = check_handshake(&req) {
        return e.into_response();
    }
    let sub = match super::parse_query(req.uri().query()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let who = match authorize(state, &req, &sub, peer).await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let Some(slot) = state.limits.websocket() else {
        crate::metrics::rejected("websocket");
        let mut r = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "resource_exhausted",
            "Too many WebSocket connections",
        )
        .with_message(format!(
            "this gateway holds its maximum of {} WebSockets; retry later",
            state.limits.max_websockets
        ))
        .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => {
            return ApiError::bad_request("Invalid WebSocket handshake")
                .with_message(e.to_string())
                .into_response()
        }
    };
    // Compression when the gateway offers it (WS_DEFLATE=on) and the client's offer can be
    // honoured: every compressed frame is then one message on its own, shared by all such clients.
    let deflate = state.hub.deflates() && super::deflate::accepts(req.headers());
    // A member's session counts as viewing its boards (the service role's do not: they are
    // services, and a load test of them would send every join to every subscriber).
    let viewing = match (&state.presence, &who) {
        (Some(p), Some(w)) if !w.service && !sub.boards.is_empty() => {
            Some((p.clone(), sub.boards.clone(), w.user))
        }
        _ => None,
    };
    let session = super::Session::subscribe(
        state.hub.clone(),
        state.tasks.clone(),
        state.session,
        sub,
        state.shutdown.clone(),
        super::session::Client {
            peer,
            expires_at: who.map(|p| super::reauth::deadline(p.expires_at)),
            deflate,
            user: who.filter(|p| !p.service).map(|p| p.user),
            reauth: state.auth.clone().zip(who).map(|(verifier, principal)| {
                super::reauth::Reauth::new(verifier, state.subjects.clone(), principal)
            }),
        },
        state.replays.clone(),
    )
    .await;
    state.tracker.spawn(async move {
        // The WebSocket slot is held for the session's life, and so is its presence (joined
        // once the session has subscribed, so it gets the board's current viewers).
        let _slot = slot;
        let _viewing = viewing.map(|(p, boards, user)| p.join(&boards, user));
        match upgrade.await {
            Ok(ws) => session.run(ws).await,
            Err(e) => tracing::debug!(peer.addr = %peer, error = %e, "upgrade did not complete"),
        }
    });
    let (mut parts, _) = resp.into_parts();
    // A browser that offered the token as a subprotocol fails the connection unless one of its
    // protocols is selected.
    if crate::auth::offered_protocols(req.headers()).any(|p| p == WS_PROTOCOL) {
        parts.headers.insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(WS_PROTOCOL),
        );
    }
    if deflate {
        parts.headers.insert(
            header::SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(super::deflate::ACCEPTED),
        );
    }
    Response::from_parts(parts, Full::new(Bytes::new()))
}

/// Authenticates the client (AUTH=on) and checks it may read what it subscribes to: a member of
/// every named board (one BoardHeads call made for the user), the service role for every board.
async fn authorize<B>(
    state: &AppState,
    req: &Request<B>,
    sub: &super::Subscription,
    peer: SocketAddr,
) -> Result<Option<Principal>, ApiError> {
    let Some(verifier) = &state.auth else {
        state.rate.address(peer.ip(), None)?;
        return Ok(None);
    };
    let who = match state.subjects.authenticate(verifier, req.headers()).await {
        Ok(p) => p,
        Err(e) => {
            state.rate.address(peer.ip(), None)?;
            return Err(e);
        }
    };
    state.rate.address(peer.ip(), Some(&who))?;
    state
        .rate
        .user(Some(&who), crate::auth::ratelimit::Limit::UserConnects)?;
    if sub.boards.is_empty() {
        if !who.service {
            return Err(
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "Forbidden")
                    .with_message(
                    "a feed of every board is for the service role; name your boards with board_id",
                ),
            );
        }
    } else if !who.service {
        state
            .tasks
            .board_heads(sub.boards.clone(), Some(&who))
            .await
            .map_err(|s| ApiError::from_status(&s, "ws authorize"))?;
    }
    Ok(Some(who))
}

/// What RFC 6455 asks of the opening handshake and the upgrade crate does not check: HTTP/1.1 and
/// a `Sec-WebSocket-Key` that is 16 bytes in base64.
fn check_handshake<B>(req: &Request<B>) -> Result<(), ApiError> {
    if req.version() != http::Version::HTTP_11 {
        return Err(ApiError::bad_request("Invalid WebSocket handshake")
            .with_message("a WebSocket handshake needs HTTP/1.1"));
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .unwrap_or_default();
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    let valid = key.len() == 24 && key.ends_with(b"==") && key[..22].iter().all(base64);
    if !valid {
        return Err(ApiError::bad_request("Invalid WebSocket handshake")
            .with_message("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: http::Version, key: Option<&str>) -> Request<()> {
        let mut b = Request::builder().version(version).uri("/ws");
        if let Some(k) = key {
            b = b.header(header::SEC_WEBSOCKET_KEY, k);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_handshake_needs_http_1_1_and_a_16_byte_key() {
        let good = "dGhlIHNhbXBsZSBub25jZQ==";
        assert!(check_handshake(&req(http::Version::HTTP_11, Some(good))).is_ok());
        for (v, k) in [
            (http::Version::HTTP_10, Some(good)),
            (http::Version::HTTP_11, None),
            (http::Version::HTTP_11, Some("")),
            (http::Version::HTTP_11, Some("dGhlIHNhbXBsZSBub25jZQ")),
            (http::Version::HTTP_11, Some("dGhlIHNhbXBsZSBub25j*Q==")),
        ] {
            assert_eq!(
                check_handshake(&req(v, k)).unwrap_err().status,
                400,
                "{v:?} {k:?}"
            );
        }
    }
}
