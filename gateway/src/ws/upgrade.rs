//! The `/ws` upgrade: checks the request (method, Origin, query), subscribes the session before
//! answering 101, and hands the upgraded socket to it.
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::error::ApiError;
use crate::routes::{not_allowed, Resp};
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
        if !state.cors.allows(origin) {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "permission_denied",
                "Origin not allowed",
            )
            .into_response();
        }
    }
    let sub = match super::parse_query(req.uri().query()) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let (resp, upgrade) = match fastwebsockets::upgrade::upgrade(&mut req) {
        Ok(x) => x,
        Err(e) => {
            return ApiError::bad_request("Invalid WebSocket handshake")
                .with_message(e.to_string())
                .into_response()
        }
    };
    let session = super::Session::subscribe(
        state.hub.clone(),
        state.tasks.clone(),
        state.session,
        sub,
        state.shutdown.clone(),
        peer,
    )
    .await;
    state.tracker.spawn(async move {
        match upgrade.await {
            Ok(ws) => session.run(ws).await,
            Err(e) => tracing::debug!(peer.addr = %peer, error = %e, "upgrade did not complete"),
        }
    });
    let (parts, _) = resp.into_parts();
    Response::from_parts(parts, Full::new(Bytes::new()))
}
